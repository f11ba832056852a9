"""The service proxy controller end to end over fakes: lab API server -> informers -> sync ->
fake IPVS, fake kube-dummy-if, fake iptables and ipsets, real health-check servers on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from kube_router.config import parse
from kube_router.controllers.base import Barriers, RunContext
from kube_router.controllers.proxy.controller import ServiceProxyController
from kube_router.controllers.proxy.firewall import ProxyFirewall
from kube_router.controllers.proxy.healthcheck import HealthCheckServers
from kube_router.controllers.proxy.ports import ProxyDataplane, cleanup
from kube_router.controllers.sync import FakeClock, settle
from kube_router.dataplane import ipvs
from kube_router.dataplane.ipset_fake import FakeIPSets
from kube_router.dataplane.iptables_fake import FakeIPTables
from kube_router.dataplane.ipvs import ServiceKey
from kube_router.dataplane.ipvs_fake import FakeIPVS
from kube_router.dataplane.tracer import Packet, trace
from kube_router.dataplane.vips_fake import FakeNetns, FakeVipLinks
from kube_router.health import HealthChecker
from kube_router.k8s.client import KubeClient
from kube_router.k8s.informers import Informers
from kube_router.metrics import Metrics
from kube_router.node import NodeIdentity
from kube_router_lab.apiserver import LabServer

NODE_IP = "192.168.50.1"
VIP = "10.96.0.10"
TABLES = (
    "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
    ":POSTROUTING ACCEPT [0:0]\nCOMMIT\n"
)


def service(name: str, vip: str, spec: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "x", **meta},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": vip,
            "clusterIPs": [vip],
            "ports": [
                {"name": "http", "protocol": "TCP", "port": 80, "nodePort": 30080},
                {"name": "dns", "protocol": "UDP", "port": 53, "nodePort": 30053},
            ],
            **(spec or {}),
        },
    }


def endpoint_slice(name: str, *eps: tuple[str, str]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{name}-1",
            "namespace": "x",
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "ports": [
            {"name": "http", "protocol": "TCP", "port": 8080},
            {"name": "dns", "protocol": "UDP", "port": 5353},
        ],
        "endpoints": [
            {"addresses": [ip], "nodeName": node, "conditions": {"ready": True}} for ip, node in eps
        ],
    }


@dataclass
class Rig:
    lab: LabServer
    ctrl: ServiceProxyController
    ipvs: FakeIPVS
    netns: FakeNetns
    tables: FakeIPTables
    sets: FakeIPSets
    metrics: Metrics
    flushed: list[tuple[str, int]] = field(default_factory=list)

    async def settle(self, full: bool = False) -> None:
        """Let the informers catch up, then sync as the runner would."""
        await asyncio.sleep(0.3)
        await self.ctrl.sync(full)

    async def dests(self) -> dict[str, set[str]]:
        return {
            str(k): {f"{a}:{p}" for a, p in s.dests} for k, s in (await self.ipvs.dump()).items()
        }

    def vips(self) -> set[str]:
        index = self.netns.index_of("kube-dummy-if")
        return {a.address for a in self.netns.addrs if a.index == index}

    def verdict(self, dst: str, dport: int, proto: str = "tcp") -> str:
        pkt = Packet(src="10.0.0.99", dst=dst, proto=proto, dport=dport, sport=40000)
        return trace(
            self.tables, "INPUT", pkt, lambda name, value, flags: self.sets.contains(name, value)
        ).action


@pytest.fixture
async def rig(lab: LabServer, kube: KubeClient) -> AsyncIterator[Rig]:
    lab.store.create(
        "nodes",
        {
            "metadata": {"name": "n1"},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
            "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]},
        },
    )
    informers = Informers(kube)
    informers.start()
    await informers.wait_for_cache_sync(5)
    sets = FakeIPSets()
    tables = FakeIPTables("ipv4", set_exists=lambda n: n in sets.state(None))
    sets = FakeIPSets(is_referenced=lambda n: n in tables.referenced_sets())
    tables = FakeIPTables("ipv4", set_exists=lambda n: n in sets.state(None))
    tables.apply(TABLES)
    netns = FakeNetns()
    netns.add_link("eth0", kind="veth")
    netns.add_address("eth0", NODE_IP, 24)
    fake_ipvs = FakeIPVS()
    metrics = Metrics()
    rig_flushed: list[tuple[str, int]] = []

    async def flush(vip: str, port: int) -> None:
        rig_flushed.append((vip, port))

    dp = ProxyDataplane(
        fake_ipvs,
        FakeVipLinks(netns),
        ProxyFirewall({"ipv4": tables}, sets),
        HealthCheckServers("127.0.0.1"),
        flush,
    )
    node = NodeIdentity(
        "n1", ipaddress.ip_address(NODE_IP), ipaddress.ip_address(NODE_IP), None, None
    )
    cfg = parse(["--service-external-ip-range=203.0.113.0/24", "--ipvs-graceful-termination"], {})
    ctx = RunContext(cfg, kube, informers, node, HealthChecker(), metrics, Barriers())
    ctx.health.register(ServiceProxyController.name, cfg.ipvs_sync_period)
    ctrl = ServiceProxyController(ctx, dp, clock=FakeClock())
    await ctrl.start()
    await ctrl.sync(full=True)
    try:
        yield Rig(lab, ctrl, fake_ipvs, netns, tables, sets, metrics, rig_flushed)
    finally:
        await dp.health.stop()
        await informers.stop()


async def test_a_service_is_programmed_and_follows_its_endpoints(rig: Rig) -> None:
    assert ctx_barrier_set(rig)
    rig.lab.store.create("services", service("web", VIP, {"type": "NodePort"}))
    rig.lab.store.create("endpointslices", endpoint_slice("web", ("10.244.1.5", "n1")))
    await rig.settle()
    assert await rig.dests() == {
        "tcp/10.96.0.10:80": {"10.244.1.5:8080"},
        "udp/10.96.0.10:53": {"10.244.1.5:5353"},
        f"tcp/{NODE_IP}:30080": {"10.244.1.5:8080"},
        f"udp/{NODE_IP}:30053": {"10.244.1.5:5353"},
    }
    assert rig.vips() == {VIP}
    # The firewall lets service ports in and rejects the rest on a VIP.
    assert rig.verdict(VIP, 80) == "ACCEPT"
    assert rig.verdict(VIP, 81) == "REJECT"
    # An endpoint change: only that service's real servers; the old one drains (weight 0).
    slice_obj = rig.lab.store.get("endpointslices", "x", "web-1")
    slice_obj["endpoints"] = endpoint_slice("web", ("10.244.2.7", "n2"))["endpoints"]
    rig.lab.store.update("endpointslices", slice_obj)
    await rig.settle()
    state = (await rig.ipvs.dump())[ServiceKey.of(VIP, "tcp", 80)]
    weights = {a: d.dest.weight for (a, _), d in state.dests.items()}
    assert weights == {"10.244.2.7": 1, "10.244.1.5": 0}
    assert (VIP, 53) in rig.flushed and (NODE_IP, 30053) in rig.flushed
    # The graceful scan deletes the idle drained server.
    await rig.ctrl.graceful_scan()
    assert (await rig.dests())["tcp/10.96.0.10:80"] == {"10.244.2.7:8080"}
    # The Service goes: everything of it goes.
    rig.lab.store.delete("services", "x", "web")
    await rig.settle()
    assert await rig.dests() == {}
    assert rig.vips() == set()


def ctx_barrier_set(rig: Rig) -> bool:
    return rig.ctrl.ctx.barriers.proxy_firewall_setup.is_set()


async def test_a_full_sync_repairs_damage_from_outside(rig: Rig) -> None:
    rig.lab.store.create("services", service("web", VIP))
    rig.lab.store.create("endpointslices", endpoint_slice("web", ("10.244.1.5", "n1")))
    await rig.settle()
    await rig.ipvs.apply(ipvs.Transaction().del_service(ServiceKey.of(VIP, "tcp", 80)))
    rig.netns.del_address("kube-dummy-if", VIP)
    rig.tables.apply("*filter\n-F INPUT\nCOMMIT\n")
    await rig.ctrl.sync(full=True)
    assert "tcp/10.96.0.10:80" in await rig.dests()
    assert rig.vips() == {VIP}
    assert rig.verdict(VIP, 81) == "REJECT"


async def test_bad_input_is_reported_once_and_the_rest_programmed(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    bad = service(
        "bad",
        "10.96.0.11",
        {"externalIPs": ["198.18.0.1"]},
        annotations={"kube-router.io/service.scheduler": "nope"},
    )
    rig.lab.store.create("services", bad)
    rig.lab.store.create("services", service("good", VIP))
    rig.lab.store.create("endpointslices", endpoint_slice("good", ("10.244.1.5", "n1")))
    await rig.settle()
    await rig.ctrl.sync(full=True)
    errors = [r for r in caplog.records if "x/bad" in r.getMessage()]
    assert len(errors) == 1
    assert "tcp/10.96.0.10:80" in await rig.dests()
    assert "tcp/10.96.0.11:80" in await rig.dests()  # rr instead of the bad scheduler
    scrape = (await rig.metrics.scrape()).decode()
    assert "kube_router_controller_ipvs_service_errors 1.0" in scrape
    assert 'service_name="good"' in scrape


async def test_health_check_nodeport_answers_with_local_endpoints(
    rig: Rig, unused_tcp_port: int
) -> None:
    lb = service(
        "lb",
        VIP,
        {
            "type": "LoadBalancer",
            "externalTrafficPolicy": "Local",
            "healthCheckNodePort": unused_tcp_port,
        },
    )
    rig.lab.store.create("services", lb)
    rig.lab.store.create(
        "endpointslices", endpoint_slice("lb", ("10.244.1.5", "n1"), ("10.244.2.7", "n2"))
    )
    await rig.settle()
    url = f"http://127.0.0.1:{unused_tcp_port}/healthz"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert (resp.status, await resp.text()) == (200, "1 Service Endpoints found\n")


async def test_runner_heartbeats_and_events_trigger_syncs(rig: Rig) -> None:
    clock = rig.ctrl.clock
    assert isinstance(clock, FakeClock)
    task = asyncio.create_task(rig.ctrl.runner.run())
    try:
        await settle()
        rig.lab.store.create("services", service("web", VIP))
        for _ in range(100):
            await asyncio.sleep(0.02)
            if "tcp/10.96.0.10:80" in await rig.dests():
                break
        assert rig.ctrl.runner.stats.failures == 0
        assert "tcp/10.96.0.10:80" in await rig.dests()
        assert rig.ctrl.runner.stats.syncs >= 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_cleanup_removes_only_what_is_ours(rig: Rig) -> None:
    rig.lab.store.create("services", service("web", VIP, {"type": "NodePort"}))
    await rig.settle()
    other = ipvs.Service(ServiceKey.of("192.0.2.1", "tcp", 80))
    await rig.ipvs.apply(ipvs.Transaction().add_service(other))
    assert rig.ctrl.dataplane is not None
    await cleanup(rig.ctrl.dataplane)
    assert list(await rig.ipvs.dump()) == [other.key]
    assert "kube-dummy-if" not in {link.name for link in rig.netns.links.values()}
    assert "KUBE-ROUTER-SERVICES" not in rig.tables.chain_names()
    assert not [n for n in rig.sets.state(None) if n.startswith("kube-router-")]
