"""``make demo``: a lab cluster on this machine with no Kubernetes and no Docker.

Starts the lab API server on a bridge, creates one network namespace per node, registers the
Node objects with pod CIDRs, runs the real agent in each namespace against the lab server, prints
where everything is, and tears it all down on Ctrl-C (or ``make demo-down`` from another shell).

Usage: ``python -m kube_router.lab.demo up [--nodes N]`` / ``python -m kube_router.lab.demo down``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from kube_router.lab import netns

DEFAULT_PREFIX = "krdemo"
DEFAULT_DIR = ".demo"
SUBNET = "10.250.0.0/24"
POD_SUPERNET = "10.251.0.0/16"
API_PORT = 6443
HEALTH_PORT = 20244
METRICS_PORT = 8080
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.5


@dataclass
class Demo:
    prefix: str
    state_dir: Path
    nodes: int
    duration: float | None = None
    subnet: str = SUBNET
    pod_supernet: str = POD_SUPERNET
    api_port: int = API_PORT
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"


def node_objects(topo: netns.Topology) -> list[dict[str, Any]]:
    """The Node objects the lab registers: addresses and pod CIDRs as a cluster would set."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": n.name, "labels": {"kubernetes.io/hostname": n.name}},
            "spec": {"podCIDR": str(n.pod_cidr), "podCIDRs": [str(n.pod_cidr)]},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": n.ip},
                    {"type": "Hostname", "address": n.name},
                ]
            },
        }
        for n in topo.nodes
    ]


def ipvs_available() -> bool:
    """Whether this kernel has IPVS (loading the module if it can)."""
    subprocess.run(["modprobe", "-q", "ip_vs"], check=False, capture_output=True)
    return Path("/proc/net/ip_vs").exists()


def agent_argv(demo: Demo, node: netns.LabNode) -> list[str]:
    # Without IPVS in the kernel the service proxy cannot run: the demo shows the rest.
    proxy = [] if ipvs_available() else ["--run-service-proxy=false"]
    return [
        "ip",
        "netns",
        "exec",
        node.netns,
        sys.executable,
        "-m",
        "kube_router",
        f"--kubeconfig={demo.kubeconfig.resolve()}",
        f"--hostname-override={node.name}",
        f"--health-port={HEALTH_PORT}",
        f"--metrics-port={METRICS_PORT}",
        *proxy,
    ]


async def _start_agents(demo: Demo, topo: netns.Topology) -> None:
    for node in topo.nodes:
        log_path = demo.state_dir / f"{node.name}.log"
        with log_path.open("wb") as out:
            env = {
                **os.environ,
                "NODE_NAME": node.name,
                "KUBE_ROUTER_CNI_CONF_FILE": str(demo.state_dir / f"{node.name}.conflist"),
            }
            demo.procs[node.name] = await asyncio.create_subprocess_exec(
                *agent_argv(demo, node),
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )


async def _wait_healthy(topo: netns.Topology, timeout: float) -> list[str]:
    """Poll each node's /healthz until 200; return the nodes that never got there."""
    pending = {n.name: f"http://{n.ip}:{HEALTH_PORT}/healthz" for n in topo.nodes}
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while pending and time.monotonic() < deadline:
            for name, url in list(pending.items()):
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            del pending[name]
            await asyncio.sleep(POLL_S)
    return sorted(pending)


def _summary(demo: Demo, topo: netns.Topology, api_url: str) -> str:
    lines = [
        "",
        "kube-router lab demo is up",
        "",
        f"  API server   {api_url}",
        f"  kubeconfig   {demo.kubeconfig.resolve()}",
        "",
    ]
    for n in topo.nodes:
        lines += [
            f"  {n.name}  netns {n.netns}  IP {n.ip}  pod CIDR {n.pod_cidr}",
            f"         health  http://{n.ip}:{HEALTH_PORT}/healthz",
            f"         metrics http://{n.ip}:{METRICS_PORT}/metrics",
            f"         log     {(demo.state_dir / (n.name + '.log')).resolve()}",
        ]
    lines += [
        "",
        f"  Try:  curl http://{topo.nodes[0].ip}:{HEALTH_PORT}/healthz",
        f"        kubectl --kubeconfig {demo.kubeconfig.resolve()} get nodes -o wide",
        f"        ip netns exec {topo.nodes[0].netns} ip addr",
        "",
        "  Ctrl-C (or `make demo-down` from another shell) tears it all down.",
        "",
    ]
    return "\n".join(lines)


async def _serve_until_stopped(demo: Demo) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waits = {asyncio.ensure_future(p.wait()): name for name, p in demo.procs.items()}
    stopper = asyncio.ensure_future(stop.wait())
    pending = {*waits, stopper}
    deadline = None if demo.duration is None else loop.time() + demo.duration
    while not stop.is_set():
        timeout = None if deadline is None else max(0.0, deadline - loop.time())
        done, pending = await asyncio.wait(
            pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if not done:
            break
        for fut in done:
            if fut in waits:
                print(
                    f"demo: agent on {waits[fut]} exited with status {fut.result()}; "
                    f"see {demo.state_dir / (waits[fut] + '.log')}",
                    flush=True,
                )
    for fut in pending:
        fut.cancel()
    return 0


async def _stop_agents(demo: Demo) -> None:
    for proc in demo.procs.values():
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    for proc in demo.procs.values():
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def up(demo: Demo) -> int:
    from kube_router.lab.apiserver import LabServer  # noqa: PLC0415

    if os.geteuid() != 0:
        print("demo: needs root (network namespaces, bridges); run it with sudo", file=sys.stderr)
        return 1
    down(demo.prefix, demo.state_dir, quiet=True)
    demo.state_dir.mkdir(parents=True, exist_ok=True)
    topo = netns.plan(demo.prefix, demo.nodes, demo.subnet, demo.pod_supernet)
    server = LabServer(host=str(topo.gateway.ip), port=demo.api_port)
    try:
        netns.create(topo)
        await server.start()
        server.write_kubeconfig(demo.kubeconfig)
        for ns in ("default", "kube-system"):
            server.store.create("namespaces", {"metadata": {"name": ns}})
        for obj in node_objects(topo):
            server.store.create("nodes", obj)
        await _start_agents(demo, topo)
        demo.state_file.write_text(
            json.dumps(
                {
                    "prefix": demo.prefix,
                    "bridge": topo.bridge,
                    "netns": [n.netns for n in topo.nodes],
                    "pids": [p.pid for p in demo.procs.values()],
                    "server_pid": os.getpid(),
                }
            )
        )
        unhealthy = await _wait_healthy(topo, READY_TIMEOUT_S)
        if unhealthy:
            print(
                f"demo: not healthy after {READY_TIMEOUT_S:g}s: {', '.join(unhealthy)}",
                file=sys.stderr,
            )
            return 1
        print(_summary(demo, topo, server.url), flush=True)
        return await _serve_until_stopped(demo)
    finally:
        await _stop_agents(demo)
        await server.stop()
        netns.destroy(demo.prefix, topo.bridge, [n.netns for n in topo.nodes])
        demo.state_file.unlink(missing_ok=True)
        print("demo: torn down", flush=True)


def down(prefix: str, state_dir: Path, quiet: bool = False) -> int:
    """Stop whatever a previous ``up`` left running and remove its namespaces and bridge."""
    state_file = state_dir / "state.json"
    bridge = None
    names: list[str] = []
    if state_file.exists():
        state = json.loads(state_file.read_text())
        bridge, names = state.get("bridge"), state.get("netns", [])
        for pid in [*state.get("pids", []), state.get("server_pid")]:
            if pid and pid != os.getpid():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGTERM)
        time.sleep(1)
        state_file.unlink(missing_ok=True)
    netns.destroy(prefix, bridge, names)
    if not quiet:
        print("demo: down")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kube_router.lab.demo", description=__doc__)
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--nodes", type=int, default=2, help="number of nodes (default 2)")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="name prefix of netns/links")
    parser.add_argument("--dir", default=DEFAULT_DIR, help="state directory (kubeconfig, logs)")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop by itself after this many seconds (default: run until Ctrl-C)",
    )
    parser.add_argument("--subnet", default=SUBNET, help=f"node network (default {SUBNET})")
    parser.add_argument(
        "--pod-supernet",
        default=POD_SUPERNET,
        help=f"pod CIDRs are /24s of this (default {POD_SUPERNET})",
    )
    parser.add_argument(
        "--api-port", type=int, default=API_PORT, help=f"lab API server port (default {API_PORT})"
    )
    args = parser.parse_args(argv)
    if args.action == "down":
        return down(args.prefix, Path(args.dir))
    demo = Demo(
        args.prefix,
        Path(args.dir),
        args.nodes,
        args.duration,
        args.subnet,
        args.pod_supernet,
        args.api_port,
    )
    return asyncio.run(up(demo))


if __name__ == "__main__":
    raise SystemExit(main())
