"""Health-check NodePorts answered over real HTTP on loopback, as upstream answers them."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from kube_router.controllers.proxy import healthcheck
from kube_router.controllers.proxy.healthcheck import HealthCheckServers

LOOPBACK = "127.0.0.1"


@pytest.fixture
async def servers() -> AsyncIterator[HealthCheckServers]:
    hc = HealthCheckServers(LOOPBACK)
    try:
        yield hc
    finally:
        await hc.stop()


async def get(port: int, path: str = "/healthz", method: str = "GET") -> tuple[int, str, str]:
    url = f"http://{LOOPBACK}:{port}{path}"
    async with aiohttp.ClientSession() as s, s.request(method, url) as r:
        return r.status, await r.text(), r.headers.get("Content-Type", "")


async def refused(port: int) -> bool:
    try:
        await get(port)
    except aiohttp.ClientConnectionError:
        return True
    return False


@pytest.mark.parametrize(
    ("count", "status", "body"),
    [
        (0, 503, "No Service Endpoints Found\n"),
        (1, 200, "1 Service Endpoints found\n"),
        (200, 200, "200 Service Endpoints found\n"),
    ],
)
async def test_answer_over_http(
    servers: HealthCheckServers, unused_tcp_port: int, count: int, status: int, body: str
) -> None:
    assert healthcheck.answer(count) == (status, body)
    await servers.update({unused_tcp_port: ("default/web", count)})
    assert await get(unused_tcp_port) == (status, body, "text/plain; charset=utf-8")


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/healthz", 200),
        ("POST", "/healthz", 200),  # Go's mux matches any method
        ("GET", "/healthz?probe=1", 200),
        ("GET", "/", 404),
        ("GET", "/healthz/", 404),
        ("GET", "/metrics", 404),
    ],
)
async def test_only_healthz_answers(
    servers: HealthCheckServers, unused_tcp_port: int, method: str, path: str, status: int
) -> None:
    await servers.update({unused_tcp_port: ("default/web", 3)})
    got, body, _ = await get(unused_tcp_port, path, method)
    assert got == status
    assert body == ("3 Service Endpoints found\n" if status == 200 else "404 page not found\n")


async def test_head_answers_without_a_body(
    servers: HealthCheckServers, unused_tcp_port: int
) -> None:
    await servers.update({unused_tcp_port: ("default/web", 0)})
    assert await get(unused_tcp_port, method="HEAD") == (503, "", "text/plain; charset=utf-8")


async def test_counts_change_in_place_and_ports_come_and_go(
    servers: HealthCheckServers, unused_tcp_port_factory: Callable[[], int]
) -> None:
    a, b = unused_tcp_port_factory(), unused_tcp_port_factory()
    await servers.update({a: ("default/a", 2), b: ("default/b", 0), 0: ("default/none", 1)})
    assert servers.ports == {a, b}
    assert (await get(a))[:2] == (200, "2 Service Endpoints found\n")
    assert (await get(b))[0] == 503
    first = servers._servers[a]
    await servers.update({a: ("default/a", 0), b: ("default/b", 4)})
    assert servers._servers[a] is first  # the same server, not restarted
    assert (await get(a))[0] == 503
    assert (await get(b))[:2] == (200, "4 Service Endpoints found\n")
    await servers.update({b: ("default/b", 4)})
    assert servers.ports == {b}
    assert await refused(a)
    await servers.stop()
    assert servers.ports == set()
    assert await refused(b)


async def test_a_port_in_use_is_logged_once_and_retried(
    servers: HealthCheckServers,
    unused_tcp_port_factory: Callable[[], int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    busy, free = unused_tcp_port_factory(), unused_tcp_port_factory()
    holder = socket.socket()
    holder.bind((LOOPBACK, busy))
    holder.listen()
    wanted = {busy: ("default/blocked", 1), free: ("default/fine", 1)}
    with caplog.at_level(logging.INFO, logger=healthcheck.__name__):
        try:
            for _ in range(3):
                await servers.update(wanted)  # never raises
            assert servers.ports == {free}
            assert servers.failed == {busy: "default/blocked"}
            errors = [r for r in caplog.records if r.levelno == logging.ERROR]
            assert len(errors) == 1
            assert "default/blocked" in errors[0].getMessage()
            assert str(busy) in errors[0].getMessage()
        finally:
            holder.close()
        await servers.update(wanted)
    assert servers.ports == {busy, free}
    assert servers.failed == {}
    assert (await get(busy))[0] == 200


async def test_a_failed_port_no_longer_wanted_is_forgotten(
    servers: HealthCheckServers, unused_tcp_port: int
) -> None:
    holder = socket.socket()
    holder.bind((LOOPBACK, unused_tcp_port))
    holder.listen()
    try:
        await servers.update({unused_tcp_port: ("default/blocked", 1)})
        assert servers.failed == {unused_tcp_port: "default/blocked"}
        await servers.update({})
        assert servers.failed == {}
    finally:
        holder.close()
