"""The proxy benchmark at a tiny scale, so that it cannot rot: its cluster, the controller it
drives over the fake, its report."""

from __future__ import annotations

import gc
import importlib.util
import json
import random
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from kube_router import app
from kube_router.dataplane import ipvs
from kube_router.dataplane.ipvs_fake import FakeIPVS

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load(name: str) -> ModuleType:
    """A bench module by file, as ``python bench/proxy.py`` finds it (its siblings importable)."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def modules() -> Iterator[dict[str, ModuleType]]:
    sys.path.insert(0, str(BENCH))
    names = ("proxy_rig", "proxy_report", "proxy_kernel", "proxy")
    try:
        yield {name: load(name) for name in names}
    finally:
        sys.path.remove(str(BENCH))
        for name in names:
            sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def rig(modules: dict[str, ModuleType]) -> ModuleType:
    return modules["proxy_rig"]


@pytest.fixture(scope="module")
def kernel(modules: dict[str, ModuleType]) -> ModuleType:
    return modules["proxy_kernel"]


@pytest.fixture(scope="module")
def proxy(modules: dict[str, ModuleType]) -> ModuleType:
    return modules["proxy"]


@pytest.mark.parametrize(
    ("i", "virtual"),
    [(0, ["tcp/10.96.0.2:80", "tcp/172.16.0.2:30000"]),
     (1, ["tcp/10.96.0.3:443", "tcp/10.96.0.3:80"]),
     (2, ["tcp/10.96.0.4:80"]), (13, ["tcp/10.96.0.15:80"])],
)  # fmt: skip
async def test_every_shape_gives_ten_real_servers(
    rig: ModuleType, i: int, virtual: list[str]
) -> None:
    cluster = rig.Cluster.make(0.002)  # 20 Services
    fake = FakeIPVS()
    await rig.cold_sync(await rig.make_rig(cluster, rig.null_dataplane(fake)))
    tables = ipvs.plain(await fake.dump())
    ours = {str(k): dests for k, (_, dests) in tables.items() if str(k) in virtual}
    assert sorted(ours) == virtual
    assert sum(len(d) for d in ours.values()) == rig.ENDPOINTS_PER_SERVICE
    assert len(tables) == 24 and sum(len(d) for _, d in tables.values()) == 200


@pytest.mark.parametrize(("j", "lost", "new"), [(0, 0, 1), (1, 1, 0), (2, 1, 1)])
def test_a_change_adds_removes_or_replaces_one_endpoint(
    rig: ModuleType, j: int, lost: int, new: int
) -> None:
    cluster = rig.Cluster.make(0.001)  # 10 Services, 5 or 10 endpoints each
    i = random.Random(7).randrange(cluster.n)  # the Service change() picks with the same seed
    before = {rig.pod_ip(n) for n in cluster.pods[i]}
    es = cluster.change(j, random.Random(7))
    after = {e.addresses[0] for e in es.endpoints}
    assert es.metadata.labels[rig.SERVICE_NAME_LABEL] == f"svc-{i}"
    assert (len(before - after), len(after - before)) == (lost, new)


async def test_the_cold_sync_is_the_controllers_with_every_part_timed(rig: ModuleType) -> None:
    cluster = rig.Cluster.make(0.003)
    bench = await rig.make_rig(cluster, rig.null_dataplane(FakeIPVS()))
    cold = await rig.cold_sync(bench)
    assert cold["ops"] == 30 * 11 + 6  # each Service: 10 real servers; shapes 0 and 1: 2 services
    assert 0 < cold["replan"] < cold["handed"] < cold["total"]
    assert min(cold["vips"], cold["firewall"], cold["port"]) > 0
    parts = ("handed", "vips", "firewall", "health", "rest")
    assert sum(cold[p] for p in parts) == pytest.approx(cold["own"])
    assert cold["own"] + cold["port"] == pytest.approx(cold["total"])
    assert len(bench.sync.plans) == 30  # the controller's own IPVSSync planned every Service


async def test_changes_through_the_controller_match_a_fresh_cold_sync(rig: ModuleType) -> None:
    cluster = rig.Cluster.make(0.003)
    fake = FakeIPVS()
    bench = await rig.make_rig(cluster, rig.null_dataplane(fake))
    await rig.cold_sync(bench)
    got = await rig.changes(bench, cluster, 12)
    points = zip(got["handed"], got["acked"], got["done"], strict=True)
    assert all(0 < handed <= acked <= done for handed, acked, done in points)
    assert min(got["ops"]) >= 1
    assert ipvs.plain(await fake.dump()) == await rig.expected_tables(cluster)
    kernel = {
        str(key): {dk: (d.forward, d.weight) for dk, d in dests.items()}
        for key, (_, dests) in ipvs.plain(await fake.dump()).items()
    }
    assert rig.record_tables(bench) == kernel


PROC = """IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  0A600002:0050 rr
  -> 0A400002:1F90      Masq    1      0          0
  -> 0A400003:1F90      Masq    0      0          0
UDP  AC100002:7530 sh
TCP  0A600003:01BB rr
  -> 7F000001:20FB      Local   3      0          0
"""


def test_proc_ip_vs_is_read_as_services_and_real_servers(kernel: ModuleType) -> None:
    assert kernel.parse_proc(PROC) == {
        "tcp/10.96.0.2:80": {("10.64.0.2", 8080): (0, 1), ("10.64.0.3", 8080): (0, 0)},
        "udp/172.16.0.2:30000": {},
        "tcp/10.96.0.3:443": {("127.0.0.1", 8443): (1, 3)},
    }


def test_the_first_netlink_send_of_an_apply_is_noted(rig: ModuleType, kernel: ModuleType) -> None:
    ours, theirs = socket.socketpair()
    genl = SimpleNamespace(sock=ours)
    timed = rig.TimedPort(FakeIPVS())
    kernel.hook_sent(SimpleNamespace(_socket=lambda: genl), timed)
    try:
        genl.sock.send(b"first")
        first = timed.sent_at
        genl.sock.send(b"later")
        assert 0 < first == timed.sent_at
        assert theirs.recv(16) == b"firstlater"
        timed.reset()
        genl.sock.send(b"next")
        assert timed.sent_at > first
    finally:
        ours.close()
        theirs.close()


def test_the_vm_slowdown_scales_the_kernel_figures(kernel: ModuleType) -> None:
    result = {"cold_handed_s": 2.5, "cold_dump_s": 0.5}
    vm = {
        "kernel_cold_dump_s": 4.0,
        "kernel_cold_port_s": 10.0,
        "kernel_cold_handed_s": 44.0,
        "kernel_cold_total_s": 80.0,
        "kernel_change_p50_ms": 8.0,
        "kernel_change_acked_p50_ms": 30.0,
        "kernel_change_done_p50_ms": 40.0,
    }
    kernel.add_vm_figures(result, vm)
    assert result["vm_slowdown"] == 20.0
    assert result["kernel_cold_port_s_native_est"] == 0.5
    assert result["kernel_cold_total_s_native_est"] == 4.0
    assert result["kernel_change_p50_ms_native_est"] == 0.4
    assert result["kernel_change_acked_p50_ms_native_est"] == 1.5
    assert result["kernel_change_done_p50_ms_native_est"] == 2.0


def test_main_tunes_the_collector_as_the_agent_and_reports_a_table_and_json(
    proxy: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        assert proxy.main(["--scale", "0.01", "--runs", "2", "--changes", "9", "--json"]) == 0
        older = app.GC_OLDER_THRESHOLD
        assert gc.get_threshold() == (app.GC_YOUNG_THRESHOLD, older, older)
    finally:
        gc.set_threshold(*before)
    out = capsys.readouterr().out.splitlines()
    assert "| Measure | Bar | Result |" in out
    assert any(line.startswith("| Services / virtual services / real servers |") for line in out)
    figures = json.loads(out[-1])
    assert figures["services"] == 100 and figures["virtual_services"] == 120
    assert figures["real_servers"] == 1000 and figures["tables_match"] is True
    assert figures["rss_agent_mib"] >= figures["rss_base_mib"] > 0
    assert len(figures["cold_handed_runs_s"]) == 2
    assert figures["cold_own_s"] > figures["cold_handed_s"] > 0
