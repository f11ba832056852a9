"""Running the lab API server standalone: `serve()` and `python -m kube_router_lab.apiserver`."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from kube_router_lab.apiserver import serve


async def test_serve_writes_kubeconfig_and_stops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = tmp_path / "kc.yaml"
    stop = asyncio.Event()
    task = asyncio.create_task(serve("127.0.0.1", 0, str(kubeconfig), stop=stop))
    for _ in range(200):
        if kubeconfig.exists():
            break
        await asyncio.sleep(0.01)
    config = yaml.safe_load(kubeconfig.read_text())
    url = config["clusters"][0]["cluster"]["server"]
    assert config["current-context"] == "lab"
    async with aiohttp.ClientSession() as http, http.get(f"{url}/api/v1/namespaces") as resp:
        names = [n["metadata"]["name"] for n in (await resp.json())["items"]]
    assert names == ["default", "kube-node-lease", "kube-public", "kube-system"]
    stop.set()
    await asyncio.wait_for(task, 5)
    assert capsys.readouterr().out.strip() == url


async def test_module_entry_point_serves_until_sigterm(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kc.yaml"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kube_router_lab.apiserver",
        "--port",
        "0",
        "--kubeconfig",
        str(kubeconfig),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        assert url.startswith("http://127.0.0.1:")
        assert yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"] == url
        async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as resp:
            assert await resp.text() == "ok"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
