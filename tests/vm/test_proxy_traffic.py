"""The service proxy with real traffic: clients in pod namespaces, backends in pod namespaces.

Every Service shape reaches its backends through IPVS in the node namespace that the real
controller programs; rr spreads, ClientIP affinity pins, a Local policy serves only with a local
endpoint, a pod reaches itself through its Service with hairpin, a removed endpoint gets no new
connections, and a UDP flow moves when its endpoint goes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from proxy_cluster import NODE_IP, endpoint_slice, open_proxy_cluster, service

from kube_router_lab.netns import ip

MODULES = [
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_sh",
    "dummy",
    "veth",
    "bridge",
    "br_netfilter",
    "xt_ipvs",
    "xt_set",
    "ip_set_hash_ip",
    "ip_set_hash_ipport",
    "xt_comment",
    "nf_conntrack_netlink",
]
pytestmark = pytest.mark.vm(modules=MODULES)

VIP = "10.96.0.10"
EXTERNAL_IP = "203.0.113.7"
LB_IP = "198.51.100.7"
NODE_PORT = 30080
WEB_PORTS = [("http", "TCP", 80, NODE_PORT), ("dns", "UDP", 53, 30053)]
SPREAD = 6


async def test_every_service_type_reaches_its_backends_and_follows_endpoints(
    tmp_path: Path,
) -> None:
    pods = [("x", "a", "local"), ("x", "b", "local"), ("x", "client", "local")]
    pods += [("z", "outside", "remote")]
    async with open_proxy_cluster(tmp_path, pods) as c:
        backends = [c.pod("x/a"), c.pod("x/b")]
        svc = service(
            "web",
            VIP,
            WEB_PORTS,
            spec={"type": "LoadBalancer", "externalIPs": [EXTERNAL_IP]},
            status={"loadBalancer": {"ingress": [{"ip": LB_IP}]}},
        )
        await c.write("services", svc)
        await c.write(
            "endpointslices", endpoint_slice("web", backends, [("http", "TCP"), ("dns", "UDP")])
        )
        both = {"x/a", "x/b"}
        # ClusterIP from a local pod: rr spreads over both backends, TCP and UDP.
        assert set(await c.answers("x/client", VIP, 80, SPREAD)) == both
        assert set(await c.answers("x/client", VIP, 53, SPREAD, "udp")) == both
        # NodePort, external IP and LB IP from a pod on another node.
        for address, port in ((NODE_IP, NODE_PORT), (EXTERNAL_IP, 80), (LB_IP, 80)):
            assert set(await c.answers("z/outside", address, port, SPREAD)) == both, address
        assert await c.ask("z/outside", NODE_IP, 30053, "udp") in both
        # A UDP flow (one source port) sticks to its backend ...
        first = await c.ask("x/client", VIP, 53, "udp", sport=40000)
        assert first in both
        assert await c.ask("x/client", VIP, 53, "udp", sport=40000) == first
        # ... and moves to the other one when its endpoint goes; new connections avoid it too.
        keep = [p for p in backends if p.key != first]
        await c.write(
            "endpointslices", endpoint_slice("web", keep, [("http", "TCP"), ("dns", "UDP")])
        )
        assert await c.ask("x/client", VIP, 53, "udp", sport=40000) == keep[0].key
        assert set(await c.answers("x/client", VIP, 80, SPREAD)) == {keep[0].key}
        # The VIP lives on kube-dummy-if with its local route sourced from the node IP.
        assert f"{VIP}/32" in await c.node_run("ip", "-o", "addr", "show", "dev", "kube-dummy-if")
        routes = await c.node_run("ip", "route", "show", "table", "local", VIP)
        assert f"src {NODE_IP}" in routes
        # An unprogrammed port on a VIP is rejected, not left to time out.
        assert await c.net.ask(c.pod("x/client"), VIP, "tcp", 81, timeout=2.0) is None


async def test_affinity_local_policy_and_hairpin(tmp_path: Path) -> None:
    pods = [("x", "a", "local"), ("x", "b", "local"), ("x", "client", "local")]
    pods += [("z", "r", "remote"), ("z", "outside", "remote")]
    async with open_proxy_cluster(tmp_path, pods) as c:
        a, b, r = c.pod("x/a"), c.pod("x/b"), c.pod("z/r")
        http = [("http", "TCP")]
        # ClientIP affinity pins a client to one backend.
        await c.write(
            "services",
            service("sticky", "10.96.0.11", WEB_PORTS[:1], spec={"sessionAffinity": "ClientIP"}),
        )
        await c.write("endpointslices", endpoint_slice("sticky", [a, b], http))
        answers = await c.answers("x/client", "10.96.0.11", 80, SPREAD)
        assert len(set(answers)) == 1 and answers[0] in {"x/a", "x/b"}
        # externalTrafficPolicy Local: no local endpoint, no service on the node port ...
        local = service(
            "local",
            "10.96.0.12",
            [("http", "TCP", 80, 30081)],
            spec={"type": "NodePort", "externalTrafficPolicy": "Local"},
        )
        await c.write("services", local)
        await c.write("endpointslices", endpoint_slice("local", [r], http))
        assert await c.net.ask(c.pod("z/outside"), NODE_IP, "tcp", 30081, timeout=2.0) is None
        # ... the cluster IP still serves the remote endpoint (internal policy is Cluster) ...
        assert await c.ask("x/client", "10.96.0.12", 80) == "z/r"
        # ... and with a local endpoint the node port serves it, and only it.
        await c.write("endpointslices", endpoint_slice("local", [r, a], http))
        assert set(await c.answers("z/outside", NODE_IP, 30081, SPREAD)) == {"x/a"}
        # Hairpin: a pod reaches itself through its own Service.
        for pod in (a, b):
            host_if = _bridge_port(c.net.prefix, pod.netns)
            ip("link", "set", "dev", host_if, "type", "bridge_slave", "hairpin", "on",
               netns=c.net.node_netns)  # fmt: skip
        await c.write(
            "services",
            service(
                "self",
                "10.96.0.13",
                WEB_PORTS[:1],
                annotations={"kube-router.io/service.hairpin": ""},
            ),
        )
        await c.write("endpointslices", endpoint_slice("self", [a], http))
        assert await c.ask("x/a", "10.96.0.13", 80) == "x/a"


def _bridge_port(prefix: str, pod_netns: str) -> str:
    """The node-side veth of a local lab pod (as the pod network names it)."""
    index = int(pod_netns.rsplit("-p", 1)[1])
    return f"veth{prefix[:6]}{index}"[:15]
