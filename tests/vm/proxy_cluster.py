"""A one-node cluster for service proxy tests with real traffic (VM tier: IPVS, dummy, xt_ipvs).

The lab pod network (`kube_router_lab.podnet`): the node namespace with kube-bridge and local
pods, and a "remote" node behind a routed link with its own pods. A lab API server feeds real
informers; the real service proxy controller programs the node namespace (IPVS, kube-dummy-if,
iptables, ipsets). Clients are pods: local ones reach cluster IPs, remote ones reach the node's
NodePorts, external IPs and LoadBalancer IPs through routes to the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ipaddress
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kube_router.config import parse
from kube_router.controllers.base import Barriers, RunContext
from kube_router.controllers.proxy.controller import ServiceProxyController
from kube_router.controllers.proxy.ports import ProxyDataplane
from kube_router.health import HealthChecker
from kube_router.k8s.client import KubeClient
from kube_router.k8s.informers import Informers
from kube_router.node import NodeIdentity
from kube_router_lab.apiserver import LabServer
from kube_router_lab.errors import ApiError as LabApiError
from kube_router_lab.netns import ip
from kube_router_lab.podnet import LINK_NET, LabPod, PodNetwork

NODE_IP, REMOTE_IP = (str(h) for h in LINK_NET.hosts())
NODE = "n1"
REMOTE_NODE = "n2"
EXTERNAL_RANGE = "203.0.113.0/24"
LB_RANGE = "198.51.100.0/24"
CLUSTER_RANGE = "10.96.0.0/12"
POLL_S = 0.05
CONVERGE_POLLS = 400
BASE_FLAGS = (
    "--ipvs-sync-period=5m",
    f"--service-cluster-ip-range={CLUSTER_RANGE}",
    f"--service-external-ip-range={EXTERNAL_RANGE}",
    f"--loadbalancer-ip-range={LB_RANGE}",
    "--run-firewall=false",
    "--run-router=false",
)


def service(
    name: str,
    cluster_ip: str,
    ports: Sequence[tuple[str, str, int, int]],  # (name, protocol, port, nodePort)
    spec: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "x", "annotations": annotations or {}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ports": [
                {"name": n, "protocol": p, "port": port, "targetPort": 80, "nodePort": np}
                for n, p, port, np in ports
            ],
            **(spec or {}),
        },
        "status": status or {},
    }


def endpoint_slice(
    name: str, pods: Sequence[LabPod], ports: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{name}-1",
            "namespace": "x",
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "ports": [{"name": n, "protocol": p, "port": 80} for n, p in ports],
        "endpoints": [
            {
                "addresses": [p.ip],
                "nodeName": NODE if p.node == "local" else REMOTE_NODE,
                "conditions": {"ready": True},
            }
            for p in pods
        ],
    }


@dataclass
class ProxyCluster:
    lab: LabServer
    net: PodNetwork
    informers: Informers
    ctrl: ServiceProxyController
    dataplane: ProxyDataplane
    task: asyncio.Task[None] | None = None

    def pod(self, key: str) -> LabPod:
        return next(p for p in self.net.pods if p.key == key)

    def _syncs(self) -> int:
        return self.ctrl.runner.stats.syncs + self.ctrl.runner.stats.failures

    async def _sync_after(self, before: int) -> None:
        for _ in range(CONVERGE_POLLS):
            if self._syncs() > before:
                break
            await asyncio.sleep(POLL_S)
        assert self._syncs() > before, "no sync happened"
        assert self.ctrl.runner.stats.failures == 0, "a sync failed"

    async def converge(self, ready: Callable[[], bool]) -> None:
        for _ in range(CONVERGE_POLLS):
            if ready():
                break
            await asyncio.sleep(POLL_S)
        assert ready(), "the informers never saw the change"
        before = self._syncs()
        self.ctrl.runner.poke()
        await self._sync_after(before)

    async def write(self, resource: str, obj: dict[str, Any]) -> None:
        """Create or replace an object, then wait for a sync that saw it."""
        meta = obj["metadata"]
        ns = meta.get("namespace")
        try:
            current = self.lab.store.get(resource, ns, meta["name"])
        except LabApiError:
            self.lab.store.create(resource, obj)
        else:
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            self.lab.store.update(resource, obj)
        rv = str(self.lab.store.resource_version)
        store = getattr(self.informers, resource).store
        key = f"{ns}/{meta['name']}" if ns else meta["name"]
        await self.converge(
            lambda: (o := store.get(key)) is not None and o.metadata.resource_version == rv
        )

    async def ask(
        self, client: str, address: str, port: int, proto: str = "tcp", sport: int = 0
    ) -> str | None:
        """The pod that answers ``client`` on address:port (None: nobody), one patient retry."""
        src = self.pod(client)
        answer = await self.net.ask(src, address, proto, port, timeout=1.0, sport=sport)
        if answer is None:
            answer = await self.net.ask(src, address, proto, port, timeout=3.0, sport=sport)
        return answer

    async def answers(
        self, client: str, address: str, port: int, count: int, proto: str = "tcp"
    ) -> list[str | None]:
        return [await self.ask(client, address, port, proto) for _ in range(count)]

    async def node_run(self, *argv: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            self.net.node_netns,
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        return out.decode()


def node_object() -> dict[str, Any]:
    return {
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]},
    }


@contextlib.asynccontextmanager
async def open_proxy_cluster(
    tmp_path: Path, pods: Sequence[tuple[str, str, str]], flags: Sequence[str] = ()
) -> AsyncIterator[ProxyCluster]:
    """``pods``: (namespace, name, "local"|"remote"). The controller runs after its first sync."""
    net = PodNetwork(f"kp{uuid.uuid4().hex[:5]}", tmp_path)
    lab = LabServer("127.0.0.1", 0, bookmark_interval=0.2)
    await lab.start()
    cluster: ProxyCluster | None = None
    informers: Informers | None = None
    client: KubeClient | None = None
    try:
        net.build_nodes()
        for ns, name, where in pods:
            net.add_pod(ns, name, where)
        for route in (EXTERNAL_RANGE, LB_RANGE, CLUSTER_RANGE):
            ip("route", "add", route, "via", NODE_IP, netns=net.remote_netns)
        await net.start_agents()
        lab.store.create("nodes", node_object())
        lab.write_kubeconfig(tmp_path / "kubeconfig")
        client = await KubeClient.from_flags(str(tmp_path / "kubeconfig"))
        informers = Informers(client)
        informers.start()
        await informers.wait_for_cache_sync(30)
        node_ip = ipaddress.ip_address(NODE_IP)
        ctx = RunContext(
            parse([*BASE_FLAGS, *flags], {}),
            client,
            informers,
            NodeIdentity(NODE, node_ip, node_ip, None, None),
            HealthChecker(),
            None,
            Barriers(),
        )
        ctx.health.register(ServiceProxyController.name, 300)
        dataplane = await ProxyDataplane.real(("ipv4",), netns=net.node_netns)
        ctrl = ServiceProxyController(ctx, dataplane)
        cluster = ProxyCluster(lab, net, informers, ctrl, dataplane)
        cluster.task = asyncio.create_task(ctrl.run())
        await cluster._sync_after(0)
        yield cluster
    finally:
        if cluster is not None and cluster.task is not None:
            cluster.task.cancel()
            await asyncio.gather(cluster.task, return_exceptions=True)
        if informers is not None:
            await informers.stop()
        if client is not None:
            await client.close()
        await lab.stop()
        net.teardown()
