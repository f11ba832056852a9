"""Routing controller benchmark: a peer's routes to 1,000 nodes into the kernel, and out again.

What runs is the real agent, ``python -m kube_router`` with only the routing controller
(``--run-service-proxy=false --run-firewall=false``), in a lab node's network namespace, against
the lab API server; it runs its own gobgpd. An external BGP router (a second gobgpd, eBGP, AS
64999, in a namespace of its own on the same underlay) is the agent's peer
(``--peer-router-ips``). The underlay is a /16 (10.77.0.0/16), so the next hops of the routes,
one per simulated node (``10.77.4.1`` ...), are on the node's own subnet: the agent installs
``PREFIX via NH proto 17`` routes, which is what is measured (no tunnels).

Per run (``--runs``, after the session is established):

- install: from the peer's ``AddPathStream`` of ``--routes`` paths (``10.128.0.0/24`` ... with
  one next hop each, over gobgpd's gRPC API on a unix socket) to the last of them in the node's
  kernel. The kernel side is watched by :class:`routing_monitor.RouteMonitor` (rtnetlink route
  notifications in the node's namespace, no polling). Split: the peer's API call returning, the
  first route in the kernel, every best path seen on the agent's gobgpd (a WatchEvent stream of
  the benchmark's own on the agent's gobgpd socket, as the agent's), the last route;
- memory: VmRSS (and VmHWM) of the agent, its gobgpd and the peer's gobgpd with the routes in;
- withdraw: from ``kill -9`` of the peer's gobgpd to the last route gone, with the same split.
  The peer is started again for the next run (its session takes 6-9 s to come back).

Usage: ``python bench/routing.py [--runs 5] [--routes 1000] [--json] [--profile FILE]
[--keep]``. Needs root (network namespaces). ``--profile FILE`` runs the agent under cProfile
(stats written to FILE when it stops). Everything lives in namespaces ``krbench-*`` and a
temporary directory, removed at the end, on Ctrl-C and on SIGTERM (``--keep`` keeps the
directory, with the agent's and the routers' logs). Figures: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from kube_router.bgp.engine import EngineError
from kube_router.bgp.grpc_engine import GrpcEngine
from kube_router.bgp.model import PathSpec, RouteEvent
from kube_router_lab import cluster as lab
from kube_router_lab import underlay
from kube_router_lab.bgprouter import API_TIMEOUT_S, GOBGPD, ExternalRouter, Neighbor
from kube_router_lab.cluster import Cluster, ClusterNode, ClusterSpec
from routing_monitor import RouteMonitor, WireMonitor, cpu_s, memory_kib

PREFIX = "krbench"
SUBNETS = ("10.77.0.0/16", "10.78.0.0/16")
PEER_HOST = 250  # 10.77.0.250
PEER_ASN = 64999
FIRST_NEXT_HOP_OCTET = 4  # next hops from 10.77.4.1, clear of the lab's own hosts
HOSTS_PER_OCTET = 250
MAX_ROUTES = (244 - 128) * 256  # prefixes 10.128.0.0/24 .. 10.243.255.0/24: not the lab pods
BARS = {"install_s": 2.0, "withdraw_s": 2.0}
ESTABLISH_S = 120.0
PHASE_TIMEOUT_S = 60.0
SETTLE_S = 1.0
POLL_S = 0.01
RIB_LAG_S = 10.0  # how long the benchmark's own watch may trail the kernel
KIB = 1024
INTERRUPTED = 130
AGENT_FLAGS = (
    "--run-service-proxy=false",
    "--run-firewall=false",
    f"--peer-router-asns={PEER_ASN}",
)
DASH = "\u2013"
CPU_OF = ("agent", "agent_gobgpd", "peer_gobgpd")  # the peer's is not read after its kill


def route_prefix(k: int) -> str:
    """The pod CIDR of simulated node ``k`` (0-based)."""
    return f"10.{128 + k // 256}.{k % 256}.0/24"


def next_hop(k: int) -> str:
    """Simulated node ``k``'s address, on the benchmark node's /16."""
    return f"10.77.{FIRST_NEXT_HOP_OCTET + k // HOSTS_PER_OCTET}.{k % HOSTS_PER_OCTET + 1}"


def paths(n: int) -> list[PathSpec]:
    if not 0 < n <= MAX_ROUTES:
        raise ValueError(f"--routes must be in 1..{MAX_ROUTES}, not {n}")
    return [PathSpec(route_prefix(k), next_hop(k)) for k in range(n)]


def reached_at(timeline: list[tuple[float, int]], since: float, target: int) -> float | None:
    """The first time at or after ``since`` when the count in ``timeline`` was ``target``."""
    for when, count in timeline:
        if when >= since and count == target:
            return when
    return None


def first_after(timeline: list[tuple[float, int]], since: float) -> float | None:
    return next((when for when, _ in timeline if when >= since), None)


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "worst": max(values)}


class RibWatch:
    """The learned best paths of the agent's gobgpd, from a WatchEvent stream of our own:
    ``timeline`` holds (time, paths now) after each event."""

    def __init__(self, target: str) -> None:
        self.engine = GrpcEngine(target)
        self.prefixes: set[str] = set()
        self.timeline: list[tuple[float, int]] = []
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="rib-watch")

    async def _run(self) -> None:
        async for event in self.engine.watch_routes():
            if isinstance(event, RouteEvent):
                if event.withdraw:
                    self.prefixes.discard(event.prefix)
                else:
                    self.prefixes.add(event.prefix)
                self.timeline.append((time.monotonic(), len(self.prefixes)))
        raise EngineError("the agent's gobgpd ended the watch stream")

    async def wait(self, since: float, target: int, timeout: float) -> float | None:
        """When the count reached ``target`` at or after ``since`` (None: not in ``timeout``)."""
        deadline = time.monotonic() + timeout
        while (when := reached_at(self.timeline, since, target)) is None:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(POLL_S)
        return when

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.engine.close()


@dataclass
class PeerRouter(ExternalRouter):
    """The lab's external router with its gRPC API on a unix socket as well (the benchmark
    process lives in the host's namespace, the router's TCP API in the router's)."""

    @property
    def socket_path(self) -> Path:
        return self.workdir / f"{self.netns}.sock"

    async def start(self, timeout: float = API_TIMEOUT_S) -> None:
        self.write_config()
        self.socket_path.unlink(missing_ok=True)  # gobgpd cannot bind over a stale one
        hosts = f"unix://{self.socket_path},127.0.0.1:{self.api_port}"
        argv = [
            *("ip", "netns", "exec", self.netns, GOBGPD, "-f", str(self.config_path)),
            *("-t", "toml", "--api-hosts", hosts, "--pprof-disable", "-l", "info"),
        ]
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        await self.wait_api(timeout)


@dataclass
class Run:
    install: dict[str, float] = field(default_factory=dict)
    withdraw: dict[str, float] = field(default_factory=dict)
    memory_kib: dict[str, tuple[int, int]] = field(default_factory=dict)


def _since(t0: float, when: float | None) -> float:
    return when - t0 if when is not None else float("nan")


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.paths = paths(args.routes)
        self.cluster = Cluster(ClusterSpec(PREFIX, nodes=1, subnets=SUBNETS), workdir)
        self.node: ClusterNode = self.cluster.nodes[0]
        self.peer: PeerRouter | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self.monitor = RouteMonitor(self.node.netns)
        self.wire: WireMonitor | None = None
        self.rib: RibWatch | None = None
        self.idle_kib: dict[str, tuple[int, int]] = {}

    async def run(self) -> list[Run]:
        async with self.cluster:
            try:
                await self.setup()
                return [await self.one_run(i) for i in range(self.args.runs)]
            finally:
                self.monitor.close()
                if self.wire is not None:
                    self.wire.close()
                if self.rib is not None:
                    await self.rib.close()

    async def setup(self) -> None:
        c, node = self.cluster, self.node
        u = c.underlay
        host = u.plan_host("peer", PEER_HOST)
        underlay.add_host(u, host)
        neighbors = [Neighbor(node.ip, lab.CLUSTER_ASN)]
        self.peer = PeerRouter(host.netns, host.ip, PEER_ASN, c.workdir, neighbors)
        c.routers["peer"] = self.peer
        await self.peer.start()
        c.write_cni_template(node)
        flags = (*AGENT_FLAGS, f"--peer-router-ips={host.ip}")
        argv = c.agent_argv(node, *flags)
        if self.args.profile:
            argv = [argv[0], "-m", "cProfile", "-o", str(self.args.profile), *argv[1:]]
        self.agent = c.spawn(node, argv, log_name="agent")
        await self.peer.wait_established([node.ip], timeout=ESTABLISH_S)
        own = node.pod_cidrs[0]
        await self.peer.wait_rib(lambda rib: any(p.prefix == own for p in rib), timeout=ESTABLISH_S)
        self.monitor.start()
        self.wire = WireMonitor(node.netns, host.ip)
        self.wire.start()
        self.rib = RibWatch(f"unix://{node.run_dir / 'gobgpd.sock'}")
        self.rib.start()
        await asyncio.sleep(SETTLE_S)
        self.idle_kib = self.memory()

    def pids(self) -> dict[str, int]:
        assert self.agent is not None and self.peer is not None and self.peer.proc is not None
        gobgpd = int((self.node.run_dir / "gobgpd.pid").read_text().split()[0])
        return {"agent": self.agent.pid, "agent_gobgpd": gobgpd, "peer_gobgpd": self.peer.proc.pid}

    def cpu(self, *names: str) -> dict[str, float]:
        pids = self.pids()
        return {name: cpu_s(pids[name]) for name in names}

    def memory(self) -> dict[str, tuple[int, int]]:
        return {name: memory_kib(pid) for name, pid in self.pids().items()}

    async def one_run(self, i: int) -> Run:
        assert self.peer is not None and self.rib is not None
        if i:
            await self.peer.start()
        await self.peer.wait_established([self.node.ip], timeout=ESTABLISH_S)
        self.monitor.resync()
        if self.monitor.routes:
            raise RuntimeError(f"{len(self.monitor.routes)} routes left from the previous run")
        run = Run()
        run.install = await self.install()
        await asyncio.sleep(SETTLE_S)
        run.memory_kib = self.memory()
        run.withdraw = await self.withdraw()
        print(
            f"run {i + 1}: install {run.install['total_s']:.3f} s, "
            f"withdraw {run.withdraw['total_s']:.3f} s",
            file=sys.stderr,
        )
        return run

    async def install(self) -> dict[str, float]:
        assert self.peer is not None and self.rib is not None and self.wire is not None
        engine = GrpcEngine(f"unix://{self.peer.socket_path}")
        try:
            await engine.get_global()  # the channel connected before the clock starts
            self.monitor.arm(len(self.paths))
            cpu0 = self.cpu(*CPU_OF)
            t0 = time.monotonic()
            await engine.sync_paths(self.paths)
            sent = time.monotonic()
            first, done = await asyncio.to_thread(self.monitor.wait, PHASE_TIMEOUT_S)
            cpu1 = self.cpu(*CPU_OF)
        finally:
            await engine.close()
        rib_done = await self.rib.wait(t0, len(self.paths), RIB_LAG_S)
        wire_first, wire_last, wire_bytes = self.wire.span(t0, done)
        return {
            "total_s": done - t0,
            "peer_api_s": sent - t0,
            "first_wire_s": _since(t0, wire_first),
            "last_wire_s": _since(t0, wire_last),
            "wire_kib_s": wire_bytes / KIB,  # not a time: the UPDATE bytes received
            "first_rib_s": _since(t0, first_after(self.rib.timeline, t0)),
            "all_rib_s": _since(t0, rib_done),
            "first_kernel_s": _since(t0, first),
            **{f"cpu_{k}_s": cpu1[k] - cpu0[k] for k in CPU_OF},
        }

    async def withdraw(self) -> dict[str, float]:
        assert self.peer is not None and self.peer.proc is not None
        assert self.rib is not None and self.wire is not None
        proc = self.peer.proc
        with open(f"/proc/{proc.pid}/comm", encoding="ascii") as fh:
            if fh.read().strip() != GOBGPD:
                raise RuntimeError(f"pid {proc.pid} is not the peer's gobgpd")
        self.monitor.arm(0)
        cpu0 = self.cpu(*CPU_OF[:2])
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        first, done = await asyncio.to_thread(self.monitor.wait, PHASE_TIMEOUT_S)
        cpu1 = self.cpu(*CPU_OF[:2])
        proc.wait()
        rib_done = await self.rib.wait(t0, 0, RIB_LAG_S)
        closed = next((t for t, _, closing in self.wire.timeline if t >= t0 and closing), None)
        return {
            "total_s": done - t0,
            "fin_wire_s": _since(t0, closed),
            "first_rib_s": _since(t0, first_after(self.rib.timeline, t0)),
            "all_rib_s": _since(t0, rib_done),
            "first_kernel_s": _since(t0, first),
            **{f"cpu_{k}_s": cpu1[k] - cpu0[k] for k in CPU_OF[:2]},
        }


# --- report ---------------------------------------------------------------------------------


def aggregate(runs: list[Run], idle: dict[str, tuple[int, int]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": len(runs)}
    for phase in ("install", "withdraw"):
        for key in getattr(runs[0], phase):
            values = [getattr(r, phase)[key] for r in runs]
            out[f"{phase}_{key}"] = values
            out[f"{phase}_{key.removesuffix('_s')}_median_s"] = statistics.median(values)
            out[f"{phase}_{key.removesuffix('_s')}_worst_s"] = max(values)
    for name in runs[0].memory_kib:
        out[f"rss_{name}_idle_mib"] = idle[name][0] / KIB
        out[f"rss_{name}_mib"] = max(r.memory_kib[name][0] for r in runs) / KIB
        out[f"hwm_{name}_mib"] = max(r.memory_kib[name][1] for r in runs) / KIB
    return out


def _cell(r: dict[str, Any], phase: str, key: str) -> str:
    values = " / ".join(f"{v:.3f}" for v in r[f"{phase}_{key}_s"])
    return f"{r[f'{phase}_{key}_median_s']:.3f} / {r[f'{phase}_{key}_worst_s']:.3f} s ({values})"


def _medians(r: dict[str, Any], phase: str, *keys: str) -> str:
    return " / ".join(f"{r[f'{phase}_{k}_median_s']:.3f}" for k in keys) + " s"


def table(r: dict[str, Any], n: int) -> list[str]:
    def bar(phase: str) -> str:
        worst = r[f"{phase}_total_worst_s"]
        return f"{BARS[phase + '_s']:g} s" + ("" if worst <= BARS[phase + "_s"] else " **MISSED**")

    mem = " / ".join(
        f"{r[f'rss_{k}_idle_mib']:.1f} → {r[f'rss_{k}_mib']:.1f}"
        for k in ("agent", "agent_gobgpd", "peer_gobgpd")
    )
    rows = [
        (f"install: `AddPathStream` of {n:,} paths at the peer → all in the node's kernel",
         bar("install"), _cell(r, "install", "total")),
        (f"{DASH} the peer's `AddPathStream` returned", DASH, _cell(r, "install", "peer_api")),
        (f"{DASH} first / last BGP segment from the peer on the node's wire "
         f"({r['install_wire_kib_median_s']:.0f} KiB)", DASH,
         _medians(r, "install", "first_wire", "last_wire")),
        (f"{DASH} first / all best paths on the agent's gobgpd (a watch of the benchmark's)",
         DASH, _medians(r, "install", "first_rib", "all_rib")),
        (f"{DASH} first route in the kernel", DASH, _medians(r, "install", "first_kernel")),
        (f"{DASH} CPU used meanwhile: agent / its gobgpd / the peer's gobgpd", DASH,
         _medians(r, "install", "cpu_agent", "cpu_agent_gobgpd", "cpu_peer_gobgpd")),
        ("withdraw: `kill -9` of the peer's gobgpd → all gone from the node's kernel",
         bar("withdraw"), _cell(r, "withdraw", "total")),
        (f"{DASH} the peer's FIN or RST on the node's wire", DASH,
         _medians(r, "withdraw", "fin_wire")),
        (f"{DASH} first / all withdrawals on the agent's gobgpd", DASH,
         _medians(r, "withdraw", "first_rib", "all_rib")),
        (f"{DASH} first route gone from the kernel", DASH,
         _medians(r, "withdraw", "first_kernel")),
        (f"{DASH} CPU used meanwhile: agent / its gobgpd", DASH,
         _medians(r, "withdraw", "cpu_agent", "cpu_agent_gobgpd")),
        ("VmRSS idle → with the routes: agent / its gobgpd / the peer's gobgpd", DASH,
         f"{mem} MiB"),
        ("VmHWM (peak): agent / its gobgpd", DASH,
         f"{r['hwm_agent_mib']:.1f} / {r['hwm_agent_gobgpd_mib']:.1f} MiB"),
    ]  # fmt: skip
    lines = ["| Measure | Bar | Median / worst (each run) |", "|---|---|---|"]
    return lines + [f"| {a} | {b} | {c} |" for a, b, c in rows]


def missed(r: dict[str, Any]) -> list[str]:
    return [k for k, bar in BARS.items() if r[f"{k.removesuffix('_s')}_total_worst_s"] > bar]


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--routes", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="print the figures as JSON too")
    p.add_argument("--profile", type=Path, help="run the agent under cProfile into this file")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    return p.parse_args(argv)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    """A work directory; whatever the lab left is removed at the end, however it ends."""
    workdir = Path(tempfile.mkdtemp(prefix="kr-bench-routing-"))
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield workdir
    finally:
        lab.down(PREFIX)
        signal.signal(signal.SIGTERM, previous)
        if keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.profile:
        args.profile = args.profile.resolve()
    try:
        with workspace(args.keep) as workdir:
            bench = Bench(args, workdir)
            runs = asyncio.run(bench.run())
            result = aggregate(runs, bench.idle_kib)
    except KeyboardInterrupt:
        print("interrupted; the lab's namespaces and processes are removed", file=sys.stderr)
        return INTERRUPTED
    print(
        f"# routing benchmark, {time.strftime('%Y-%m-%d')}, {platform.node()}, "
        f"{os.cpu_count()} CPUs, kernel {platform.release()}, Python {platform.python_version()}"
    )
    print(f"# command: {' '.join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])])}")
    print("\n".join(table(result, args.routes)))
    if args.json:
        print(json.dumps(result))
    return 1 if missed(result) else 0


if __name__ == "__main__":
    sys.exit(main())
