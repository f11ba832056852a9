"""``GoBGPDaemon``: gobgpd 3.10 as the agent's child process, supervised.

    daemon = GoBGPDaemon(DaemonConfig(admin_address="127.0.0.1", admin_port=50051),
                         on_restart=controller.resync)      # async callback, no arguments
    adopted = await daemon.start()       # True: a gobgpd left running by the previous agent
    engine = GrpcEngine(daemon.target)   # "unix:///run/kube-router/gobgpd.sock"
    ...
    await daemon.stop(keep_running=graceful_restart)

- Runs ``gobgpd --api-hosts unix://<socket>[,<admin>:<port>] --pprof-disable -l <level>``
  (no config file: gobgpd idles until StartBgp). The admin API follows upstream's
  ``--gobgp-admin-address`` / ``--gobgp-admin-port``: empty or invalid address → 127.0.0.1; a
  specific non-loopback address is bound in addition to 127.0.0.1 (0.0.0.0 / :: alone, as they
  cover loopback); port 0 → no TCP API. The agent always talks over its private unix socket.
- Checks ``gobgpd --version`` is 3.10.x (``GoBGPVersionError`` otherwise) and waits until the
  API answers (``DaemonError`` with gobgpd's last log lines if it does not).
- Writes ``<socket dir>/gobgpd.pid``. ``start()`` adopts a gobgpd named by that file when it is
  alive, runs on our socket and answers: no new process, and gobgpd keeps its sessions and
  routes for the controller to reconcile (graceful restart across an agent restart).
- Supervises: when gobgpd dies it is logged, started again with exponential backoff, and
  ``on_restart`` is awaited so the controller pushes all state again. An adopted gobgpd is
  supervised by polling its pid.
- gobgpd's JSON log goes to ``<socket dir>/gobgpd.log`` (a file, so a gobgpd left running
  outlives the agent's pipes); the daemon tails it into this module's logger: warnings and
  errors at WARNING, the rest at DEBUG.
- ``stop(keep_running=True)`` leaves gobgpd running for the next agent to adopt;
  ``stop(keep_running=False)`` stops BGP (StopBgp, so peers see a clean close) and terminates it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from kube_router.bgp.daemon_log import LogTail
from kube_router.bgp.engine import EngineError
from kube_router.bgp.grpc_engine import GrpcEngine

log = logging.getLogger(__name__)

DEFAULT_SOCKET: Final = "/run/kube-router/gobgpd.sock"
DEFAULT_ADMIN_PORT: Final = 50051
LOOPBACK_V4: Final = "127.0.0.1"
SUPPORTED_VERSION: Final = (3, 10)
POLL_S: Final = 0.25
TERM_GRACE_S: Final = 5.0
BACKOFF_MIN_S: Final = 0.5
BACKOFF_MAX_S: Final = 30.0
#: A gobgpd that ran this long resets the backoff.
STABLE_RUN_S: Final = 60.0
ADOPT_PROBE_S: Final = 2.0


class DaemonError(Exception):
    """gobgpd could not be started, adopted or stopped."""


class GoBGPVersionError(DaemonError):
    """The gobgpd binary is not the 3.10 release whose API the agent speaks."""


@dataclass(frozen=True)
class DaemonConfig:
    socket_path: str = DEFAULT_SOCKET
    admin_address: str = LOOPBACK_V4  # --gobgp-admin-address
    admin_port: int = DEFAULT_ADMIN_PORT  # --gobgp-admin-port; 0: no TCP API
    binary: str = "gobgpd"
    #: Run gobgpd through this (tests: ("ip", "netns", "exec", "<ns>")); must exec gobgpd.
    command_prefix: tuple[str, ...] = ()
    log_level: str = "info"
    start_timeout_s: float = 15.0

    @property
    def run_dir(self) -> Path:
        return Path(self.socket_path).parent

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "gobgpd.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "gobgpd.log"


def api_hosts(config: DaemonConfig) -> list[str]:
    """The ``--api-hosts`` entries: our socket, then the admin API (upstream's rules)."""
    hosts = [f"unix://{config.socket_path}"]
    if config.admin_port == 0:
        return hosts
    try:
        address = ipaddress.ip_address(config.admin_address.strip())
    except ValueError:
        address = ipaddress.ip_address(LOOPBACK_V4)
    if not address.is_loopback and not address.is_unspecified:
        hosts.append(f"{LOOPBACK_V4}:{config.admin_port}")
    host = f"[{address}]" if address.version == 6 else str(address)
    hosts.append(f"{host}:{config.admin_port}")
    return hosts


def parse_version(output: str) -> tuple[int, int, int]:
    """``"gobgpd version 3.10.0"`` → (3, 10, 0)."""
    for word in output.split():
        parts = word.lstrip("v").split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            return int(parts[0]), int(parts[1]), int(parts[2])
    raise GoBGPVersionError(f"cannot read a version in gobgpd --version output {output!r}")


def check_version(config: DaemonConfig) -> tuple[int, int, int]:
    argv = [*config.command_prefix, config.binary, "--version"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DaemonError(f"cannot run {' '.join(argv)}: {err}") from err
    version = parse_version(proc.stdout + proc.stderr)
    if version[:2] != SUPPORTED_VERSION:
        want = ".".join(map(str, SUPPORTED_VERSION))
        raise GoBGPVersionError(
            f"{config.binary} is version {'.'.join(map(str, version))}; this agent speaks "
            f"gobgpd {want}.x's gRPC API (install Debian's gobgpd {want})"
        )
    return version


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[0]


def is_our_gobgpd(pid: int, config: DaemonConfig) -> bool:
    """The process runs gobgpd with our socket in its API hosts (not a reused pid)."""
    argv = _cmdline(pid)
    if _state(pid) in ("", "Z", "X") or not argv:
        return False
    return Path(argv[0]).name == Path(config.binary).name and any(
        f"unix://{config.socket_path}" in a for a in argv
    )


class GoBGPDaemon:
    def __init__(
        self,
        config: DaemonConfig | None = None,
        on_restart: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config or DaemonConfig()
        self.on_restart = on_restart
        self.restarts = 0
        self.adopted = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._started_at = 0.0
        self._supervisor: asyncio.Task[None] | None = None
        self._tail = LogTail(self.config.log_file, log)

    @property
    def target(self) -> str:
        """The gRPC target of the agent's private socket."""
        return f"unix://{self.config.socket_path}"

    @property
    def pid(self) -> int | None:
        return self._pid

    def alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self._pid is not None and is_our_gobgpd(self._pid, self.config)

    async def start(self) -> bool:
        """Adopt a running gobgpd of ours or start one; True when adopted. Then supervise."""
        check_version(self.config)
        self.config.run_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.adopted = await self._adopt()
        if not self.adopted:
            await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="gobgpd-supervisor")
        return self.adopted

    async def _adopt(self) -> bool:
        try:
            pid = int(self.config.pid_file.read_text().strip())
        except (OSError, ValueError):
            return False
        if not is_our_gobgpd(pid, self.config):
            return False
        self._pid, self._proc = pid, None
        try:
            await self._wait_ready(ADOPT_PROBE_S)
        except DaemonError as err:
            log.warning("gobgpd pid %d does not answer (%s); replacing it", pid, err)
            await self._terminate()
            return False
        log.info("adopted gobgpd pid %d on %s", pid, self.config.socket_path)
        self._tail.start(from_end=True)
        return True

    async def _spawn(self) -> None:
        self._tail.stop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.config.socket_path)  # stale: gobgpd cannot bind over it
        self._tail.truncate()
        argv = [
            *self.config.command_prefix,
            self.config.binary,
            "--api-hosts",
            ",".join(api_hosts(self.config)),
            "--pprof-disable",
            "-l",
            self.config.log_level,
        ]
        with open(self.config.log_file, "ab") as out:  # O_APPEND: truncation is safe
            try:
                self._proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
                )
            except OSError as err:
                raise DaemonError(f"cannot start {' '.join(argv)}: {err}") from err
        self._pid = self._proc.pid
        self._started_at = asyncio.get_running_loop().time()
        self.config.pid_file.write_text(f"{self._pid}\n")
        self._tail.start(from_end=False)
        log.info("started gobgpd pid %d: %s", self._pid, " ".join(argv))
        await self._wait_ready(self.config.start_timeout_s)

    async def _wait_ready(self, timeout_s: float) -> None:
        engine = GrpcEngine(self.target, timeout_s=max(timeout_s, POLL_S))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            while True:
                if not self.alive():
                    raise DaemonError(f"gobgpd exited at start: {self._tail.last_lines()}")
                try:
                    await asyncio.wait_for(engine.get_global(), timeout=POLL_S * 4)
                    return
                except (EngineError, TimeoutError) as err:
                    if loop.time() >= deadline:
                        raise DaemonError(
                            f"gobgpd API on {self.target} did not answer in {timeout_s:.0f} s "
                            f"({err}); last log lines: {self._tail.last_lines()}"
                        ) from err
                await asyncio.sleep(POLL_S)
        finally:
            await engine.close()

    async def _supervise(self) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            while self.alive():
                await asyncio.sleep(POLL_S)
            code = self._proc.returncode if self._proc is not None else None
            log.warning(
                "gobgpd pid %s exited (code %s); last log lines: %s",
                self._pid, code, self._tail.last_lines(),
            )  # fmt: skip
            loop = asyncio.get_running_loop()
            if loop.time() - self._started_at >= STABLE_RUN_S:
                backoff = BACKOFF_MIN_S
            backoff = await self._restart(backoff)

    async def _restart(self, backoff: float) -> float:
        """Start gobgpd again after ``backoff`` seconds; returns the next backoff."""
        await asyncio.sleep(backoff)
        self.adopted = False
        try:
            await self._spawn()
        except DaemonError as err:
            log.error("restarting gobgpd failed (retrying in %.1f s): %s", backoff * 2, err)
            return min(backoff * 2, BACKOFF_MAX_S)
        self.restarts += 1
        if self.on_restart is not None:
            try:
                await self.on_restart()
            except Exception:
                log.exception("pushing state to the restarted gobgpd failed")
        return min(backoff * 2, BACKOFF_MAX_S)

    async def stop(self, keep_running: bool) -> None:
        """Stop supervising; leave gobgpd running (graceful restart) or stop BGP and end it."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        if keep_running and self.alive():
            log.info("leaving gobgpd pid %s running for the next agent", self._pid)
            self._tail.stop()
            return
        if self.alive():
            await self._stop_bgp()
        await self._terminate()
        self._tail.stop()
        for path in (self.config.pid_file, Path(self.config.socket_path)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def _stop_bgp(self) -> None:
        engine = GrpcEngine(self.target, timeout_s=TERM_GRACE_S)
        try:
            await engine.stop_bgp()
        except EngineError as err:
            log.warning("StopBgp before ending gobgpd failed: %s", err)
        finally:
            await engine.close()

    async def _terminate(self) -> None:
        pid = self._pid
        if pid is None or not self.alive():
            return
        os.kill(pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TERM_GRACE_S
        while self.alive() and loop.time() < deadline:
            await asyncio.sleep(POLL_S / 5)
        if self.alive():
            log.warning("gobgpd pid %d ignored SIGTERM; killing it", pid)
            os.kill(pid, signal.SIGKILL)
            while self.alive():
                await asyncio.sleep(POLL_S / 5)
