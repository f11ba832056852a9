"""GoBGPDaemon: a real gobgpd as a child (API on a unix socket in tmp_path, no BGP listener)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
from pathlib import Path

import pytest

from kube_router.bgp.daemon import (
    DaemonConfig,
    DaemonError,
    GoBGPDaemon,
    GoBGPVersionError,
    api_hosts,
    parse_version,
)
from kube_router.bgp.daemon_log import format_line
from kube_router.bgp.grpc_engine import GrpcEngine
from kube_router.bgp.model import GlobalSpec, PeerSpec

HAVE_GOBGPD = shutil.which("gobgpd") is not None
needs_gobgpd = pytest.mark.skipif(not HAVE_GOBGPD, reason="gobgpd not installed")
GLOBAL = GlobalSpec(asn=64512, router_id="192.168.77.1", listen_port=-1)
SOCK = "/run/x/gobgpd.sock"


@pytest.mark.parametrize(
    ("address", "port", "hosts"),
    [
        ("127.0.0.1", 50051, ["127.0.0.1:50051"]),
        ("", 50051, ["127.0.0.1:50051"]),
        ("not-an-ip", 50051, ["127.0.0.1:50051"]),
        ("10.0.0.5", 50051, ["127.0.0.1:50051", "10.0.0.5:50051"]),
        ("fd00::5", 6000, ["127.0.0.1:6000", "[fd00::5]:6000"]),
        ("::1", 50051, ["[::1]:50051"]),
        ("0.0.0.0", 50051, ["0.0.0.0:50051"]),
        ("10.0.0.5", 0, []),
    ],
)
def test_api_hosts(address: str, port: int, hosts: list[str]) -> None:
    config = DaemonConfig(socket_path=SOCK, admin_address=address, admin_port=port)
    assert api_hosts(config) == [f"unix://{SOCK}", *hosts]


@pytest.mark.parametrize(
    ("output", "version"),
    [("gobgpd version 3.10.0\n", (3, 10, 0)), ("gobgpd version v4.8.0", (4, 8, 0))],
)
def test_parse_version(output: str, version: tuple[int, int, int]) -> None:
    assert parse_version(output) == version


def test_parse_version_rejects_garbage() -> None:
    with pytest.raises(GoBGPVersionError, match="cannot read"):
        parse_version("gobgpd: unknown flag")


@pytest.mark.parametrize(
    ("line", "level", "text"),
    [
        ('{"level":"info","msg":"Add a peer","Key":"10.0.0.2","time":"t"}', logging.DEBUG,
         "Add a peer Key=10.0.0.2"),
        ('{"level":"warning","msg":"hold timer expired"}', logging.WARNING, "hold timer expired"),
        ("panic: boom", logging.DEBUG, "panic: boom"),
    ],
)  # fmt: skip
def test_format_line(line: str, level: int, text: str) -> None:
    assert format_line(line) == (level, text)


def _fake_binary(tmp_path: Path, version: str, exit_code: int = 0) -> str:
    script = tmp_path / "gobgpd"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = --version ]; then echo "gobgpd version {version}"; exit 0; fi\n'
        'echo \'{"level":"fatal","msg":"failed to listen grpc port"}\' >&2\n'
        f"exit {exit_code}\n"
    )
    script.chmod(0o755)
    return str(script)


async def test_wrong_version_is_refused(tmp_path: Path) -> None:
    config = DaemonConfig(str(tmp_path / "s.sock"), binary=_fake_binary(tmp_path, "4.8.0"))
    with pytest.raises(GoBGPVersionError, match=r"4\.8\.0.*3\.10"):
        await GoBGPDaemon(config).start()


async def test_exit_at_start_says_why(tmp_path: Path) -> None:
    binary = _fake_binary(tmp_path, "3.10.0", exit_code=1)
    config = DaemonConfig(str(tmp_path / "s.sock"), binary=binary, admin_port=0)
    with pytest.raises(DaemonError, match=r"exited at start.*failed to listen grpc port"):
        await GoBGPDaemon(config).start()


def _config(tmp_path: Path, admin_port: int = 0) -> DaemonConfig:
    return DaemonConfig(socket_path=str(tmp_path / "run" / "gobgpd.sock"), admin_port=admin_port)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@needs_gobgpd
async def test_restart_adopt_and_stop(tmp_path: Path) -> None:
    """Kill → restarted and on_restart called; keep_running → adopted with its state; stop."""
    restarted = asyncio.Event()

    async def on_restart() -> None:
        restarted.set()

    config = _config(tmp_path)
    daemon = GoBGPDaemon(config, on_restart=on_restart)
    assert await daemon.start() is False
    first = daemon.pid
    assert first is not None and config.pid_file.read_text().strip() == str(first)
    engine = GrpcEngine(daemon.target)
    try:
        await engine.ensure_global(GLOBAL)
        watch = engine.watch_peers()
        ended = asyncio.ensure_future(_drain(watch))
        os.kill(first, signal.SIGKILL)
        await asyncio.wait_for(ended, 10)  # the stream ends when gobgpd goes
        await asyncio.wait_for(restarted.wait(), 15)
        assert daemon.restarts == 1 and daemon.pid not in (None, first)
        assert await engine.get_global() is None  # a new gobgpd holds nothing
        await engine.ensure_global(GLOBAL)
        await engine.sync_peers([PeerSpec("192.168.77.2", 64512)])
        await daemon.stop(keep_running=True)
        kept = daemon.pid

        again = GoBGPDaemon(config)
        assert await again.start() is True
        assert again.pid == kept and again.adopted
        state = await engine.read_state()
        assert state.global_ is not None and list(state.peers) == ["192.168.77.2"]
        await again.stop(keep_running=False)
        assert not again.alive()
        assert not config.pid_file.exists() and not Path(config.socket_path).exists()
    finally:
        await engine.close()
        await daemon.stop(keep_running=False)


@needs_gobgpd
async def test_adopted_gobgpd_that_dies_is_replaced(tmp_path: Path) -> None:
    config = _config(tmp_path)
    first = GoBGPDaemon(config)
    await first.start()
    await first.stop(keep_running=True)
    restarted = asyncio.Event()

    async def on_restart() -> None:
        restarted.set()

    second = GoBGPDaemon(config, on_restart=on_restart)
    try:
        assert await second.start() is True
        assert second.pid is not None
        os.kill(second.pid, signal.SIGKILL)
        await asyncio.wait_for(restarted.wait(), 15)
        assert second.pid != first.pid and not second.adopted
    finally:
        await second.stop(keep_running=False)


@needs_gobgpd
async def test_stale_pid_file_starts_a_new_gobgpd(tmp_path: Path) -> None:
    config = _config(tmp_path)
    config.run_dir.mkdir(parents=True)
    config.pid_file.write_text(f"{os.getpid()}\n")  # alive, but not a gobgpd
    Path(config.socket_path).touch()  # a stale socket file gobgpd could not bind over
    daemon = GoBGPDaemon(config)
    try:
        assert await daemon.start() is False
        assert daemon.pid != os.getpid()
    finally:
        await daemon.stop(keep_running=False)


@needs_gobgpd
async def test_admin_api_on_loopback(tmp_path: Path) -> None:
    port = _free_port()
    daemon = GoBGPDaemon(_config(tmp_path, admin_port=port))
    await daemon.start()
    admin = GrpcEngine(f"127.0.0.1:{port}")
    try:
        await admin.wait_ready(5)
        await admin.ensure_global(GLOBAL)
        assert await admin.get_global() is not None
    finally:
        await admin.close()
        await daemon.stop(keep_running=False)


@needs_gobgpd
async def test_gobgpd_log_reaches_the_agent_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kube_router.bgp.daemon")
    daemon = GoBGPDaemon(_config(tmp_path))
    await daemon.start()
    engine = GrpcEngine(daemon.target)
    try:
        await engine.ensure_global(GLOBAL)
        await engine.sync_peers([PeerSpec("192.168.77.2", 64512, password="hunter2")])
        await asyncio.sleep(0.5)
    finally:
        await engine.close()
        await daemon.stop(keep_running=False)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "gobgpd: Add a peer configuration" in text
    assert "hunter2" not in text


async def _drain(stream: object) -> None:
    async for _ in stream:  # type: ignore[attr-defined]
        pass
