"""A routing controller over fakes, for test_routing_controller*.py: the lab API server, real
informers, and RoutingPorts made of FakeEngine, FakeRoutes, NodeFirewall over FakeIPTables and
FakeIPSets, FakeBridges, a CNI conf file in tmp_path, a fake EC2 client and a FakeClock.

``await build(lab, kube, tmp_path, argv, ...)`` creates the Nodes, starts the informers and the
controller (``start()``, and a first full ``sync()`` unless told not to) and returns a
:class:`Rig`; ``await rig.close()`` stops everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from kube_router import health
from kube_router.bgp.canon import BgpState
from kube_router.bgp.fake import FakeEngine
from kube_router.config import parse
from kube_router.controllers.base import Barriers, RunContext
from kube_router.controllers.routing.cni import CNI_CONF_ENV
from kube_router.controllers.routing.controller import RoutingController
from kube_router.controllers.routing.node_firewall import NodeFirewall
from kube_router.controllers.routing.ports import RoutingPorts
from kube_router.controllers.sync import FakeClock, settle
from kube_router.dataplane import iptables_parse as ipt
from kube_router.dataplane.bridge import FakeBridges
from kube_router.dataplane.ipset_fake import FakeIPSets
from kube_router.dataplane.iptables_fake import FakeIPTables
from kube_router.dataplane.routes import Route
from kube_router.dataplane.routes_fake import FakeRouteKernel, FakeRoutes
from kube_router.health import HealthChecker
from kube_router.k8s.client import KubeClient
from kube_router.k8s.informers import Informers
from kube_router.metrics import Metrics
from kube_router.node import LinkInfo, NodeIdentity
from kube_router_lab.apiserver import LabServer

LOCAL = "n1"
NODE_IP: Final = "192.168.50.1"
SUBNET: Final = "192.168.50.0/24"
POD_CIDR: Final = "10.244.1.0/24"
NODE_MTU: Final = 9000
IFACE: Final = "eth0"
INFORMER_WAIT_S: Final = 5.0
POLL_S: Final = 0.02
UNTIL_ROUNDS: Final = 200
CNI_CONF: Final = {
    "cniVersion": "0.3.0",
    "name": "mynet",
    "type": "bridge",
    "bridge": "kube-bridge",
    "isDefaultGateway": True,
    "ipam": {"type": "host-local"},
}


def node_body(
    name: str,
    ip: str,
    pod_cidr: str = "",
    annotations: dict[str, str] | None = None,
    provider: str = "",
) -> dict[str, Any]:
    spec: dict[str, Any] = {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr] if pod_cidr else []}
    if provider:
        spec["providerID"] = provider
    return {
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": spec,
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
    }


class FakeEc2:
    """The Ec2Client port: records the instances it was asked about."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def region(self) -> str:
        return "eu-west-1"

    async def modify_source_dest_check(self, instance_id: str) -> None:
        self.calls.append(instance_id)


async def wait_for(what: str, check: Callable[[], bool], timeout: float = INFORMER_WAIT_S) -> None:
    """Poll (real time) until ``check()``; the informers deliver through the lab's watch."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(POLL_S)


@dataclass
class Rig:
    lab: LabServer
    ctrl: RoutingController
    engine: FakeEngine
    kernel: FakeRouteKernel
    bridges: FakeBridges
    sets: FakeIPSets
    tables: FakeIPTables
    ec2: FakeEc2
    clock: FakeClock
    metrics: Metrics
    cni_path: Path
    informers: Informers
    run_task: asyncio.Task[None] | None = None

    # --- the API -----------------------------------------------------------------------------

    def node_names(self) -> set[str]:
        return {n.metadata.name for n in self.informers.nodes.store.list()}

    async def add_node(self, body: dict[str, Any]) -> None:
        self.lab.store.create("nodes", body)
        name = body["metadata"]["name"]
        await wait_for(f"node {name}", lambda: name in self.node_names())

    async def delete_node(self, name: str) -> None:
        self.lab.store.delete("nodes", "", name)
        await wait_for(f"node {name} gone", lambda: name not in self.node_names())

    async def update_node(self, name: str, change: Callable[[dict[str, Any]], None]) -> None:
        body = self.lab.store.get("nodes", "", name)
        change(body)
        self.lab.store.update("nodes", body)
        version = body["metadata"].get("resourceVersion")

        def seen() -> bool:
            node = self.informers.nodes.store.get(name)
            return node is not None and node.metadata.resource_version != version

        await wait_for(f"node {name} updated", seen)

    # --- reading the fakes -------------------------------------------------------------------

    async def state(self) -> BgpState:
        return await self.engine.read_state()

    def routes(self) -> set[str]:
        return {r.describe() for r in self.kernel.routes.values() if r.protocol == Route.protocol}

    def cni(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.cni_path.read_text())
        return result

    def rules(self, chain: str, table: str = "filter") -> list[str]:
        return [r.text for r in self.tables.rules(chain, table)]

    def members(self, name: str) -> set[str]:
        return set(self.sets.state()[name].entries)

    async def scrape(self) -> str:
        return (await self.metrics.scrape()).decode()

    # --- running -----------------------------------------------------------------------------

    def run(self) -> None:
        """The controller's run() as a task (it calls start() itself); close() cancels it."""
        self.run_task = asyncio.create_task(self.ctrl.run(), name="test-routing-run")

    async def until(self, what: str, check: Callable[[], bool]) -> None:
        """Let the loops run until ``check()`` (they run on the loop, not on the FakeClock)."""
        for _ in range(UNTIL_ROUNDS):
            if check():
                return
            if self.run_task is not None and self.run_task.done():
                self.run_task.result()  # the controller's failure, not a time-out
                raise AssertionError("the controller's run() ended")
            await settle()
            await asyncio.sleep(POLL_S)
        raise AssertionError(f"timed out waiting for {what}")

    async def close(self) -> None:
        if self.run_task is not None:
            self.run_task.cancel()
            await asyncio.gather(self.run_task, return_exceptions=True)
        if self.ctrl.aws_task is not None:
            await asyncio.gather(self.ctrl.aws_task, return_exceptions=True)
        await self.informers.stop()


def _firewall() -> tuple[NodeFirewall, FakeIPSets, FakeIPTables]:
    holder: dict[str, FakeIPTables] = {}

    def referenced(name: str) -> bool:
        return name in holder["t"].referenced_sets()

    sets = FakeIPSets(is_referenced=referenced)

    def set_family(name: str) -> ipt.Family | None:
        found = sets.sets.get(name)
        if found is None:
            return None
        return "ipv6" if found.family == "inet6" else "ipv4"

    tables = FakeIPTables("ipv4", set_family=set_family)
    holder["t"] = tables
    return NodeFirewall({"ipv4": tables}, sets), sets, tables


def _kernel() -> FakeRouteKernel:
    kernel = FakeRouteKernel()
    kernel.add_link(IFACE)
    kernel.add_address(IFACE, NODE_IP, int(SUBNET.split("/")[1]))
    return kernel


async def _subnets(_address: str) -> tuple[str, ...]:
    return (SUBNET,)


async def build(
    lab: LabServer,
    kube: KubeClient,
    tmp_path: Path,
    argv: Sequence[str] = (),
    *,
    local: dict[str, Any] | None = None,
    others: Sequence[dict[str, Any]] = (),
    first_sync: bool = True,
    start: bool = True,
) -> Rig:
    """Nodes in the lab, informers synced, the controller started (and synced once)."""
    for body in (local or node_body(LOCAL, NODE_IP, POD_CIDR), *others):
        lab.store.create("nodes", body)
    informers = Informers(kube)
    informers.start()
    await informers.wait_for_cache_sync(INFORMER_WAIT_S)
    cni_path = tmp_path / "10-kuberouter.conf"
    cni_path.write_text(json.dumps(CNI_CONF, indent=2))
    (tmp_path / "rt_tables").write_text("255\tlocal\n254\tmain\n")
    firewall, sets, tables = _firewall()
    kernel, engine, bridges = _kernel(), FakeEngine(), FakeBridges()
    ports = RoutingPorts(
        engine=engine,
        routes=FakeRoutes(kernel, [tmp_path / "rt_tables"]),
        firewall=firewall,
        bridges=bridges,
        subnets=_subnets,
    )
    cfg = parse(list(argv), {})
    ip = ipaddress.ip_address(NODE_IP)
    node = NodeIdentity(LOCAL, ip, ip, None, LinkInfo(IFACE, 2, NODE_MTU))
    metrics = Metrics()
    ctx = RunContext(cfg, kube, informers, node, HealthChecker(), metrics, Barriers())
    ctx.health.register(health.ROUTES, cfg.routes_sync_period)
    ctx.health.register(health.ROUTE_SYNC, cfg.injected_routes_sync_period)
    clock = FakeClock()
    ctrl = RoutingController(ctx, ports, clock=clock, env={CNI_CONF_ENV: str(cni_path)})
    ec2 = FakeEc2()
    ctrl.aws_client = ec2
    rig = Rig(
        lab, ctrl, engine, kernel, bridges, sets, tables, ec2, clock, metrics, cni_path, informers
    )
    try:
        if start:
            await ctrl.start()
            if first_sync:
                await ctrl.sync(full=True)
    except BaseException:
        await rig.close()
        raise
    return rig


Build = Callable[..., Awaitable[Rig]]


@contextlib.asynccontextmanager
async def rigs(lab: LabServer, kube: KubeClient, tmp_path: Path) -> AsyncIterator[Build]:
    """A factory of rigs (``await make(*argv, **build_kw)``), all closed at the end."""
    made: list[Rig] = []

    async def factory(*argv: str, **kw: Any) -> Rig:
        rig = await build(lab, kube, tmp_path, argv, **kw)
        made.append(rig)
        return rig

    try:
        yield factory
    finally:
        for rig in made:
            await rig.close()
