"""Network policy controller benchmark: full sync and event-to-kernel latency, real kernel.

A lab API server (in this process) holds 100 namespaces, 10 nodes, 5,000 Pods (500 on this
node) and 1,000 NetworkPolicies of mixed shapes (at ``--scale 1.0``). The real informers list
and watch it over HTTP; the real controller programs iptables and ipsets in a fresh network
namespace (removed at the end). Reported:

- first full sync: wall time of ``sync(full=True)`` on an empty namespace, split into compile
  (``desired()``), plan (Python diffing and text building), kernel reads (iptables-save, ipset
  save) and kernel writes (ipset restore, iptables-restore);
- pod added: time from the lab store write to the informer handler, then ``sync(full=False)``;
- policy added: the same;
- periodic full sync: ``sync(full=True)`` again, the kernel already right (compile everything,
  read the kernel, write only what differs), with the same split;
- rebuild everything: after the same kind of events, upstream's design: ``sync(full=True)`` with
  a plan that replaces every set and rewrites every chain (:func:`plan_rewrite_all`), and its
  ratio to the incremental sync.

The garbage collector is tuned as the agent tunes it (``kube_router.app.tune_gc``).

Usage: ``python bench/netpol.py [--scale 1.0] [--events 20] [--rebuild-events 3]
[--profile pod|policy|full]``. Needs root (``ip netns``, iptables, ipset).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import ipaddress
import logging
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

BARS = {
    "full_sync_s": 2.0,
    "pod_added_total_p50_ms": 100.0,
    "pod_added_total_p90_ms": 100.0,
    "policy_added_total_p50_ms": 250.0,
    "policy_added_total_p90_ms": 250.0,
}
N_NODES = 10
NODE_NAME = "node-0"


def node_ip(k: int) -> str:
    return f"172.16.0.{10 + k}"


def pod_ip(node: int, j: int) -> str:
    return f"10.{64 + node}.{j // 250}.{j % 250 + 2}"


# -- deterministic cluster -----------------------------------------------------------------


def make_namespace(i: int) -> dict[str, Any]:
    env = ("prod", "staging", "dev")[i % 3]
    labels = {"team": f"t{i % 10}", "env": env, "kubernetes.io/metadata.name": f"ns-{i}"}
    return {"metadata": {"name": f"ns-{i}", "labels": labels}}


def make_node(k: int) -> dict[str, Any]:
    return {
        "metadata": {"name": f"node-{k}", "labels": {"kubernetes.io/hostname": f"node-{k}"}},
        "spec": {"podCIDR": f"10.{64 + k}.0.0/16", "podCIDRs": [f"10.{64 + k}.0.0/16"]},
        "status": {"addresses": [{"type": "InternalIP", "address": node_ip(k)}]},
    }


def make_pod(i: int, n_ns: int, name: str | None = None, node: int | None = None) -> dict[str, Any]:
    """Pod i: namespace i % n_ns, node i % 10 (node-0 is this node), apps/tiers/teams cycling."""
    ns = i % n_ns
    k = i % N_NODES if node is None else node
    tier = ("web", "api", "db")[(i // n_ns) % 3]
    return {
        "metadata": {
            "name": name or f"pod-{i}",
            "namespace": f"ns-{ns}",
            "labels": {"app": f"app-{(i // n_ns) % 10}", "tier": tier, "team": f"t{ns % 10}"},
        },
        "spec": {
            "nodeName": f"node-{k}",
            "containers": [
                {
                    "name": "main",
                    "ports": [
                        {"name": "http", "containerPort": 8080 + (i % 2), "protocol": "TCP"},
                        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
                        {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                    ],
                }
            ],
        },
        "status": {
            "phase": "Running",
            "hostIP": node_ip(k),
            "podIP": pod_ip(k, i // N_NODES),
            "podIPs": [{"ip": pod_ip(k, i // N_NODES)}],
        },
    }


def make_policy(i: int, n_ns: int, name: str | None = None) -> dict[str, Any]:
    """Policy i, of one of five shapes (i % 5), in namespace i % n_ns."""
    ns = i % n_ns
    app = f"app-{(i // n_ns) % 10}"
    shape = i % 5
    spec: dict[str, Any]
    if shape == 0:  # podSelector + namespaceSelector (AND) ingress, numeric port
        spec = {
            "podSelector": {"matchLabels": {"app": app}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": {"team": f"t{(ns + 1) % 10}"}},
                            "podSelector": {
                                "matchExpressions": [
                                    {"key": "tier", "operator": "In", "values": ["web", "api"]}
                                ]
                            },
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": 8080}],
                }
            ],
        }
    elif shape == 1:  # ipBlock with except, named port
        spec = {
            "podSelector": {"matchLabels": {"tier": "web", "app": app}},
            "ingress": [
                {
                    "from": [
                        {
                            "ipBlock": {
                                "cidr": f"192.168.{i % 256}.0/24",
                                "except": [f"192.168.{i % 256}.128/25"],
                            }
                        },
                        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.200.0.0/16"]}},
                    ],
                    "ports": [{"protocol": "TCP", "port": "http"}],
                }
            ],
        }
    elif shape == 2:  # same-namespace podSelector, named port
        spec = {
            "podSelector": {"matchLabels": {"tier": "api"}},
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"tier": "web"}}}],
                    "ports": [{"protocol": "TCP", "port": "metrics"}, {"port": "http"}],
                }
            ],
        }
    elif shape == 3:  # egress with ports to a namespaceSelector, plus DNS anywhere
        spec = {
            "podSelector": {"matchLabels": {"app": app}},
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [{"namespaceSelector": {"matchLabels": {"env": "prod"}}}],
                    "ports": [{"protocol": "TCP", "port": 5432}, {"protocol": "TCP", "port": 8080}],
                },
                {"ports": [{"protocol": "UDP", "port": 53}]},
            ],
        }
    else:  # both directions: pods + ipBlock in, ipBlock out with a port range
        spec = {
            "podSelector": {
                "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["web"]}]
            },
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": [
                        {"podSelector": {"matchLabels": {"app": app}}},
                        {"ipBlock": {"cidr": "172.20.0.0/16", "except": ["172.20.5.0/24"]}},
                    ]
                }
            ],
            "egress": [
                {
                    "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"]}}],
                    "ports": [{"protocol": "TCP", "port": 30000, "endPort": 32767}],
                }
            ],
        }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name or f"pol-{i}", "namespace": f"ns-{ns}"},
        "spec": spec,
    }


# -- kernel namespace ----------------------------------------------------------------------


def _run(*argv: str) -> None:
    subprocess.run(list(argv), check=False, capture_output=True)


def make_netns() -> str:
    name = f"krb-{uuid.uuid4().hex[:10]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    return name


def remove_netns(name: str) -> None:
    for tool in ("iptables", "iptables-legacy"):
        _run("ip", "netns", "exec", name, tool, "-F")
        _run("ip", "netns", "exec", name, tool, "-X")
    _run("ip", "netns", "exec", name, "ipset", "destroy")
    _run("ip", "netns", "del", name)


def kernel_counts(netns: str) -> tuple[int, int, int, int]:
    """(chains, rules, ipsets, ipset entries) in the namespace's filter table and ipset."""
    save = subprocess.run(
        ["ip", "netns", "exec", netns, "iptables-save", "-t", "filter"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    chains = sum(1 for line in save.splitlines() if line.startswith(":"))
    rules = sum(1 for line in save.splitlines() if line.startswith("-A"))
    sets = subprocess.run(
        ["ip", "netns", "exec", netns, "ipset", "save"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    created = sum(1 for line in sets if line.startswith("create "))
    entries = sum(1 for line in sets if line.startswith("add "))
    return chains, rules, created, entries


# -- timing helpers ------------------------------------------------------------------------


class Clock:
    """Accumulates time spent in wrapped callables, per label, during one sync."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    def reset(self) -> None:
        self.spent = {}

    def add(self, label: str, seconds: float) -> None:
        self.spent[label] = self.spent.get(label, 0.0) + seconds

    def wrap_sync(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(label, time.perf_counter() - t0)

        return timed

    def wrap_async(self, label: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.add(label, time.perf_counter() - t0)

        return timed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


# -- upstream's design, for the ratio -------------------------------------------------------


SHADOW_PREFIX = "kube-router-u"  # upstream's per-rule hash:ip sets, rebuilt beside ours


def shadow_name(name: str) -> str:
    from kube_router.controllers.netpol import names

    return SHADOW_PREFIX + names.hash16(name)


def plan_rewrite_all(desired: Any, kernel: Any) -> Any:
    """What upstream does on every sync: every set replaced, every chain of ours rewritten.

    Upstream keeps every policy set as its own hash:ip set with all its members, where we keep
    list:sets of shared pools; so our sets are first made right as a full sync does, then each
    non-empty list:set is rebuilt as the hash:ip set upstream would have (under a shadow name,
    through a temporary set and swap as upstream does) and every other set is replaced."""
    from kube_router.controllers.netpol import plan as apply
    from kube_router.controllers.netpol.pieces import LIST_SET
    from kube_router.dataplane import ipset
    from kube_router.dataplane import iptables_parse as ipt

    before, after, tx = ipset.Transaction(), ipset.Transaction(), ipt.Transaction("filter")
    apply._sync_sets(before, desired.sets, kernel.sets)  # our own sets made right first
    for spec in desired.sets.values():
        if spec.kind != LIST_SET:
            if not spec.name.startswith("KUBE-POOL-"):
                before.replace(apply.set_spec(spec), spec.entries)
        elif spec.entries:
            members = desired.sets[spec.entries[0]].entries
            before.replace(ipset.SetSpec(shadow_name(spec.name), "hash:ip"), members)
    own = desired.own_chains()
    for chain in own:
        tx.declare(chain)
    for chain, rules in own.items():
        for rule in rules:
            tx.append(chain, rule)
    stale = sorted(c for c in kernel.table.chains if apply.is_own_chain(c) and c not in own)
    for chain in stale:
        tx.flush(chain)
    for chain in stale:
        tx.delete_chain(chain)
    for name in sorted(set(kernel.sets) - set(desired.sets)):
        after.destroy(name)
    lines = len(own) + sum(len(r) for r in own.values()) + 2 * len(stale)
    return apply.Plan(before, tx, after, lines)


# -- the benchmark -------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, netns: str) -> None:
        self.args = args
        self.netns = netns
        self.n_ns = max(1, round(100 * args.scale))
        self.n_pods = max(N_NODES, round(5000 * args.scale))
        self.n_pol = max(5, round(1000 * args.scale))
        self.clock = Clock()
        self.result: dict[str, float] = {}
        self.parts: dict[str, list[dict[str, float]]] = {}
        self.profile = ""
        self.arrived: dict[str, float] = {}
        self.wake = asyncio.Event()
        self.seq = 0
        self.bench_pod_ips: list[str] = []
        self.ctrl: Any = None
        self.lab: Any = None

    async def run(self) -> None:
        from kube_router.k8s.client import KubeClient
        from kube_router.k8s.informers import Informers
        from kube_router_lab.apiserver import LabServer

        lab = LabServer("127.0.0.1", 0, bookmark_interval=5.0)
        lab.store.load("nodes", [make_node(k) for k in range(N_NODES)])
        lab.store.load("namespaces", [make_namespace(i) for i in range(self.n_ns)])
        lab.store.load("pods", [make_pod(i, self.n_ns) for i in range(self.n_pods)])
        lab.store.load("networkpolicies", [make_policy(i, self.n_ns) for i in range(self.n_pol)])
        await lab.start()
        self.lab = lab
        informers: Informers | None = None
        client: KubeClient | None = None
        try:
            with tempfile.TemporaryDirectory() as tmp:
                lab.write_kubeconfig(Path(tmp) / "kubeconfig")
                client = await KubeClient.from_flags(str(Path(tmp) / "kubeconfig"))
            informers = Informers(client)
            informers.start()
            await informers.wait_for_cache_sync(120)
            await self.build_controller(client, informers)
            await self.measure(informers)
        finally:
            if informers is not None:
                await informers.stop()
            if client is not None:
                await client.close()
            await lab.stop()

    async def build_controller(self, client: Any, informers: Any) -> None:
        from kube_router.config import parse
        from kube_router.controllers.base import Barriers, RunContext
        from kube_router.controllers.netpol.controller import NetworkPolicyController
        from kube_router.controllers.netpol.ports import Dataplane
        from kube_router.dataplane.exec import Executor
        from kube_router.health import HealthChecker
        from kube_router.node import NodeIdentity

        me = ipaddress.ip_address(node_ip(0))
        ctx = RunContext(
            parse(["--iptables-sync-period=5m"], {}),
            client,
            informers,
            NodeIdentity(NODE_NAME, me, me, None, None),
            HealthChecker(),
            None,
            Barriers(),
        )
        dataplane = await Dataplane.real(Executor.in_netns(self.netns), ["IPv4"])
        # Time the kernel I/O and the compile by wrapping them; the controller is untouched.
        c = self.clock
        dataplane.ipsets.restore = c.wrap_async("ipset_restore", dataplane.ipsets.restore)
        dataplane.ipsets.save = c.wrap_async("kernel_read", dataplane.ipsets.save)
        for tables in dataplane.iptables.values():
            tables.restore = c.wrap_async("iptables_restore", tables.restore)  # type: ignore[method-assign]
            tables.save = c.wrap_async("kernel_read", tables.save)  # type: ignore[method-assign]
        ctrl = NetworkPolicyController(ctx, dataplane)
        ctrl.desired = c.wrap_sync("compile", ctrl.desired)  # type: ignore[method-assign]
        # A controller that tracks changes registers its handlers in start() (ports are given).
        if hasattr(ctrl, "start"):
            await ctrl.start()
        self.ctrl = ctrl

    async def measure(self, informers: Any) -> None:
        from kube_router.k8s.informer import FuncHandler

        pods = informers.pods.store.list()
        self.result["objects_pods"] = len(pods)
        self.result["objects_pods_local"] = sum(1 for p in pods if p.status.host_ip == node_ip(0))
        self.result["objects_namespaces"] = len(informers.namespaces.store.list())
        self.result["objects_policies"] = len(informers.networkpolicies.store.list())

        # First full sync, on an empty namespace; then the periodic one (kernel already right).
        self.result["full_sync_s"] = await self.timed_sync(full=True, prefix="full_sync")
        self.breakdown("full_sync")
        chains, rules, sets, entries = kernel_counts(self.netns)
        self.result["kernel_chains"] = chains
        self.result["kernel_rules"] = rules
        self.result["kernel_ipsets"] = sets
        self.result["kernel_ipset_entries"] = entries
        self.result["full_sync_again_s"] = await self.timed_sync(full=True, prefix="periodic")
        self.breakdown("periodic")
        await self.ctrl.sync(full=False)  # nothing changed: a no-op baseline
        self.result["noop_sync_ms"] = await self.timed_sync(full=False, prefix="") * 1000

        # Our handler comes after the controller's, so it sees each event last.
        seen = FuncHandler[Any](add=self.seen)
        informers.pods.add_handler(seen)
        informers.networkpolicies.add_handler(seen)
        for label, make in (("pod_added", self.new_pod), ("policy_added", self.new_policy)):
            watch, syncs, totals = [], [], []
            for _ in range(self.args.events):
                w = await self.event(*make())
                s = await self.timed_sync(full=False, prefix=f"{label}_sync")
                watch.append(w * 1000)
                syncs.append(s * 1000)
                totals.append((w + s) * 1000)
            self.summarize(label + "_watch", watch)
            self.summarize(label + "_sync", syncs)
            self.summarize(label + "_total", totals)
            self.breakdown(f"{label}_sync")
            rebuilds = []  # the same kind of event, then rebuild everything
            for _ in range(self.args.rebuild_events):
                await self.event(*make())
                rebuilds.append(await self.rebuild_sync() * 1000)
            if rebuilds:
                self.summarize(label + "_rebuild_sync", rebuilds)
                ratio = statistics.median(rebuilds) / statistics.median(syncs)
                self.result[f"{label}_rebuild_ratio_x"] = ratio
        self.result["check_bench_pods_in_kernel"] = self.pods_in_kernel()
        if self.args.profile:
            kind = self.args.profile
            if kind != "full":
                await self.event(*(self.new_pod() if kind == "pod" else self.new_policy()))
            prof = cProfile.Profile()
            prof.enable()
            await self.ctrl.sync(full=kind == "full")
            prof.disable()
            out = io.StringIO()
            stats = pstats.Stats(prof, stream=out)
            stats.sort_stats("cumulative").print_stats(40)
            stats.sort_stats("tottime").print_stats(25)
            self.profile = out.getvalue()

    def seen(self, obj: Any) -> None:
        if obj.metadata.name.startswith("bench-"):
            self.arrived[f"{obj.metadata.namespace}/{obj.metadata.name}"] = time.perf_counter()
            self.wake.set()

    async def event(self, resource: str, obj: dict[str, Any]) -> float:
        """Write to the lab store; seconds until our informer handler saw it."""
        key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
        self.wake.clear()
        t0 = time.perf_counter()
        self.lab.store.create(resource, obj)
        while key not in self.arrived:
            await asyncio.wait_for(self.wake.wait(), 10)
            self.wake.clear()
        return self.arrived[key] - t0

    def new_pod(self) -> tuple[str, dict[str, Any]]:
        """A pod on this node with a fresh IP, spread over namespaces, apps and tiers."""
        n = self.seq = self.seq + 1
        pod = make_pod(7 * n + 3, self.n_ns, name=f"bench-pod-{n}", node=0)
        ip = f"10.64.{200 + n // 250}.{n % 250 + 2}"
        pod["status"]["podIP"] = ip
        pod["status"]["podIPs"] = [{"ip": ip}]
        self.bench_pod_ips.append(ip)
        return "pods", pod

    def new_policy(self) -> tuple[str, dict[str, Any]]:
        n = self.seq = self.seq + 1
        return "networkpolicies", make_policy(n, self.n_ns, name=f"bench-pol-{n}")

    def pods_in_kernel(self) -> float:
        """Share of the added pods whose IP the kernel's rules name (their jumps)."""
        save = subprocess.run(
            ["ip", "netns", "exec", self.netns, "iptables-save", "-t", "filter"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        found = sum(1 for ip in self.bench_pod_ips if f" {ip}/32 " in save or f" {ip} " in save)
        return found / max(1, len(self.bench_pod_ips))

    async def rebuild_sync(self) -> float:
        """A full sync through upstream's plan: every set and chain rewritten. The shadow sets
        are destroyed afterwards (not timed), so that they do not slow what follows."""
        from kube_router.controllers.netpol import plan as apply

        ours = apply.plan_full
        apply.plan_full = plan_rewrite_all
        try:
            took = await self.timed_sync(full=True, prefix="")
        finally:
            apply.plan_full = ours
        listed = subprocess.run(
            ["ip", "netns", "exec", self.netns, "ipset", "list", "-n"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        shadows = "".join(f"destroy {n}\n" for n in listed if n.startswith(SHADOW_PREFIX))
        subprocess.run(
            ["ip", "netns", "exec", self.netns, "ipset", "restore"],
            input=shadows,
            check=True,
            text=True,
        )
        return took

    async def timed_sync(self, full: bool, prefix: str) -> float:
        self.clock.reset()
        t0 = time.perf_counter()
        await self.ctrl.sync(full=full)
        total = time.perf_counter() - t0
        if prefix:
            parts = dict(self.clock.spent)
            parts["plan"] = total - sum(parts.values())  # Python outside compile and kernel I/O
            self.parts.setdefault(prefix, []).append(parts)
        return total

    def breakdown(self, prefix: str) -> None:
        runs = self.parts.get(prefix, [])
        unit, scale = ("s", 1.0) if len(runs) == 1 else ("p50_ms", 1000.0)
        for k in ("compile", "plan", "kernel_read", "ipset_restore", "iptables_restore"):
            self.result[f"{prefix}_{k}_{unit}"] = statistics.median(
                r.get(k, 0.0) * scale for r in runs
            )

    def summarize(self, name: str, values: list[float]) -> None:
        self.result[f"{name}_p50_ms"] = statistics.median(values)
        self.result[f"{name}_p90_ms"] = pct(values, 0.9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--rebuild-events", type=int, default=3)
    parser.add_argument("--profile", choices=("pod", "policy", "full"), default=None)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (ip netns, iptables, ipset)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    from kube_router.app import tune_gc

    tune_gc()  # as the agent runs: its GC thresholds, not Python's defaults
    netns = make_netns()
    bench = Bench(args, netns)
    try:
        asyncio.run(bench.run())
    finally:
        remove_netns(netns)
    cmd = f"python bench/netpol.py --scale {args.scale} --events {args.events}"
    cmd += f" --rebuild-events {args.rebuild_events}"
    if args.profile:
        cmd += f" --profile {args.profile}"
    print(
        f"# netpol benchmark, {time.strftime('%Y-%m-%d')}, {platform.node()}, "
        f"{os.cpu_count()} CPUs, kernel {platform.release()}, Python {platform.python_version()}"
    )
    print(f"# command: {cmd}")
    import kube_router

    print(f"# kube_router from {Path(kube_router.__file__).parent}")
    ok = True
    for key, value in bench.result.items():
        bar = BARS.get(key)
        verdict = ""
        if bar is not None:
            verdict = f"  (bar <= {bar:g}: {'ok' if value <= bar else 'MISSED'})"
            ok &= value <= bar
        print(f"{key:>44} = {value:10.3f}{verdict}")
    if bench.profile:
        print(bench.profile)
    return 0 if ok or args.scale != 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
