"""Metrics: upstream names on our registry, served over HTTP."""

from __future__ import annotations

import aiohttp

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
