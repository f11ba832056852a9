"""Metrics: upstream names on our registry, served over HTTP."""

from __future__ import annotations

import logging

import aiohttp
import pytest
from prometheus_client import Counter

from kube_router import metrics
from kube_router.version import PYTHON_VERSION, VERSION


def test_build_info_and_process_metrics() -> None:
    text = metrics.Metrics().render().decode()
    assert f'kube_router_build_info{{goversion="{PYTHON_VERSION}",version="{VERSION}"}} 1.0' in text
    assert "process_resident_memory_bytes" in text
    assert "python_info" in text
    assert "_created" not in text


async def test_served_on_the_configured_path(unused_tcp_port: int) -> None:
    m = metrics.Metrics()
    server = metrics.MetricsServer(m, "127.0.0.1", unused_tcp_port, "/custom")
    await server.start()
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{unused_tcp_port}/custom") as r:
                assert r.status == 200
                assert "kube_router_build_info" in await r.text()
            async with s.get(f"http://127.0.0.1:{unused_tcp_port}/metrics") as r:
                assert r.status == 404
        assert 'promhttp_metric_handler_requests_total{code="200"} 1.0' in m.render().decode()
    finally:
        await server.stop()


async def test_scrape_hooks_run_before_the_registry_renders(
    unused_tcp_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    m = metrics.Metrics()
    runs = Counter("hook_runs", "Runs of the hook", registry=m.registry)

    async def hook() -> bytes:
        runs.inc()
        return b"# TYPE extra_series counter\nextra_series 7\n"

    async def broken() -> bytes:
        raise RuntimeError("the kernel is away")

    async def removed() -> bytes:
        raise AssertionError("a removed hook ran")

    for h in (broken, hook, removed):
        m.add_scrape_hook(h)
    m.remove_scrape_hook(removed)
    server = metrics.MetricsServer(m, "127.0.0.1", unused_tcp_port, "/metrics")
    await server.start()
    try:
        url = f"http://127.0.0.1:{unused_tcp_port}/metrics"
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            assert r.status == 200
            text = await r.text()
    finally:
        await server.stop()
    assert text.endswith("# TYPE extra_series counter\nextra_series 7\n")
    assert "hook_runs_total 1.0" in text  # observed by the hook, shown in the same scrape
    assert "kube_router_build_info" in text
    (failed,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "broken" in failed.getMessage()
    assert failed.exc_info is not None
