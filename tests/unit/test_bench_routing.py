"""The routing benchmark's pure parts, so that it cannot rot: the routes it makes the peer send,
the parsers of what it watches (rtnetlink notifications, BGP segments, ``ip route``, /proc) and
its report."""

from __future__ import annotations

import importlib.util
import ipaddress
import math
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kube_router.dataplane.routes import Route
from kube_router.dataplane.routes_netlink import route_body
from kube_router.dataplane.vips_netlink import RTM_DELROUTE, RTM_NEWROUTE, _msg

BENCH = Path(__file__).resolve().parents[2] / "bench"
NAMES = ("routing_monitor", "routing")


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def modules() -> Iterator[dict[str, ModuleType]]:
    sys.path.insert(0, str(BENCH))
    try:
        yield {name: load(name) for name in NAMES}
    finally:
        sys.path.remove(str(BENCH))
        for name in NAMES:
            sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def bench(modules: dict[str, ModuleType]) -> ModuleType:
    return modules["routing"]


@pytest.fixture(scope="module")
def mon(modules: dict[str, ModuleType]) -> ModuleType:
    return modules["routing_monitor"]


# --- the routes -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 1000, 29_696])
def test_routes_are_distinct_pod_cidrs_via_next_hops_on_the_nodes_subnet(
    bench: ModuleType, n: int
) -> None:
    paths = bench.paths(n)
    subnet = ipaddress.ip_network(bench.SUBNETS[0])
    lab_hosts = {subnet.network_address + h for h in range(256)}  # .0.x: underlay, node, peer
    pods = ipaddress.ip_network("10.244.0.0/16")
    assert len({p.prefix for p in paths}) == n and len({p.next_hop for p in paths}) == n
    for p in paths:
        prefix, hop = ipaddress.ip_network(p.prefix), ipaddress.ip_address(p.next_hop)
        assert prefix.prefixlen == 24 and not prefix.overlaps(pods) and not prefix.overlaps(subnet)
        assert hop in subnet and hop not in lab_hosts and hop != subnet.broadcast_address


@pytest.mark.parametrize("n", [0, -1, 29_697])
def test_a_route_count_out_of_range_is_refused(bench: ModuleType, n: int) -> None:
    with pytest.raises(ValueError, match="--routes"):
        bench.paths(n)


TIMELINE = [(1.0, 1), (2.0, 2), (3.0, 1), (4.0, 0), (5.0, 2)]


@pytest.mark.parametrize(
    ("since", "target", "want"),
    [(0.0, 2, 2.0), (2.5, 2, 5.0), (0.0, 0, 4.0), (4.5, 0, None), (0.0, 3, None)],
)
def test_reached_at_is_the_first_time_after_since(
    bench: ModuleType, since: float, target: int, want: float | None
) -> None:
    assert bench.reached_at(TIMELINE, since, target) == want


@pytest.mark.parametrize(("since", "want"), [(0.0, 1.0), (3.5, 4.0), (6.0, None)])
def test_first_after(bench: ModuleType, since: float, want: float | None) -> None:
    assert bench.first_after(TIMELINE, since) == want


# --- what the monitors parse ------------------------------------------------------------------


def test_route_notifications_are_decoded_from_one_recv(mon: ModuleType) -> None:
    ours = Route("10.128.0.0/24", gateway="10.77.4.1")
    other = Route("10.9.0.0/16", gateway="10.77.0.1", protocol=4, table=77)
    data = (
        _msg(RTM_NEWROUTE, 0, 0, route_body(ours, 2, False))
        + _msg(RTM_DELROUTE, 0, 0, route_body(other, 0, False))  # as the kernel tells it
        + _msg(3, 0, 0, b"")  # NLMSG_DONE: not a route
    )
    assert list(mon.route_changes(data)) == [
        mon.RouteChange(True, "10.128.0.0/24", 17, 254),
        mon.RouteChange(False, "10.9.0.0/16", 4, 77),
    ]


@pytest.mark.parametrize(
    ("text", "want"),
    [("", set()),
     ("10.128.0.0/24 via 10.77.4.1 dev eth0 proto 17 \n10.1.2.3 via 10.77.4.2 dev eth0 proto 17",
      {"10.128.0.0/24", "10.1.2.3/32"}),
     ("unicast 10.5.0.0/16 via 10.77.4.1 dev eth0 proto 17\n\n", {"10.5.0.0/16"})],
)  # fmt: skip
def test_ip_route_lines(mon: ModuleType, text: str, want: set[str]) -> None:
    assert mon.parse_ip_route(text) == want


@given(st.sets(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)), max_size=20))
def test_ip_route_lines_round_trip(mon: ModuleType, nets: set[tuple[int, int]]) -> None:
    cidrs = {str(ipaddress.ip_network((a, n), strict=False)) for a, n in nets}
    text = "".join(f"{c.removesuffix('/32')} via 10.77.4.1 dev eth0 proto 17\n" for c in cidrs)
    assert mon.parse_ip_route(text) == cidrs


def _tcp_packet(src: str, sport: int, dport: int, payload: int, flags: int = 0x18) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, flags, 65535, 0, 0)
    total = 20 + len(tcp) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 6, 0,
        socket.inet_aton(src), socket.inet_aton("10.77.0.11"),
    )  # fmt: skip
    return ip + tcp + b"x" * payload


@pytest.mark.parametrize(
    ("packet", "want"),
    [(_tcp_packet("10.77.0.250", 179, 40000, 46), ("10.77.0.250", 46, False)),
     (_tcp_packet("10.77.0.11", 40000, 179, 0, 0x10), ("10.77.0.11", 0, False)),
     (_tcp_packet("10.77.0.250", 179, 40000, 0, 0x11), ("10.77.0.250", 0, True)),
     (_tcp_packet("10.77.0.250", 179, 40000, 0, 0x04), ("10.77.0.250", 0, True)),
     (_tcp_packet("10.77.0.250", 6443, 40000, 10), None),
     (b"\x45\x00", None),
     (b"\x60" + bytes(40), None)],
)  # fmt: skip
def test_bgp_segments(mon: ModuleType, packet: bytes, want: tuple[str, int, bool] | None) -> None:
    seg = mon.parse_bgp_segment(packet)
    assert (None if seg is None else (seg.src, seg.payload, seg.closing)) == want


STATUS = "Name:\tgobgpd\nVmPeak:\t  1000 kB\nVmHWM:\t   26000 kB\nVmRSS:\t   24500 kB\n"


@pytest.mark.parametrize(("key", "want"), [("VmRSS", 24500), ("VmHWM", 26000)])
def test_status_memory(mon: ModuleType, key: str, want: int) -> None:
    assert mon.parse_status_kib(STATUS, key) == want


def test_status_without_the_key(mon: ModuleType) -> None:
    with pytest.raises(KeyError, match="VmRSS"):
        mon.parse_status_kib("Name:\tx\n", "VmRSS")


@pytest.mark.parametrize("name", ["python", "a (b) c", "x) 1 2 3"])
def test_stat_cpu_ticks_whatever_the_name(mon: ModuleType, name: str) -> None:
    rest = "S 1 1 1 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 1 0 5 100 10"
    assert mon.parse_stat_ticks(f"123 ({name}) {rest}") == 281


def test_own_cpu_time_is_read(mon: ModuleType) -> None:
    import os

    assert mon.cpu_s(os.getpid()) > 0


# --- the report -----------------------------------------------------------------------------


def _run(bench: ModuleType, install: float, withdraw: float) -> object:
    keys = ("peer_api_s", "first_wire_s", "last_wire_s", "wire_kib_s", "first_rib_s",
            "all_rib_s", "first_kernel_s", "cpu_agent_s", "cpu_agent_gobgpd_s",
            "cpu_peer_gobgpd_s")  # fmt: skip
    wkeys = ("fin_wire_s", "first_rib_s", "all_rib_s", "first_kernel_s", "cpu_agent_s",
             "cpu_agent_gobgpd_s")  # fmt: skip
    return bench.Run(
        install={"total_s": install, **dict.fromkeys(keys, 0.1)},
        withdraw={"total_s": withdraw, **dict.fromkeys(wkeys, math.nan)},
        memory_kib={"agent": (100 * 1024, 110 * 1024), "agent_gobgpd": (20480, 20480),
                    "peer_gobgpd": (10240, 10240)},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("installs", "withdraws", "missed"),
    [([0.5, 0.9, 0.7], [0.3, 0.4, 0.5], []),
     ([0.5, 2.5, 0.7], [0.3, 0.4, 0.5], ["install_s"]),
     ([0.5], [2.1], ["withdraw_s"])],
)  # fmt: skip
def test_the_bar_holds_for_the_worst_run(
    bench: ModuleType, installs: list[float], withdraws: list[float], missed: list[str]
) -> None:
    runs = [_run(bench, i, w) for i, w in zip(installs, withdraws, strict=True)]
    idle = {"agent": (90 * 1024, 0), "agent_gobgpd": (10240, 0), "peer_gobgpd": (10240, 0)}
    r = bench.aggregate(runs, idle)
    assert r["install_total_median_s"] == sorted(installs)[len(installs) // 2]
    assert r["install_total_worst_s"] == max(installs)
    assert bench.missed(r) == missed
    lines = bench.table(r, 1000)
    assert len(lines) == 15 and all(line.count("|") == 4 for line in lines)
    assert ("**MISSED**" in lines[2]) == ("install_s" in missed)
    assert "90.0 → 100.0 / 10.0 → 20.0 / 10.0 → 10.0 MiB" in "\n".join(lines)
