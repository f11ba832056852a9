"""One node's policy controller over the iptables and ipset fakes, fed by in-memory informers.

The informers are the real :class:`Store` with handlers called as the real informer calls them,
so the controller's change tracking, partial syncs and pools run as in the agent; only the
HTTP watch is left out (thousands of random worlds must each cost milliseconds). Verdicts come
from tracing a packet through the fake ``FORWARD`` chain.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Any

import msgspec

from kube_router.config import parse
from kube_router.controllers.base import Barriers, RunContext
from kube_router.controllers.netpol.controller import NetworkPolicyController
from kube_router.controllers.netpol.ports import Dataplane
from kube_router.dataplane.ipset_fake import FakeIPSets
from kube_router.dataplane.iptables_fake import FakeIPTables
from kube_router.dataplane.tracer import Packet, trace
from kube_router.health import HealthChecker
from kube_router.k8s.informer import EventHandler
from kube_router.k8s.models import Namespace, NetworkPolicy, Node, Pod
from kube_router.k8s.store import Store
from kube_router.node import NodeIdentity

NODE_IP, NODE_IP6 = "192.168.50.1", "fd00:50::1"
REMOTE_IP, REMOTE_IP6 = "192.168.50.2", "fd00:50::2"
LOCAL_CIDRS = ("10.244.1.0/24", "fd00:244:1::/64")
EMPTY_FILTER = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"


@dataclass
class MemoryInformer:
    """A store and its handlers; ``put``/``remove`` do what a watch event does."""

    model: type[Any]
    store: Store[Any] = field(default_factory=Store)
    handlers: list[EventHandler[Any]] = field(default_factory=list)

    def add_handler(self, handler: EventHandler[Any]) -> None:
        self.handlers.append(handler)

    def put(self, raw: dict[str, Any]) -> None:
        obj = msgspec.convert(raw, self.model)
        old = self.store.upsert(obj)
        for h in self.handlers:
            if old is None:
                h.on_add(obj)
            else:
                h.on_update(old, obj)

    def remove(self, key: str) -> None:
        old = self.store.get(key)
        if old is None:
            return
        self.store.remove(key)
        for h in self.handlers:
            h.on_delete(old)


@dataclass
class MemoryInformers:
    pods: MemoryInformer = field(default_factory=lambda: MemoryInformer(Pod))
    namespaces: MemoryInformer = field(default_factory=lambda: MemoryInformer(Namespace))
    networkpolicies: MemoryInformer = field(default_factory=lambda: MemoryInformer(NetworkPolicy))
    nodes: MemoryInformer = field(default_factory=lambda: MemoryInformer(Node))

    def of(self, resource: str) -> MemoryInformer:
        informer: MemoryInformer = getattr(self, resource)
        return informer


def node_object() -> dict[str, Any]:
    addresses = [{"type": "InternalIP", "address": ip} for ip in (NODE_IP, NODE_IP6)]
    return {
        "metadata": {"name": "n1"},
        "spec": {"podCIDR": LOCAL_CIDRS[0], "podCIDRs": list(LOCAL_CIDRS)},
        "status": {"addresses": addresses},
    }


class FakeNode:
    """A dual-stack node ``n1`` whose controller programs the fakes."""

    def __init__(self, *flags: str) -> None:
        self.informers = MemoryInformers()
        self.informers.nodes.put(node_object())
        self.sets = FakeIPSets(is_referenced=self._referenced)
        self.tables = {
            family: FakeIPTables(family, set_exists=lambda n: n in self.sets.state(None))
            for family in ("ipv4", "ipv6")
        }
        for table in self.tables.values():
            table.apply(EMPTY_FILTER)
        ident = NodeIdentity(
            "n1",
            ipaddress.ip_address(NODE_IP),
            ipaddress.ip_address(NODE_IP),
            ipaddress.ip_address(NODE_IP6),
            None,
        )
        cfg = parse(["--enable-ipv6=true", *flags], {})
        client: Any = None  # the policy controller makes no API calls
        informers: Any = self.informers
        ctx = RunContext(cfg, client, informers, ident, HealthChecker(), None, Barriers())
        dataplane = Dataplane({"IPv4": self.tables["ipv4"], "IPv6": self.tables["ipv6"]}, self.sets)
        self.ctrl = NetworkPolicyController(ctx, dataplane)

    def _referenced(self, name: str) -> bool:
        return any(name in t.referenced_sets() for t in self.tables.values())

    async def start(self) -> None:
        await self.ctrl.start()
        await self.ctrl.sync(full=True)

    def put(self, resource: str, raw: dict[str, Any]) -> None:
        self.informers.of(resource).put(raw)

    def remove(self, resource: str, key: str) -> None:
        self.informers.of(resource).remove(key)

    async def sync(self, full: bool = False) -> None:
        await self.ctrl.sync(full=full)

    def verdict(self, src: str, dst: str, proto: str, port: int, *, bridged: bool) -> bool:
        """Whether a new connection src -> dst crossing this node's FORWARD is accepted."""
        family = "ipv6" if ipaddress.ip_address(src).version == 6 else "ipv4"
        pkt = Packet(
            src=src,
            dst=dst,
            proto=proto.lower(),  # type: ignore[arg-type]
            sport=40000,
            dport=port,
            family=family,
            bridged=bridged,
            in_iface="kube-bridge" if bridged or _local(src) else "eth0",
            out_iface="kube-bridge" if bridged or _local(dst) else "eth0",
        )
        result = trace(
            self.tables[family], "FORWARD", pkt, lambda n, v, _flags: self.sets.contains(n, v)
        )
        return result.action == "ACCEPT"


LOCAL_NETS = tuple(ipaddress.ip_network(c) for c in LOCAL_CIDRS)


@functools.lru_cache(maxsize=1024)
def _local(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return any(address in net for net in LOCAL_NETS)
