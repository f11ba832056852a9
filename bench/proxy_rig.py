"""The proxy benchmark's cluster and its rig: the real ``ServiceProxyController`` fed from
filled stores, its handlers called as an informer calls them, its ports timed.

No API server: the stores (``kube_router.k8s.store.Store``, the EndpointSlice store with the
``SERVICE_NAME_INDEX`` indexer the informers give it) are filled directly, and an event is the
store's upsert followed by the handlers the controller registered in ``start`` (an update
calls ``_slice_updated(old, new)``). Used by ``proxy.py`` (host) and ``proxy_kernel.py`` (VM).
"""

from __future__ import annotations

import gc
import ipaddress
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from kube_router.config import parse
from kube_router.controllers.base import Barriers, RunContext
from kube_router.controllers.proxy.controller import ServiceProxyController
from kube_router.controllers.proxy.firewall import ProxyFirewall
from kube_router.controllers.proxy.healthcheck import HealthCheckServers
from kube_router.controllers.proxy.ports import ProxyDataplane
from kube_router.dataplane import ipset, iptables, ipvs
from kube_router.dataplane.ipset_fake import FakeIPSets
from kube_router.dataplane.iptables_fake import FakeIPTables
from kube_router.dataplane.ipvs_fake import FakeIPVS
from kube_router.dataplane.vips import Op, VipManager
from kube_router.dataplane.vips_fake import FakeKernel, FakeNetns
from kube_router.health import HealthChecker
from kube_router.k8s.informers import SERVICE_NAME_INDEX, SERVICE_NAME_LABEL, endpointslice_service
from kube_router.k8s.models import EndpointSlice, Node, Service
from kube_router.k8s.store import Store
from kube_router.node import NodeIdentity

N_SERVICES = 10_000
N_NODES = 100
N_NAMESPACES = 100
NODE_NAME = "node-0"
NODE_LINK = "eth0"
NODE_PREFIX = 16
POD_CIDR = "10.64.0.0/24"
ENDPOINTS_PER_SERVICE = 10  # IPVS real servers per Service, whatever its shape
NODEPORT_BASE = 30000
MS = 1000.0
BASE_TABLES = (
    "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
    ":POSTROUTING ACCEPT [0:0]\nCOMMIT\n"
)


def node_ip(k: int) -> str:
    return f"172.16.{k // 250}.{k % 250 + 2}"


def pod_ip(n: int) -> str:
    return f"10.{64 + n // 62500}.{(n // 250) % 250}.{n % 250 + 2}"


def cluster_ip(i: int) -> str:
    return f"10.96.{i // 250}.{i % 250 + 2}"


# -- objects ---------------------------------------------------------------------------------


def shape(i: int) -> tuple[str, list[tuple[str, int, int]], int]:
    """Service i's type, ports (name, port, target) and endpoint count."""
    if i % 10 == 0:
        return "NodePort", [("http", 80, 8080)], ENDPOINTS_PER_SERVICE // 2
    if i % 10 == 1:
        return "ClusterIP", [("http", 80, 8080), ("https", 443, 8443)], ENDPOINTS_PER_SERVICE // 2
    return "ClusterIP", [("http", 80, 8080)], ENDPOINTS_PER_SERVICE


def service_body(i: int) -> dict[str, Any]:
    kind, ports, _ = shape(i)
    spec_ports: list[dict[str, Any]] = [
        {"name": name, "port": port, "targetPort": target, "protocol": "TCP"}
        for name, port, target in ports
    ]
    if kind == "NodePort":
        spec_ports[0]["nodePort"] = NODEPORT_BASE + i // 10
    return {
        "metadata": {"name": f"svc-{i}", "namespace": f"ns-{i % N_NAMESPACES}"},
        "spec": {
            "type": kind,
            "selector": {"app": f"app-{i}"},
            "clusterIP": cluster_ip(i),
            "clusterIPs": [cluster_ip(i)],
            "ports": spec_ports,
            "ipFamilies": ["IPv4"],
            "sessionAffinity": "None",
        },
    }


def slice_body(i: int, pods: list[int]) -> dict[str, Any]:
    """Service i's EndpointSlice holding pods (numbers: pod n has pod_ip(n), node n % 100)."""
    _, ports, _ = shape(i)
    return {
        "metadata": {
            "name": f"svc-{i}-abcde",
            "namespace": f"ns-{i % N_NAMESPACES}",
            "labels": {SERVICE_NAME_LABEL: f"svc-{i}"},
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [pod_ip(n)],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": f"node-{n % N_NODES}",
            }
            for n in pods
        ],
        "ports": [{"name": name, "port": target, "protocol": "TCP"} for name, _, target in ports],
    }


def node_object() -> Node:
    body = {
        "metadata": {"name": NODE_NAME},
        "spec": {"podCIDR": POD_CIDR, "podCIDRs": [POD_CIDR]},
        "status": {"addresses": [{"type": "InternalIP", "address": node_ip(0)}]},
    }
    return msgspec.convert(body, Node)


@dataclass
class Cluster:
    """The Services and their slices' pods (the bench's truth; events change it)."""

    n: int
    pods: list[list[int]] = field(default_factory=list)
    next_pod: int = 0

    @classmethod
    def make(cls, scale: float) -> Cluster:
        cluster = cls(max(1, int(N_SERVICES * scale)))
        for i in range(cluster.n):
            cluster.pods.append([cluster.new_pod() for _ in range(shape(i)[2])])
        return cluster

    def new_pod(self) -> int:
        self.next_pod += 1
        return self.next_pod - 1

    def services(self) -> Iterator[Service]:
        return (msgspec.convert(service_body(i), Service) for i in range(self.n))

    def slices(self) -> Iterator[EndpointSlice]:
        return (msgspec.convert(slice_body(i, self.pods[i]), EndpointSlice) for i in range(self.n))

    def change(self, j: int, rng: random.Random) -> EndpointSlice:
        """Change j: one endpoint added, removed or replaced (j % 3) in a random Service."""
        i = rng.randrange(self.n)
        pods = self.pods[i]
        if j % 3 == 0 or len(pods) <= 1:
            pods.append(self.new_pod())
        elif j % 3 == 1:
            pods.pop(rng.randrange(len(pods)))
        else:
            pods[rng.randrange(len(pods))] = self.new_pod()
        return msgspec.convert(slice_body(i, pods), EndpointSlice)


# -- the informers' side ----------------------------------------------------------------------


class BenchInformer:
    """A store and the handlers registered on it: what the controller sees of an informer."""

    def __init__(self, store: Store[Any]) -> None:
        self.store = store
        self.handlers: list[Any] = []

    def add_handler(self, handler: Any) -> None:
        self.handlers.append(handler)

    def deliver(self, obj: Any) -> None:
        """A watch event for ``obj``: the store first, then each handler, as the informer."""
        old = self.store.upsert(obj)
        for handler in self.handlers:
            if old is None:
                handler.on_add(obj)
            else:
                handler.on_update(old, obj)


@dataclass
class BenchInformers:
    services: BenchInformer = field(default_factory=lambda: BenchInformer(Store()))
    endpointslices: BenchInformer = field(
        default_factory=lambda: BenchInformer(Store({SERVICE_NAME_INDEX: endpointslice_service}))
    )
    nodes: BenchInformer = field(default_factory=lambda: BenchInformer(Store()))
    pods: BenchInformer = field(default_factory=lambda: BenchInformer(Store()))

    def load(self, cluster: Cluster) -> None:
        """The stores after the informers' cold lists (not timed)."""
        self.nodes.store.upsert(node_object())
        for svc in cluster.services():
            self.services.store.upsert(svc)
        for es in cluster.slices():
            self.endpointslices.store.upsert(es)


# -- ports --------------------------------------------------------------------------------------


class TimedPort:
    """The IPVS port with the time it spends and when it was handed a transaction."""

    def __init__(self, inner: ipvs.IPVS) -> None:
        self.inner = inner
        self.last = ipvs.Transaction()
        self.reset()

    def reset(self) -> None:
        self.dump_s = self.apply_s = self.dump_at = 0.0
        self.handed_at = self.sent_at = self.acked_at = 0.0
        self.ops = 0

    async def dump(self) -> dict[ipvs.ServiceKey, ipvs.ServiceState]:
        t0 = time.perf_counter()
        self.dump_at = self.dump_at or t0
        try:
            return await self.inner.dump()
        finally:
            self.dump_s += time.perf_counter() - t0

    async def apply(self, tx: ipvs.Transaction) -> None:
        self.handed_at = t0 = time.perf_counter()
        self.ops += len(tx)
        self.last = tx
        try:
            await self.inner.apply(tx)
        finally:
            self.acked_at = time.perf_counter()
            self.apply_s += self.acked_at - t0

    async def timeouts(self) -> ipvs.Timeouts:
        return await self.inner.timeouts()

    async def set_timeouts(self, timeouts: ipvs.Timeouts) -> None:
        await self.inner.set_timeouts(timeouts)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


class Stopwatch:
    """Seconds spent in chosen coroutine methods of chosen objects, by label."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, label: str, obj: Any, method: str) -> None:
        inner: Callable[..., Awaitable[Any]] = getattr(obj, method)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await inner(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t0

        setattr(obj, method, timed)

    def reset(self) -> None:
        self.seconds.clear()


class NullPort(FakeIPVS):
    """Keeps nothing: the controller's own memory and compute, the kernel's part left out."""

    async def apply(self, tx: ipvs.Transaction) -> None:
        self.applied += 1


class NullLinkKernel(FakeKernel):
    """kube-dummy-if made as the fake kernel does, its addresses and routes counted, not kept:
    the fake's bookkeeping of 10,000 addresses and routes is quadratic."""

    def __init__(self, netns: FakeNetns) -> None:
        super().__init__(netns)
        self.dropped = 0

    async def apply(self, ops: Any) -> list[tuple[Op, int]]:
        links = [op for op in ops if op.kind in ("add-link", "set-up", "del-link")]
        self.dropped += len(ops) - len(links)
        return await super().apply(links)


class NullIPTables(FakeIPTables):
    """The tables the node starts with; restores are checked by nobody and kept by nobody."""

    async def restore(self, tx: iptables.Transaction | str) -> None:
        return None


class NullIPSets(FakeIPSets):
    async def restore(self, tx: ipset.Transaction) -> None:
        return None


def null_dataplane(ipvs_port: ipvs.IPVS) -> ProxyDataplane:
    """``ipvs_port`` with kube-dummy-if, iptables and ipsets that keep nothing (host runs)."""
    netns = FakeNetns()
    netns.add_link(NODE_LINK, kind="veth")
    netns.add_address(NODE_LINK, node_ip(0), NODE_PREFIX)
    vips = VipManager(NullLinkKernel(netns))
    tables = NullIPTables("ipv4")
    tables.apply(BASE_TABLES)
    firewall = ProxyFirewall({"ipv4": tables}, NullIPSets())

    async def flush(_vip: str, _port: int) -> None:
        return None

    return ProxyDataplane(ipvs_port, vips, firewall, HealthCheckServers("127.0.0.1"), flush)


# -- the controller -----------------------------------------------------------------------------


@dataclass
class Rig:
    """The controller over timed ports, with its stores and its informers' handlers."""

    ctrl: ServiceProxyController
    informers: BenchInformers
    port: TimedPort
    watch: Stopwatch

    @property
    def sync(self) -> Any:
        assert self.ctrl.ipvs is not None
        return self.ctrl.ipvs


async def make_rig(cluster: Cluster, dataplane: ProxyDataplane) -> Rig:
    """The controller started over ``dataplane`` (its IPVS port wrapped in a TimedPort) with
    the cluster loaded into its stores; no sync yet."""
    port = TimedPort(dataplane.ipvs)
    dataplane.ipvs = port
    watch = Stopwatch()
    watch.wrap("vips", dataplane.vips, "sync")
    watch.wrap("firewall", dataplane.firewall, "apply")
    watch.wrap("health", dataplane.health, "update")
    informers = BenchInformers()
    informers.load(cluster)
    ip = ipaddress.ip_address(node_ip(0))
    ctx = RunContext(
        parse([], {}),
        None,  # type: ignore[arg-type]  # no API server: the stores are filled directly
        informers,  # type: ignore[arg-type]
        NodeIdentity(NODE_NAME, ip, ip, None, None),
        HealthChecker(),
        None,
        Barriers(),
    )
    ctrl = ServiceProxyController(ctx, dataplane)
    await ctrl.start()
    return Rig(ctrl, informers, port, watch)


async def cold_sync(rig: Rig) -> dict[str, float]:
    """The controller's first full sync over the loaded stores; its phases in seconds."""
    port, watch = rig.port, rig.watch
    port.reset()
    watch.reset()
    gc.collect()
    t0 = time.perf_counter()
    await rig.ctrl.sync(True)
    t1 = time.perf_counter()
    phases = {
        "replan": port.dump_at - t0,
        "dump": port.dump_s,
        "plan": port.handed_at - port.dump_at - port.dump_s,
        "handed": port.handed_at - t0,
        "port": port.apply_s,
        "ops": float(port.ops),
        "vips": watch.seconds.get("vips", 0.0),
        "firewall": watch.seconds.get("firewall", 0.0),
        "health": watch.seconds.get("health", 0.0),
        "total": t1 - t0,
    }
    phases["own"] = phases["total"] - phases["port"]  # the controller's, the IPVS port's apart
    phases["rest"] = phases["own"] - phases["handed"] - phases["vips"]
    phases["rest"] -= phases["firewall"] + phases["health"]
    return phases


async def changes(rig: Rig, cluster: Cluster, n: int, seed: int = 1) -> dict[str, list[float]]:
    """n endpoint changes: the informer's store and handler, then ``sync(False)`` as the
    runner calls it; milliseconds from the event to each point."""
    port = rig.port
    rng = random.Random(seed)
    out: dict[str, list[float]] = {"handed": [], "sent": [], "acked": [], "done": [], "ops": []}
    out["sync"] = []
    for j in range(n):
        es = cluster.change(j, rng)
        port.reset()
        t0 = time.perf_counter()
        rig.informers.endpointslices.deliver(es)
        t1 = time.perf_counter()
        await rig.ctrl.sync(False)
        t2 = time.perf_counter()
        out["handed"].append((port.handed_at - t0) * MS)
        out["sent"].append(((port.sent_at or port.handed_at) - t0) * MS)
        out["acked"].append((port.acked_at - t0) * MS)
        out["done"].append((t2 - t0) * MS)
        out["sync"].append((t2 - t1) * MS)
        out["ops"].append(float(port.ops))
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def summarize_changes(prefix: str, got: dict[str, list[float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, values in got.items():
        name = prefix if key == "sent" else f"{prefix}_{key}"
        out[f"{name}_p50_ms" if key != "ops" else f"{name}_p50"] = statistics.median(values)
        if key != "ops":
            out[f"{name}_p90_ms"] = pct(values, 0.9)
    return out


Tables = dict[str, dict[tuple[str, int], tuple[int, int]]]  # service -> real server -> fwd, weight


def record_tables(rig: Rig) -> Tables:
    """What the controller believes the kernel holds, as service -> real server -> (fwd, weight)."""
    return {
        str(key): {dk: (d.forward, d.weight) for dk, d in dests.items()}
        for key, (_, dests) in rig.sync.applied.items()
    }


async def expected_tables(cluster: Cluster) -> dict[Any, Any]:
    """The tables a fresh controller's cold sync of the cluster as it is now gives (the fake's)."""
    fake = FakeIPVS()
    await cold_sync(await make_rig(cluster, null_dataplane(fake)))
    return ipvs.plain(await fake.dump())
