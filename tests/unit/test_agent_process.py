"""The real `python -m kube_router` process: healthy against the lab server, stops on signals."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from kube_router.lab.apiserver import LabServer


async def _healthy(url: str, proc: asyncio.subprocess.Process, timeout: float = 30) -> None:
    async def loop() -> None:
        async with aiohttp.ClientSession() as s:
            while proc.returncode is None:
                try:
                    async with s.get(url) as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)

    await asyncio.wait_for(loop(), timeout)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_agent_process_stops_cleanly_on_signal(
    lab: LabServer, tmp_path: Path, unused_tcp_port: int, sig: signal.Signals
) -> None:
    lab.store.create(
        "nodes",
        {
            "metadata": {"name": "n1"},
            "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]},
        },
    )
    kubeconfig = tmp_path / "kubeconfig"
    lab.write_kubeconfig(kubeconfig)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kube_router",
        f"--kubeconfig={kubeconfig}",
        "--hostname-override=n1",
        "--health-addr=127.0.0.1",
        f"--health-port={unused_tcp_port}",
        "--run-firewall=false",  # the host namespace is not ours to firewall
        "--run-service-proxy=false",  # nor to proxy
        "-v",
        "1",
        stderr=asyncio.subprocess.PIPE,
        env={"KUBE_ROUTER_ALLOW_NONROOT": "1", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    try:
        await _healthy(f"http://127.0.0.1:{unused_tcp_port}/healthz", proc)
        for _ in range(200):  # /healthz answers before the informers finish their lists
            if lab.watch_count >= 6:  # one watch per informer
                break
            await asyncio.sleep(0.05)
        assert lab.watch_count >= 6
        proc.send_signal(sig)
        rc = await asyncio.wait_for(proc.wait(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.stderr is not None
    log = (await proc.stderr.read()).decode()
    assert rc == 0, log
    assert "informer caches synced" in log and "stopped" in log
    assert "Traceback" not in log
