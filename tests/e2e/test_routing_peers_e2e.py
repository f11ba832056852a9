"""BGP with routers outside the cluster and a route reflector, with the real agent in the lab:
what the external router learns (pod CIDRs, a service IP, communities and prepends the node
annotations ask for), a wrong MD5 password keeping a session down, reflection between clients."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from kube_router_lab.bgprouter import ExternalRouter, RibPath
from kube_router_lab.cluster import Cluster, ClusterNode, ClusterSpec

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

CLUSTER_ASN = 64512
GOOD, BAD = "s3cret", "wrong"
COMMUNITY = "64512:100"
PREPEND = 2
VIP = "10.96.0.10"
CONVERGE_S = 60.0
RR = {"kube-router.io/rr.client": "42"}
EXTRA = {
    "kube-router.io/node.bgp.communities": f"{COMMUNITY},not-a-community",
    "kube-router.io/path-prepend.as": str(CLUSTER_ASN),
    "kube-router.io/path-prepend.repeat-n": str(PREPEND),
}
ROUTERS: dict[str, ExternalRouter] = {}


async def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.5)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def service_objects(pod_ip: str, node: str) -> tuple[dict[str, object], dict[str, object]]:
    svc = {
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": VIP,
            "clusterIPs": [VIP],
            "ports": [{"name": "http", "protocol": "TCP", "port": 80}],
        },
    }
    eps = {
        "metadata": {
            "name": "web-1",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 80}],
        "endpoints": [{"addresses": [pod_ip], "nodeName": node, "conditions": {"ready": True}}],
    }
    return svc, eps


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    annotations = {
        "node1": {"kube-router.io/rr.server": "42", **EXTRA},
        "node2": {**RR, **EXTRA},
        "node3": {**RR, **EXTRA},
    }
    spec = ClusterSpec("kre2p", nodes=3, annotations=annotations)
    async with Cluster(spec, tmp_path_factory.mktemp("peers")) as c:
        ROUTERS["good"] = await c.add_external_router("ext", 64999, password=GOOD)
        ROUTERS["bad"] = await c.add_external_router("ext2", 64998, password=BAD)
        ips = f"{ROUTERS['good'].router_id},{ROUTERS['bad'].router_id}"
        flags = (
            "--run-service-proxy=false",
            "--run-firewall=false",
            "--routes-sync-period=5s",
            "--advertise-cluster-ip",
            f"--peer-router-ips={ips}",
            "--peer-router-asns=64999,64998",
            f"--peer-router-passwords={b64(GOOD)},{b64(GOOD)}",
        )
        for n in c.nodes:
            c.write_cni_template(n)
            c.start_agent(n, *flags)
        yield c


def paths(router: ExternalRouter, prefix: str, node: ClusterNode) -> list[RibPath]:
    return [p for p in router.rib("ipv4") if p.prefix == prefix and p.neighbor == node.ip]


async def test_the_external_router_learns_pod_cidrs_with_communities_and_prepends(
    cluster: Cluster,
) -> None:
    c, ext = cluster, ROUTERS["good"]
    await ext.wait_established([n.ip for n in c.nodes], CONVERGE_S)
    for n in c.nodes[1:]:  # a route-reflector server installs no policies (upstream)
        cidr = n.pod_cidrs[0]
        await eventually(lambda n=n, cidr=cidr: bool(paths(ext, cidr, n)), 30, f"{cidr} on ext")
        (path,) = paths(ext, cidr, n)
        assert COMMUNITY in path.communities
        assert path.as_path == (CLUSTER_ASN,) * (PREPEND + 1)


async def test_the_external_router_learns_the_service_ip(cluster: Cluster) -> None:
    c, ext = cluster, ROUTERS["good"]
    pod = await c.add_pod(c.nodes[1], "default", "web", {"app": "web"})
    svc, eps = service_objects(pod.ip, c.nodes[1].name)
    c.server.store.create("services", svc)
    c.server.store.create("endpointslices", eps)
    for n in c.nodes[1:]:
        await eventually(
            lambda n=n: bool(paths(ext, f"{VIP}/32", n)), 30, f"{VIP} from {n.name} on ext"
        )
        (path,) = paths(ext, f"{VIP}/32", n)
        assert COMMUNITY in path.communities


async def test_a_wrong_md5_password_keeps_the_session_down(cluster: Cluster) -> None:
    good, bad = ROUTERS["good"], ROUTERS["bad"]
    assert all(s.established for s in good.sessions())
    assert not any(s.established for s in bad.sessions())


async def test_route_reflector_clients_reach_each_other(cluster: Cluster) -> None:
    c = cluster
    n2, n3 = c.nodes[1], c.nodes[2]
    for a, b in ((n2, n3), (n3, n2)):
        await eventually(
            lambda a=a, b=b: b.pod_cidrs[0] in c.run(a, "ip", "route", "show", "proto", "17"),
            CONVERGE_S,
            f"{a.name} to learn {b.pod_cidrs[0]} through the reflector",
        )
    p2 = await c.add_pod(n2, "default", "a", {})
    p3 = await c.add_pod(n3, "default", "b", {})
    assert await c.reaches(p2, p3, "tcp", 80, "ipv4")
    assert await c.reaches(p3, p2, "tcp", 80, "ipv4")
