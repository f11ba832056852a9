"""The agent process against the lab API server: start-up order, health, crash and stop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kube_router import app, health
from kube_router.config import Config, parse
from kube_router.controllers.base import Controller, RunContext
from kube_router_lab.apiserver import LabServer


def _node(name: str = "n1", ip: str = "127.0.0.1") -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
    }


@pytest.fixture(autouse=True)
def no_host_firewall(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests run in the host namespace: the real policy controller, service proxy and
    routing controller must not start here."""
    monkeypatch.setitem(
        app.FACTORIES,
        "router",
        app._pending(health.ROUTES, "routes_sync_period", "cni_firewall_setup"),
    )
    monkeypatch.setitem(
        app.FACTORIES, "firewall", app._pending(health.POLICY, "iptables_sync_period")
    )
    monkeypatch.setitem(
        app.FACTORIES,
        "proxy",
        app._pending(health.SERVICES, "ipvs_sync_period", "proxy_firewall_setup"),
    )


@pytest.fixture
def kubeconfig(lab: LabServer, tmp_path: Path) -> str:
    path = tmp_path / "kubeconfig"
    lab.write_kubeconfig(path)
    return str(path)


def _config(kubeconfig: str, port: int, *extra: str, env: dict[str, str] | None = None) -> Config:
    return parse(
        [
            f"--kubeconfig={kubeconfig}",
            "--hostname-override=n1",
            f"--health-port={port}",
            "--health-addr=127.0.0.1",
            *extra,
        ],
        env or {},
    )


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


async def _until_healthy(port: int, timeout: float = 10.0) -> None:
    async def loop() -> None:
        while True:
            try:
                if (await _get(f"http://127.0.0.1:{port}/healthz"))[0] == 200:
                    return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)

    await asyncio.wait_for(loop(), timeout)


async def test_runs_healthy_and_stops_cleanly(
    lab: LabServer, kubeconfig: str, unused_tcp_port_factory: Callable[[], int]
) -> None:
    lab.store.create("nodes", _node())
    hport, mport = unused_tcp_port_factory(), unused_tcp_port_factory()
    agent = app.Agent(
        _config(
            kubeconfig,
            hport,
            f"--metrics-port={mport}",
            "--metrics-addr=127.0.0.1",
            "--run-loadbalancer",
            env={"POD_NAME": "p", "POD_NAMESPACE": "kube-system"},
        )
    )
    task = asyncio.create_task(agent.run())
    await _until_healthy(hport)
    status, text = await _get(f"http://127.0.0.1:{mport}/metrics")
    assert status == 200 and "kube_router_build_info" in text
    expected = sorted(
        [health.ROUTES, health.SERVICES, health.POLICY, health.LOADBALANCER, health.METRICS]
    )
    for _ in range(100):
        if sorted(agent.checker._components) == expected:
            break
        await asyncio.sleep(0.05)
    assert sorted(agent.checker._components) == expected
    agent.request_stop()
    assert await asyncio.wait_for(task, 10) == 0


class _Recorder(Controller):
    def __init__(
        self,
        ctx: RunContext,
        name: str,
        log: list[str],
        release: str | None,
        delay: float,
        crash: bool = False,
    ) -> None:
        super().__init__(ctx)
        self.name, self.log, self.release, self.delay, self.crash = (
            name,
            log,
            release,
            delay,
            crash,
        )

    @property
    def sync_period(self) -> float:
        return 60.0

    async def run(self) -> None:
        self.log.append(f"start {self.name}")
        await asyncio.sleep(self.delay)
        if self.crash:
            raise RuntimeError(f"{self.name} exploded")
        if self.release:
            self.log.append(f"release {self.release}")
            getattr(self.ctx.barriers, self.release).set()
        self.beat()
        await asyncio.Event().wait()


def _install(monkeypatch: pytest.MonkeyPatch, log: list[str], crash: str = "") -> None:
    spec = {
        "router": (health.ROUTES, "cni_firewall_setup"),
        "proxy": (health.SERVICES, "proxy_firewall_setup"),
        "firewall": (health.POLICY, None),
        "loadbalancer": (health.LOADBALANCER, None),
    }
    factories = {
        role: (lambda ctx, n=name, r=rel, c=(role == crash): _Recorder(ctx, n, log, r, 0.2, c))
        for role, (name, rel) in spec.items()
    }
    monkeypatch.setattr(app, "FACTORIES", factories)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            [],
            [
                f"start {health.ROUTES}",
                "release cni_firewall_setup",
                f"start {health.SERVICES}",
                "release proxy_firewall_setup",
                f"start {health.POLICY}",
            ],
        ),
        # Without the firewall nothing waits on the barriers.
        (
            ["--run-firewall=false"],
            [
                f"start {health.ROUTES}",
                f"start {health.SERVICES}",
                "release cni_firewall_setup",
                "release proxy_firewall_setup",
            ],
        ),
        (["--run-router=false", "--run-service-proxy=false"], [f"start {health.POLICY}"]),
    ],
)
async def test_start_order_and_barriers(
    lab: LabServer,
    kubeconfig: str,
    unused_tcp_port: int,
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    expected: list[str],
) -> None:
    lab.store.create("nodes", _node())
    log: list[str] = []
    _install(monkeypatch, log)
    agent = app.Agent(_config(kubeconfig, unused_tcp_port, *flags))
    task = asyncio.create_task(agent.run())
    await asyncio.sleep(1.0)
    agent.request_stop()
    assert await asyncio.wait_for(task, 10) == 0
    assert log == expected


async def test_crashed_controller_ends_the_process(
    lab: LabServer, kubeconfig: str, unused_tcp_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab.store.create("nodes", _node())
    _install(monkeypatch, [], crash="proxy")
    agent = app.Agent(_config(kubeconfig, unused_tcp_port))
    assert await asyncio.wait_for(agent.run(), 10) == 1


@pytest.mark.parametrize(
    ("setup", "extra", "env"),
    [
        ("no-node", [], {}),
        ("node-without-ipv6", ["--enable-ipv6"], {}),
        ("ok", ["--run-loadbalancer"], {}),  # no POD_NAME / POD_NAMESPACE
    ],
)
async def test_startup_failures_exit_1(
    lab: LabServer,
    kubeconfig: str,
    unused_tcp_port: int,
    setup: str,
    extra: list[str],
    env: dict[str, str],
) -> None:
    if setup != "no-node":
        lab.store.create("nodes", _node())
    agent = app.Agent(_config(kubeconfig, unused_tcp_port, *extra, env=env))
    assert await asyncio.wait_for(agent.run(), 10) == 1


async def test_cache_sync_timeout_exits_1(tmp_path: Path, unused_tcp_port: int) -> None:
    cfg = parse(
        [
            "--master=http://127.0.0.1:9",
            "--cache-sync-timeout=300ms",
            f"--health-port={unused_tcp_port}",
        ],
        {},
    )
    assert await asyncio.wait_for(app.Agent(cfg).run(), 10) == 1


async def test_health_port_in_use_exits_1(
    lab: LabServer, kubeconfig: str, unused_tcp_port: int
) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", unused_tcp_port)
    try:
        assert await app.Agent(_config(kubeconfig, unused_tcp_port)).run() == 1
    finally:
        server.close()


async def test_cleanup_removes_policy_state_through_the_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kube_router.controllers.netpol.ports import Dataplane
    from kube_router.dataplane.ipset_fake import FakeIPSets
    from kube_router.dataplane.iptables_fake import FakeIPTables

    sets = FakeIPSets()
    sets.apply(
        "create KUBE-SRC-AAAAAAAAAAAAAAAA hash:ip timeout 0\ncreate other-set hash:ip timeout 0\n"
    )
    tables = FakeIPTables("ipv4")
    tables.apply(
        "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-ROUTER-INPUT - [0:0]\n"
        '-A INPUT -m comment --comment "kube-router netpol - X" -j KUBE-ROUTER-INPUT\n'
        "-A INPUT -j ACCEPT\nCOMMIT\n"
    )

    async def fake_real(_executor: object, _families: object) -> Dataplane:
        return Dataplane({"IPv4": tables}, sets)

    monkeypatch.setattr(app.Dataplane, "real", fake_real)
    proxy_cleaned: list[object] = []

    async def proxy_real(_families: object) -> object:
        return "proxy-dataplane"

    async def proxy_cleanup(dp: object) -> None:
        proxy_cleaned.append(dp)

    monkeypatch.setattr(app.ProxyDataplane, "real", proxy_real)
    monkeypatch.setattr(app, "proxy_cleanup", proxy_cleanup)
    assert await app.cleanup(parse(["--cleanup-config"], {})) == 0
    assert proxy_cleaned == ["proxy-dataplane"]
    assert tables.chain_names() == ["INPUT", "FORWARD", "OUTPUT"] or "KUBE-ROUTER-INPUT" not in (
        tables.chain_names()
    )
    assert [r.text for r in tables.rules("INPUT")] == ["-j ACCEPT"]
    assert list(sets.state(None)) == ["other-set"]


async def test_stop_during_cache_sync_is_clean(unused_tcp_port: int) -> None:
    cfg = parse(
        [
            "--master=http://127.0.0.1:9",
            "--cache-sync-timeout=1m",
            f"--health-port={unused_tcp_port}",
            "--health-addr=127.0.0.1",
        ],
        {},
    )
    agent = app.Agent(cfg)
    task = asyncio.create_task(agent.run())
    await asyncio.sleep(0.3)
    agent.request_stop()
    assert await asyncio.wait_for(task, 5) == 0


def test_tune_gc_collects_the_young_generation_less_often() -> None:
    import gc

    saved = gc.get_threshold()
    try:
        app.tune_gc()
        assert gc.get_threshold() == (app.GC_YOUNG_THRESHOLD, 10, 10)
    finally:
        gc.set_threshold(*saved)
