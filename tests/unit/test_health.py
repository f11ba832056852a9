"""Heartbeat health: upstream's TTL rule, checked with an injected clock and over real HTTP."""

from __future__ import annotations

import aiohttp
import pytest

from kube_router import health


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("first_beat_after", "silence", "healthy"),
    [
        (2.0, 10.0 + 2.0 + 1.5, True),  # exactly at the limit: still healthy
        (2.0, 10.0 + 2.0 + 1.6, False),  # past period + ttl + 1.5 s
        (0.0, 11.4, True),
        (0.0, 11.6, False),
        (30.0, 41.0, True),  # a slow first sync widens the window
    ],
)
def test_ttl_rule(first_beat_after: float, silence: float, healthy: bool) -> None:
    clock = Clock()
    checker = health.HealthChecker(clock)
    checker.register("C", sync_period=10.0)
    clock.now += first_beat_after
    checker.beat("C")
    clock.now += silence
    assert checker.check() is healthy


def test_components_start_alive_and_fail_without_a_beat() -> None:
    clock = Clock()
    checker = health.HealthChecker(clock)
    checker.register("A", 5.0)
    checker.register("B", 60.0)
    assert checker.check()
    clock.now += 6.6
    assert checker.unhealthy_components() == ["A"]
    assert not checker.check()
    checker.beat("A")
    assert checker.check()


def test_beat_from_unknown_component_is_an_error() -> None:
    with pytest.raises(KeyError):
        health.HealthChecker().beat("nobody")


async def test_healthz_over_http(unused_tcp_port: int) -> None:
    clock = Clock()
    checker = health.HealthChecker(clock)
    checker.register("A", 1.0)
    server = health.HealthServer(checker, "127.0.0.1", unused_tcp_port)
    await server.start()
    try:
        url = f"http://127.0.0.1:{unused_tcp_port}/healthz"
        async with aiohttp.ClientSession() as s:
            async with s.get(url) as r:
                assert (r.status, await r.text()) == (200, "OK\n")
            clock.now += 10
            async with s.get(url) as r:
                assert (r.status, await r.text()) == (500, "Unhealthy")
    finally:
        await server.stop()


async def test_health_port_zero_serves_nothing() -> None:
    server = health.HealthServer(health.HealthChecker(), "127.0.0.1", 0)
    await server.start()
    await server.stop()


async def test_bind_failure_names_the_address(unused_tcp_port: int) -> None:
    first = health.HealthServer(health.HealthChecker(), "127.0.0.1", unused_tcp_port)
    await first.start()
    try:
        second = health.HealthServer(health.HealthChecker(), "127.0.0.1", unused_tcp_port)
        with pytest.raises(OSError, match=f"127.0.0.1:{unused_tcp_port}"):
            await second.start()
    finally:
        await first.stop()
