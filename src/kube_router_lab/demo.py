"""``make demo``: a kube-router cluster on this machine, with no Kubernetes and no Docker.

``python -m kube_router_lab.demo up [--nodes 3] [--pods-per-node 2] [--prefix krdemo]
[--dir .demo] [--duration S]`` builds a :class:`~kube_router_lab.cluster.Cluster` (nodes in
network namespaces on an underlay bridge, the lab API server, nothing in the host's own
namespace), runs the real agent in every node (routing controller and network policy; the
service proxy only when the kernel has IPVS), adds pods wired by the real CNI bridge plugin with
the configuration the agent wrote, and a ClusterIP Service with an EndpointSlice over them. Once
every node has its BGP sessions established and the other nodes' pod CIDRs in its routing table,
it prints the nodes, each node's ``gobgp neighbor`` table and learned routes (``ip route show
proto 17``), a pod-to-pod traffic matrix (real TCP connections between the pods' probe agents),
the Service, and then ``demo is up``. It stays up until Ctrl-C / SIGTERM (or ``--duration``),
then tears everything down (:meth:`Cluster.down`) and prints ``demo: torn down``. Exit status 0
after a clean run, 1 when the cluster did not converge (the logs stay in ``--dir``).

``python -m kube_router_lab.demo down [--prefix krdemo] [--dir .demo]`` (``make demo-down``)
asks a running demo to stop (its pid is in ``<dir>/demo.pid``) and removes whatever a crashed
one left (:func:`kube_router_lab.cluster.down`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import string
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kube_router_lab import cluster as lab_cluster
from kube_router_lab import demo_show as show
from kube_router_lab.bgprouter import BgpRouterError, gobgp_cli, parse_neighbors
from kube_router_lab.cluster import Cluster, ClusterNode, ClusterSpec, CniPod

DEFAULT_PREFIX = "krdemo"
DEFAULT_DIR = ".demo"
DEFAULT_NODES = 3
DEFAULT_PODS = 2
NAMESPACE = "demo"
SERVICE = "web"
SERVICE_IP = "10.96.0.10"
POD_PORT = 80
HEALTH_PORT = 20244
METRICS_PORT = 8080
GOBGP_API_PORT = 50051
READY_TIMEOUT_S = 90.0
POLL_S = 0.5
PROBE_TIMEOUT_S = 1.0
PROBE_TRIES = 3
WATCH_POLL_S = 1.0
STOP_WAIT_S = 20.0
PID_FILE = "demo.pid"
HTTP_OK = "200"


class DemoError(Exception):
    """The demo cluster could not be brought up."""


@dataclass(frozen=True)
class DemoOptions:
    prefix: str = DEFAULT_PREFIX
    state_dir: Path = Path(DEFAULT_DIR)
    nodes: int = DEFAULT_NODES
    pods_per_node: int = DEFAULT_PODS
    duration: float | None = None
    ready_timeout: float = READY_TIMEOUT_S


def ipvs_available() -> bool:
    """Whether this kernel has IPVS (loading the module if it can)."""
    subprocess.run(["modprobe", "-q", "ip_vs"], check=False, capture_output=True)
    return Path("/proc/net/ip_vs").exists()


def agent_flags(proxy: bool) -> list[str]:
    """The agent's flags: routing and network policy always, the proxy only with IPVS."""
    flags = [f"--health-port={HEALTH_PORT}", f"--metrics-port={METRICS_PORT}"]
    return flags if proxy else [*flags, "--run-service-proxy=false"]


def pod_names(node: ClusterNode, count: int) -> list[str]:
    return [f"web-{node.index}{string.ascii_lowercase[j]}" for j in range(count)]


def service_object() -> dict[str, Any]:
    port = {"name": "http", "protocol": "TCP", "port": POD_PORT, "targetPort": POD_PORT}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": NAMESPACE},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": SERVICE_IP,
            "clusterIPs": [SERVICE_IP],
            "selector": {"app": SERVICE},
            "ports": [port],
        },
    }


def endpoint_slice(pods: Sequence[CniPod]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{SERVICE}-1",
            "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": SERVICE},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": POD_PORT}],
        "endpoints": [
            {"addresses": [p.ip], "nodeName": p.node, "conditions": {"ready": True}} for p in pods
        ],
    }


# -- bringing it up --------------------------------------------------------------------------


async def _add_pods(c: Cluster, node: ClusterNode, count: int) -> list[CniPod]:
    return [
        await c.add_pod(node, NAMESPACE, name, {"app": SERVICE}) for name in pod_names(node, count)
    ]


async def start(c: Cluster, opts: DemoOptions, proxy: bool) -> list[CniPod]:
    """Agents on every node, then the pods (once the agent wrote the CNI ranges), then the
    Service and its EndpointSlice."""
    for node in c.nodes:
        c.write_cni_template(node)
        (node.dir / "agent.log").unlink(missing_ok=True)  # the log of a previous run
        c.start_agent(node, *agent_flags(proxy))
    print(f"demo: agents started on {len(c.nodes)} nodes; adding pods", flush=True)
    per_node = await asyncio.gather(*(_add_pods(c, n, opts.pods_per_node) for n in c.nodes))
    pods = [p for ps in per_node for p in ps]
    c.server.store.create("services", service_object())
    c.server.store.create("endpointslices", endpoint_slice(pods))
    return pods


def _sessions(node: ClusterNode) -> tuple[int, int]:
    """(established, configured) BGP sessions of the node's gobgpd; (0, 0) before its API."""
    try:
        states = parse_neighbors(gobgp_cli(node.netns, GOBGP_API_PORT, "neighbor", "-j"))
    except BgpRouterError:
        return 0, 0
    return sum(1 for s in states if s.established), len(states)


def node_problems(c: Cluster, node: ClusterNode) -> list[str]:
    """What the node still lacks: health, established sessions, routes to the others' pods."""
    problems = []
    url = f"http://{node.ip}:{HEALTH_PORT}/healthz"
    code = c.run(node, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url, check=False)
    if code.strip() != HTTP_OK:
        problems.append(f"{node.name}: /healthz not answering 200 yet")
    established, _ = _sessions(node)
    if established < len(c.nodes) - 1:
        problems.append(f"{node.name}: {established}/{len(c.nodes) - 1} BGP sessions established")
    learned = c.run(node, "ip", "route", "show", "proto", "17", check=False)
    missing = [
        cidr for m in c.nodes if m is not node for cidr in m.pod_cidrs if cidr not in learned
    ]
    if missing:
        problems.append(f"{node.name}: no route yet to {', '.join(missing)}")
    return problems


async def wait_converged(c: Cluster, timeout: float) -> list[str]:
    """Poll every node until nothing lacks; the problems left at the deadline ([]: ready)."""
    deadline = time.monotonic() + timeout
    while True:
        found = await asyncio.gather(*(asyncio.to_thread(node_problems, c, n) for n in c.nodes))
        problems = [p for ps in found for p in ps]
        if not problems or time.monotonic() > deadline:
            return problems
        await asyncio.sleep(POLL_S)


# -- what it shows ---------------------------------------------------------------------------


async def traffic(c: Cluster, pods: Sequence[CniPod]) -> dict[tuple[str, str], bool]:
    """Every pod to every other pod over TCP; failures are tried again (a route may have just
    landed) up to PROBE_TRIES times."""
    results: dict[tuple[str, str], bool] = {}
    pairs = [(s, d) for s in pods for d in pods if s is not d]
    for _ in range(PROBE_TRIES):
        todo = [(s, d) for s, d in pairs if not results.get((s.name, d.name))]
        if not todo:
            break
        answers = await asyncio.gather(
            *(c.reaches(s, d, "tcp", POD_PORT) for s, d in todo), return_exceptions=True
        )
        for (s, d), ok in zip(todo, answers, strict=True):
            results[(s.name, d.name)] = ok is True
    return results


async def service_answers(c: Cluster, pods: Sequence[CniPod]) -> dict[str, str | None]:
    answers = await asyncio.gather(*(c.ask(p, SERVICE_IP, "tcp", POD_PORT) for p in pods))
    return {p.name: a.split("/", 1)[-1] if a else None for p, a in zip(pods, answers, strict=True)}


def _node_rows(c: Cluster, pods: Sequence[CniPod]) -> list[show.NodeRow]:
    return [
        show.NodeRow(
            n.name,
            n.netns,
            n.ip,
            n.pod_cidrs,
            tuple(f"{p.name}={p.ip}" for p in pods if p.node == n.name),
        )
        for n in c.nodes
    ]


def _gobgp_table(node: ClusterNode) -> str:
    try:
        return gobgp_cli(node.netns, GOBGP_API_PORT, "neighbor")
    except BgpRouterError as err:
        return f"(gobgp: {err})"


async def report(c: Cluster, pods: Sequence[CniPod], proxy: bool) -> tuple[str, bool]:
    """Everything the demo prints once ready, and whether all pod-to-pod traffic flowed."""
    sessions = await asyncio.gather(*(asyncio.to_thread(_gobgp_table, n) for n in c.nodes))
    routes = await asyncio.gather(
        *(asyncio.to_thread(c.run, n, "ip", "route", "show", "proto", "17") for n in c.nodes)
    )
    results = await traffic(c, pods)
    answers = await service_answers(c, pods) if proxy else None
    names = [n.name for n in c.nodes]
    text = "".join(
        [
            show.section("Nodes", show.nodes_table(_node_rows(c, pods))),
            show.section(
                f"BGP sessions (gobgp -p {GOBGP_API_PORT} neighbor, in each node)",
                show.per_node(dict(zip(names, sessions, strict=True))),
            ),
            show.section(
                "Routes learned over BGP (ip route show proto 17)",
                show.per_node(dict(zip(names, routes, strict=True))),
            ),
            show.section(
                f"Pod-to-pod traffic (TCP port {POD_PORT}, real connections)",
                show.matrix([p.name for p in pods], results),
            ),
            show.section(
                "Service",
                show.service_lines(
                    f"{NAMESPACE}/{SERVICE}", SERVICE_IP, POD_PORT, [p.ip for p in pods], answers
                ),
            ),
        ]
    )
    return text, show.matrix_ok(results)


def hints(c: Cluster) -> list[str]:
    n = c.nodes[0]
    return [
        f"sudo ip netns exec {n.netns} gobgp neighbor",
        f"sudo ip netns exec {n.netns} gobgp global rib",
        f"sudo ip netns exec {n.netns} curl -s http://{n.ip}:{METRICS_PORT}/metrics",
        f"agent logs: {c.workdir}/<node>/agent.log",
        "Ctrl-C here (or `make demo-down` from another shell) tears it all down.",
    ]


# -- running and stopping --------------------------------------------------------------------


async def _bring_up(c: Cluster, opts: DemoOptions) -> bool:
    """Build, start, wait, print; whether the cluster came up (False: already explained)."""
    began = time.monotonic()
    proxy = ipvs_available()
    print(f"demo: building {opts.nodes} nodes in namespaces {opts.prefix}-*", flush=True)
    await c.up()
    pods = await start(c, opts, proxy)
    print("demo: waiting for BGP sessions and learned routes", flush=True)
    problems = await wait_converged(c, opts.ready_timeout)
    text, all_ok = await report(c, pods, proxy)
    print(text, end="", flush=True)
    if problems:
        print(f"demo: not ready after {opts.ready_timeout:g} s:", file=sys.stderr)
        print("\n".join(f"  {p}" for p in problems), file=sys.stderr, flush=True)
        return False
    if not all_ok:
        print("demo: some pods do not reach each other (see the matrix)", file=sys.stderr)
    print(show.section("Try", hints(c)), end="", flush=True)
    print(f"demo is up ({time.monotonic() - began:.1f} s)", flush=True)
    return True


def _exited_agents(c: Cluster, reported: set[int]) -> None:
    for proc in c.procs:
        if proc.poll() is not None and proc.pid not in reported:
            reported.add(proc.pid)
            print(f"demo: an agent exited with status {proc.returncode}; see the logs", flush=True)


async def _serve(c: Cluster, stop: asyncio.Event, duration: float | None) -> None:
    """Until ``stop`` (a signal) or ``duration``; reports agents that die meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = None if duration is None else loop.time() + duration
    reported: set[int] = set()
    while not stop.is_set() and (deadline is None or loop.time() < deadline):
        _exited_agents(c, reported)
        wait = WATCH_POLL_S if deadline is None else min(WATCH_POLL_S, deadline - loop.time())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, wait))


async def up(opts: DemoOptions) -> int:
    """The whole demo: bring up, serve until a signal or ``duration``, tear down."""
    if os.geteuid() != 0:
        print("demo: needs root (network namespaces); run it with sudo", file=sys.stderr)
        return 1
    opts.state_dir.mkdir(parents=True, exist_ok=True)
    pid_file = opts.state_dir / PID_FILE
    pid_file.write_text(f"{os.getpid()}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    spec = ClusterSpec(opts.prefix, nodes=opts.nodes)
    c = Cluster(spec, opts.state_dir)
    setup = asyncio.ensure_future(_bring_up(c, opts))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({setup, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not setup.done():
            print("demo: interrupted while starting", flush=True)
            setup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await setup
            return 1
        if not setup.result():
            return 1
        await _serve(c, stop, opts.duration)
        return 0
    finally:
        stopper.cancel()
        print("demo: tearing down", flush=True)
        await c.down()
        pid_file.unlink(missing_ok=True)
        print(f"demo: torn down (no namespace {opts.prefix}-* left)", flush=True)


def _running_demo(pid_file: Path) -> int | None:
    """The pid of a live demo recorded in ``pid_file`` (None: none)."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"kube_router_lab.demo" in cmdline and pid != os.getpid() else None


def down(prefix: str, state_dir: Path) -> int:
    """Ask a running demo to stop, then remove whatever is left with ``prefix``."""
    pid_file = state_dir / PID_FILE
    pid = _running_demo(pid_file)
    if pid is not None:
        print(f"demo: stopping the demo running as pid {pid}", flush=True)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT_S
        while _running_demo(pid_file) is not None and time.monotonic() < deadline:
            time.sleep(POLL_S)
    removed = lab_cluster.down(prefix)
    pid_file.unlink(missing_ok=True)
    print(f"demo: down ({len(removed)} leftover namespaces removed)", flush=True)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kube_router_lab.demo", description=__doc__)
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--nodes", type=int, default=DEFAULT_NODES, help="number of nodes")
    parser.add_argument("--pods-per-node", type=int, default=DEFAULT_PODS, help="pods on each node")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="name prefix of the namespaces")
    parser.add_argument("--dir", default=DEFAULT_DIR, help="state directory (kubeconfig, logs)")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop by itself after this many seconds once up (default: run until Ctrl-C)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=READY_TIMEOUT_S,
        help="seconds to wait for sessions and routes",
    )
    args = parser.parse_args(argv)
    if args.nodes < 1 or not 1 <= args.pods_per_node <= len(string.ascii_lowercase):
        parser.error("--nodes must be at least 1 and --pods-per-node between 1 and 26")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.action == "down":
        return down(args.prefix, Path(args.dir))
    opts = DemoOptions(
        args.prefix,
        Path(args.dir),
        args.nodes,
        args.pods_per_node,
        args.duration,
        args.ready_timeout,
    )
    return asyncio.run(up(opts))


if __name__ == "__main__":
    raise SystemExit(main())
