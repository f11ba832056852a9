"""The proxy's metrics: IPVS counters per Service scraped over HTTP, named as upstream does."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kube_router.controllers.proxy import metrics as pm
from kube_router.controllers.proxy.compile import Kind, VirtualService
from kube_router.dataplane import ipvs
from kube_router.dataplane.ipvs import Service, ServiceKey, Stats, Transaction
from kube_router.dataplane.ipvs_fake import FakeIPVS
from kube_router.metrics import Metrics, MetricsServer, go_float, write_family

WEB = ServiceKey.of("10.96.0.10", "tcp", 80)
WEB_V6 = ServiceKey.of("fd00::10", "tcp", 80)
WEB_NODEPORT = ServiceKey.of("192.168.1.10", "tcp", 30080)
WEB_OTHER_NODE_IP = ServiceKey.of("172.17.0.1", "tcp", 30080)  # --nodeport-bindon-all-ip
WEB_EXTERNAL = ServiceKey.of("203.0.113.7", "tcp", 80)
WEB_LB = ServiceKey.of("198.51.100.7", "tcp", 80)
DNS = ServiceKey.of("10.96.0.53", "udp", 53)
SCTP = ServiceKey.of("10.96.0.70", "sctp", 7000)
FOREIGN = ServiceKey.of("10.0.0.9", "tcp", 22)  # not made by kube-router
DSR = ServiceKey.mark(0x3E8)
NODE_IP = "192.168.1.10"

STATS = Stats(
    conns=12,
    packets_in=1234567,
    packets_out=20,
    bytes_in=3000,
    bytes_out=4000,
    cps=5,
    pps_in=6,
    pps_out=7,
    bps_in=8,
    bps_out=9,
)

SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def vs(key: ServiceKey, owner: str, kind: Kind) -> VirtualService:
    return VirtualService(Service(key), {}, owner, kind)


VIRTUAL = {
    WEB: vs(WEB, "default/web:http", "cluster"),
    WEB_V6: vs(WEB_V6, "default/web:http", "cluster"),
    WEB_NODEPORT: vs(WEB_NODEPORT, "default/web:http", "nodeport"),
    WEB_OTHER_NODE_IP: vs(WEB_OTHER_NODE_IP, "default/web:http", "nodeport"),
    WEB_EXTERNAL: vs(WEB_EXTERNAL, "default/web:http", "external"),
    WEB_LB: vs(WEB_LB, "default/web:http", "loadbalancer"),
    DNS: vs(DNS, "kube-system/kube-dns:53", "cluster"),
    SCTP: vs(SCTP, "default/sig:7000", "cluster"),
    DSR: vs(DSR, "default/dsr:http", "external"),
}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], str]:
    """Every sample line: (name, labels) -> value as written."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        m = SAMPLE.match(line)
        assert m, line
        pairs = re.findall(r'(\w+)="([^"]*)"', m["labels"] or "")
        out[(m["name"], frozenset(pairs))] = m["value"]
    return out


def labels(key: ServiceKey, namespace: str, name: str, protocol: str) -> frozenset[tuple[str, str]]:
    return frozenset(
        {
            ("svc_namespace", namespace),
            ("service_name", name),
            ("service_vip", key.address),
            ("protocol", protocol),
            ("port", str(key.port)),
        }
    )


async def ipvs_with_stats() -> FakeIPVS:
    fake = FakeIPVS()
    tx = Transaction()
    for key in (WEB, WEB_V6, WEB_NODEPORT, WEB_OTHER_NODE_IP, DNS, SCTP, FOREIGN, DSR):
        tx.add_service(Service(key))
    await fake.apply(tx)
    for state in fake.services.values():
        state.stats = STATS
    return fake


class FailingIPVS:
    async def service_stats(self) -> dict[ServiceKey, tuple[Service, Stats]]:
        raise ipvs.IPVSError("IPVS is not available (no ip_vs module?)")


@pytest.fixture
async def served(unused_tcp_port: int) -> AsyncIterator[tuple[Metrics, str]]:
    m = Metrics()
    server = MetricsServer(m, "127.0.0.1", unused_tcp_port, "/metrics")
    await server.start()
    try:
        yield m, f"http://127.0.0.1:{unused_tcp_port}/metrics"
    finally:
        await server.stop()


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200
        return await r.text()


def test_owners_as_upstream_maps_them() -> None:
    owners = pm.owners_of(VIRTUAL, {NODE_IP})
    assert owners == {
        WEB: ("default", "web"),
        WEB_V6: ("default", "web"),
        WEB_NODEPORT: ("default", "web"),  # on the node IP only
        WEB_EXTERNAL: ("default", "web"),
        WEB_LB: ("default", "web"),
        DNS: ("kube-system", "kube-dns"),
        SCTP: ("default", "sig"),
    }


async def test_service_series_scraped_over_http(served: tuple[Metrics, str]) -> None:
    m, url = served
    fake = await ipvs_with_stats()
    pm.ProxyMetrics(m, fake, pm.owners_of(VIRTUAL, {NODE_IP}))
    text = await scrape(url)
    got = samples(text)
    web = labels(WEB, "default", "web", "tcp")
    expected = {
        "service_total_connections": "12",
        "service_packets_in": "1.234567e+06",  # Go's number format
        "service_packets_out": "20",
        "service_bytes_in": "3000",
        "service_bytes_out": "4000",
        "service_cps": "5",
        "service_pps_in": "6",
        "service_pps_out": "7",
        "service_bps_in": "8",
        "service_bps_out": "9",
    }
    for name, value in expected.items():
        assert got[(f"kube_router_{name}", web)] == value, name
    series = {lbl for name, lbl in got if name == "kube_router_service_cps"}
    assert series == {
        web,
        labels(WEB_V6, "default", "web", "tcp"),
        labels(WEB_NODEPORT, "default", "web", "tcp"),
        labels(DNS, "kube-system", "kube-dns", "udp"),
        labels(SCTP, "default", "sig", "sctp"),
    }  # not FOREIGN, not DSR's fwmark service, not the NodePort on another address
    assert got[("kube_router_controller_ipvs_services", frozenset())] == "8"
    assert got[("kube_router_controller_ipvs_metrics_export_time_count", frozenset())] == "1.0"
    assert got[("kube_router_controller_ipvs_services_sync_time_count", frozenset())] == "0.0"


@pytest.mark.parametrize(
    ("family", "kind"),
    [
        ("service_total_connections", "counter"),
        ("service_packets_in", "counter"),
        ("service_bytes_out", "counter"),
        ("service_pps_in", "gauge"),
        ("service_cps", "gauge"),
        ("service_bps_out", "gauge"),
        ("controller_ipvs_services", "gauge"),
        ("controller_ipvs_services_sync_time", "histogram"),
        ("controller_ipvs_metrics_export_time", "histogram"),
    ],
)
async def test_families_typed_and_named_as_upstream(
    served: tuple[Metrics, str], family: str, kind: str
) -> None:
    m, url = served
    pm.ProxyMetrics(m, await ipvs_with_stats(), pm.owners_of(VIRTUAL, {NODE_IP}))
    text = await scrape(url)
    assert f"# TYPE kube_router_{family} {kind}\n" in text  # no _total added to counters
    parsed = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert parsed[f"kube_router_{family}"] == kind


async def test_owners_are_read_on_every_scrape(served: tuple[Metrics, str]) -> None:
    m, url = served
    current: dict[ServiceKey, pm.Owner] = {}
    pm.ProxyMetrics(m, await ipvs_with_stats(), lambda: current)
    assert "kube_router_service_" not in await scrape(url)  # a family without series is left out
    current[DNS] = ("kube-system", "kube-dns")
    got = samples(await scrape(url))
    assert got[("kube_router_service_bytes_in", labels(DNS, "kube-system", "kube-dns", "udp"))]
    assert got[("kube_router_controller_ipvs_metrics_export_time_count", frozenset())] == "2.0"


async def test_ipvs_failure_is_logged_and_the_rest_served(
    served: tuple[Metrics, str], caplog: pytest.LogCaptureFixture
) -> None:
    m, url = served
    pm.ProxyMetrics(m, FailingIPVS(), {})
    with caplog.at_level(logging.ERROR, logger=pm.__name__):
        text = await scrape(url)
    assert "kube_router_service_" not in text
    assert "kube_router_controller_ipvs_services " not in text
    assert "kube_router_controller_ipvs_metrics_export_time_count 1.0" in text
    assert "kube_router_build_info" in text
    assert any("no ip_vs module" in r.getMessage() for r in caplog.records)


async def test_sync_time_and_close(served: tuple[Metrics, str]) -> None:
    m, url = served
    proxy = pm.ProxyMetrics(m, await ipvs_with_stats(), {})
    with proxy.timed_sync():
        pass
    with pytest.raises(RuntimeError), proxy.timed_sync():
        raise RuntimeError("a failed sync is timed too")
    assert "kube_router_controller_ipvs_services_sync_time_count 2.0" in await scrape(url)
    proxy.close()
    assert "ipvs" not in await scrape(url)
    pm.ProxyMetrics(m, await ipvs_with_stats(), {})  # registers again after a restart


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (5, "5"),
        (999999, "999999"),
        (1000000, "1e+06"),
        (1234567, "1.234567e+06"),
        (2**53 + 1, "9.007199254740992e+15"),  # a float64, as Go holds it
        (0.5, "0.5"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (-3, "-3"),
        (float("inf"), "+Inf"),
        (float("nan"), "NaN"),
    ],
)
def test_numbers_as_go_writes_them(value: float, text: str) -> None:
    assert go_float(value) == text


@pytest.mark.parametrize(
    ("owner", "expected"),
    [
        ("default/web:http", ("default", "web")),
        ("default/web:8080", ("default", "web")),
        ("kube-system/kube-dns:dns-tcp", ("kube-system", "kube-dns")),
    ],
)
def test_split_owner(owner: str, expected: pm.Owner) -> None:
    assert pm.split_owner(owner) == expected


def test_label_values_are_escaped() -> None:
    text = write_family("x", 'a "help"\\', "gauge", [({"l": 'q"b\\n\n'}, 1)])
    assert text == (
        '# HELP kube_router_x a "help"\\\\\n# TYPE kube_router_x gauge\n'
        'kube_router_x{l="q\\"b\\\\n\\n"} 1\n'
    )
