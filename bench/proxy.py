"""Service proxy benchmark: cold IPVS sync, one endpoint change, memory; fake port and real kernel.

At ``--scale 1.0``: 10,000 Services with one EndpointSlice each, 100,000 IPVS real servers, on
this node (node-0 of 100; endpoints spread over every node). Shapes: 8 in 10 ClusterIP with one
port and 10 endpoints; 1 in 10 NodePort with 5 endpoints (a cluster-IP and a node-port virtual
service, 5 real servers each); 1 in 10 ClusterIP with two ports and 5 endpoints. So every Service
gives 10 real servers: 12,000 virtual services, 100,000 real servers. Reported:

- cold sync (``--runs``, p50): from the objects to the transaction handed to the port:
  ``service_endpoints`` for every Service, ``IPVSSync.update`` for every Service, then
  ``sync(full=True)`` on an empty port; the port's own time (the fake applying the transaction,
  or the kernel) is reported apart;
- one endpoint change (``--changes``, p50/p90): a new EndpointSlice for one Service (one endpoint
  added, removed or replaced, in turn) handed to the handler as a watch would deliver it, to the
  port: the handler (:class:`Agent`) recomputes that Service's endpoints and updates it, then a
  partial sync; the fake's point is ``apply`` called, the real adapter's the first netlink batch
  sent (and the acknowledgements back);
- resident memory: VmRSS before anything, with the objects, and with the agent's state after a
  cold sync (its port keeps nothing, as the kernel holds the tables); VmHWM is the peak;
- ``--vm``: the host figures, then the cold sync and ``--vm-changes`` changes in a qemu VM against
  the real kernel's IPVS (``RealIPVS`` in a fresh network namespace with lo up);
  ``/proc/net/ip_vs`` must equal what the agent recorded as applied, after both. The cold compute
  (everything but the port, pure CPU) timed in both gives the VM's slowdown, by which the VM's
  kernel figures are divided for a native estimate.

Usage: ``python bench/proxy.py [--scale 1.0] [--runs 3] [--changes 300] [--vm] [--vm-changes 200]
[--json] [--profile cold|change] [--gc-threshold N]``. The VM run waits for the VM lock
(``flock /tmp/kr-vm.lock``). Figures and findings: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import random
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from kube_router.controllers.proxy.desired import NodeAddresses, Settings
from kube_router.controllers.proxy.endpoints import (
    SERVICE_NAME_LABEL,
    EndpointInfo,
    service_endpoints,
    slice_service,
)
from kube_router.controllers.proxy.ipvs_sync import IPVSSync
from kube_router.dataplane import ipvs
from kube_router.dataplane.ipvs_fake import FakeIPVS
from kube_router.k8s.models import EndpointSlice, Service

DASH = "\u2013"  # an empty cell, and the mark of a part of the row above
TIMES = "\u00d7"
BARS = {"cold_handed_s": 3.0, "change_p50_ms": 50.0, "change_p90_ms": 50.0}
N_SERVICES = 10_000
N_NODES = 100
N_NAMESPACES = 100
NODE_NAME = "node-0"
ENDPOINTS_PER_SERVICE = 10  # IPVS real servers per Service, whatever its shape
NODEPORT_BASE = 30000
PROFILE_LINES = 30
VM_LOCK = "/tmp/kr-vm.lock"
VM_MEMORY_MB = 3072
VM_MODULES = "ip_vs,ip_vs_rr"
VM_TIMEOUT_S = 1200
JSON_MARK = "PROXY-BENCH-JSON "
CLOCKSOURCE = "/sys/devices/system/clocksource/clocksource0/current_clocksource"


def node_ip(k: int) -> str:
    return f"172.16.{k // 250}.{k % 250 + 2}"


def pod_ip(n: int) -> str:
    return f"10.{64 + n // 62500}.{(n // 250) % 250}.{n % 250 + 2}"


def cluster_ip(i: int) -> str:
    return f"10.96.{i // 250}.{i % 250 + 2}"


# -- objects ---------------------------------------------------------------------------------


def shape(i: int) -> tuple[str, list[tuple[str, int, int]], int]:
    """Service i's type, ports (name, port, target) and endpoint count."""
    if i % 10 == 0:
        return "NodePort", [("http", 80, 8080)], ENDPOINTS_PER_SERVICE // 2
    if i % 10 == 1:
        return "ClusterIP", [("http", 80, 8080), ("https", 443, 8443)], ENDPOINTS_PER_SERVICE // 2
    return "ClusterIP", [("http", 80, 8080)], ENDPOINTS_PER_SERVICE


def service_body(i: int) -> dict[str, Any]:
    kind, ports, _ = shape(i)
    spec_ports: list[dict[str, Any]] = [
        {"name": name, "port": port, "targetPort": target, "protocol": "TCP"}
        for name, port, target in ports
    ]
    if kind == "NodePort":
        spec_ports[0]["nodePort"] = NODEPORT_BASE + i // 10
    return {
        "metadata": {"name": f"svc-{i}", "namespace": f"ns-{i % N_NAMESPACES}"},
        "spec": {
            "type": kind,
            "selector": {"app": f"app-{i}"},
            "clusterIP": cluster_ip(i),
            "clusterIPs": [cluster_ip(i)],
            "ports": spec_ports,
            "ipFamilies": ["IPv4"],
            "sessionAffinity": "None",
        },
    }


def slice_body(i: int, pods: list[int]) -> dict[str, Any]:
    """Service i's EndpointSlice holding pods (numbers: pod n has pod_ip(n), node n % 100)."""
    _, ports, _ = shape(i)
    return {
        "metadata": {
            "name": f"svc-{i}-abcde",
            "namespace": f"ns-{i % N_NAMESPACES}",
            "labels": {SERVICE_NAME_LABEL: f"svc-{i}"},
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [pod_ip(n)],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": f"node-{n % N_NODES}",
            }
            for n in pods
        ],
        "ports": [{"name": name, "port": target, "protocol": "TCP"} for name, _, target in ports],
    }


@dataclass
class Cluster:
    """The Services and their slices' pods (the bench's truth; events change it)."""

    n: int
    pods: list[list[int]] = field(default_factory=list)
    next_pod: int = 0

    @classmethod
    def make(cls, scale: float) -> Cluster:
        cluster = cls(max(1, int(N_SERVICES * scale)))
        for i in range(cluster.n):
            cluster.pods.append([cluster.new_pod() for _ in range(shape(i)[2])])
        return cluster

    def new_pod(self) -> int:
        self.next_pod += 1
        return self.next_pod - 1

    def services(self) -> Iterator[Service]:
        return (msgspec.convert(service_body(i), Service) for i in range(self.n))

    def slices(self) -> Iterator[EndpointSlice]:
        return (msgspec.convert(slice_body(i, self.pods[i]), EndpointSlice) for i in range(self.n))

    def change(self, j: int, rng: random.Random) -> EndpointSlice:
        """Change j: one endpoint added, removed or replaced (j % 3) in a random Service."""
        i = rng.randrange(self.n)
        pods = self.pods[i]
        if j % 3 == 0 or len(pods) <= 1:
            pods.append(self.new_pod())
        elif j % 3 == 1:
            pods.pop(rng.randrange(len(pods)))
        else:
            pods[rng.randrange(len(pods))] = self.new_pod()
        return msgspec.convert(slice_body(i, pods), EndpointSlice)


# -- the agent's side -------------------------------------------------------------------------


class Agent:
    """What the proxy controller's handlers do with Services and EndpointSlices.

    Stand-in until ``controllers/proxy/controller.py`` lands: swap :meth:`on_slice` (and
    :meth:`flush`) for its handler and sync, nothing else here needs to change."""

    def __init__(self, port: ipvs.IPVS) -> None:
        self.node = NodeAddresses({"ipv4": node_ip(0)})
        self.sync = IPVSSync(port, Settings(), self.node)
        self.services: dict[str, Service] = {}
        self.slices: dict[str, dict[str, EndpointSlice]] = {}
        self.touched: set[str] = set()  # Services an event replanned

    def load(self, services: Iterator[Service], slices: Iterator[EndpointSlice]) -> None:
        """The informers' stores after the cold list (not timed)."""
        for svc in services:
            self.services[f"{svc.metadata.namespace}/{svc.metadata.name}"] = svc
        for es in slices:
            name = slice_service(es)
            if name is not None:
                self.slices.setdefault(name, {})[es.metadata.name] = es

    def endpoints(self, name: str) -> dict[str, list[EndpointInfo]]:
        return service_endpoints(self.slices.get(name, {}).values(), NODE_NAME)

    def on_slice(self, es: EndpointSlice) -> None:
        """An EndpointSlice added or updated: replan its Service."""
        name = slice_service(es)
        if name is None:
            return
        self.slices.setdefault(name, {})[es.metadata.name] = es
        self.touched.add(name)
        self.sync.update(name, self.services.get(name), self.endpoints(name))

    async def flush(self) -> None:
        await self.sync.sync(full=False)


class TimedPort:
    """The port with the time it spends and when it was handed a transaction."""

    def __init__(self, inner: ipvs.IPVS) -> None:
        self.inner = inner
        self.last = ipvs.Transaction()
        self.reset()

    def reset(self) -> None:
        self.dump_s = self.apply_s = self.handed_at = self.sent_at = self.acked_at = 0.0
        self.ops = 0

    async def dump(self) -> dict[ipvs.ServiceKey, ipvs.ServiceState]:
        t0 = time.perf_counter()
        try:
            return await self.inner.dump()
        finally:
            self.dump_s += time.perf_counter() - t0

    async def apply(self, tx: ipvs.Transaction) -> None:
        self.handed_at = t0 = time.perf_counter()
        self.ops += len(tx)
        self.last = tx
        try:
            await self.inner.apply(tx)
        finally:
            self.acked_at = time.perf_counter()
            self.apply_s += self.acked_at - t0

    async def timeouts(self) -> ipvs.Timeouts:
        return await self.inner.timeouts()

    async def set_timeouts(self, timeouts: ipvs.Timeouts) -> None:
        await self.inner.set_timeouts(timeouts)


class NullPort(FakeIPVS):
    """Keeps nothing: the agent's own memory and pure compute, the kernel's part left out."""

    async def apply(self, tx: ipvs.Transaction) -> None:
        self.applied += 1


# -- measures -------------------------------------------------------------------------------


def vm_rss_kib(field_name: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise LookupError(f"{field_name} not in /proc/self/status")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def cold_sync(cluster: Cluster, port: ipvs.IPVS) -> tuple[Agent, dict[str, float]]:
    """One cold sync from the objects; its phases in seconds."""
    timed = TimedPort(port)
    agent = Agent(timed)
    agent.load(cluster.services(), cluster.slices())
    gc.collect()
    t0 = time.perf_counter()
    eps = {name: agent.endpoints(name) for name in agent.services}
    t1 = time.perf_counter()
    for name, svc in agent.services.items():
        agent.sync.update(name, svc, eps[name])
    t2 = time.perf_counter()
    await agent.sync.sync(full=True)
    t3 = time.perf_counter()
    phases = {
        "endpoints": t1 - t0,
        "update": t2 - t1,
        "plan": t3 - t2 - timed.dump_s - timed.apply_s,
        "dump": timed.dump_s,
        "port": timed.apply_s,
        "ops": float(timed.ops),
    }
    phases["handed"] = t3 - t0 - timed.apply_s
    phases["total"] = t3 - t0
    return agent, phases


def hook_sent(port: Any, timed: TimedPort) -> None:
    """Record when a RealIPVS sends its first netlink batch of each apply."""
    sock = port._socket()
    flush = sock._flush

    def first_sent(*args: Any) -> None:
        if not timed.sent_at:
            timed.sent_at = time.perf_counter()
        flush(*args)

    sock._flush = first_sent


async def changes(agent: Agent, cluster: Cluster, n: int, seed: int = 1) -> dict[str, list[float]]:
    """n endpoint changes through the handler; milliseconds from the event to each point."""
    timed = agent.sync.port
    assert isinstance(timed, TimedPort)
    rng = random.Random(seed)
    out: dict[str, list[float]] = {"handed": [], "sent": [], "acked": [], "done": [], "ops": []}
    for j in range(n):
        es = cluster.change(j, rng)
        timed.reset()
        t0 = time.perf_counter()
        agent.on_slice(es)
        await agent.flush()
        t1 = time.perf_counter()
        out["handed"].append((timed.handed_at - t0) * 1000)
        out["sent"].append(((timed.sent_at or timed.handed_at) - t0) * 1000)
        out["acked"].append((timed.acked_at - t0) * 1000)
        out["done"].append((t1 - t0) * 1000)
        out["ops"].append(float(timed.ops))
    return out


def summarize_changes(prefix: str, got: dict[str, list[float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, values in got.items():
        name = prefix if key == "sent" else f"{prefix}_{key}"
        out[f"{name}_p50_ms" if key != "ops" else f"{name}_p50"] = statistics.median(values)
        if key != "ops":
            out[f"{name}_p90_ms"] = pct(values, 0.9)
    return out


async def expected_tables(cluster: Cluster) -> dict[Any, Any]:
    """The tables a fresh cold sync of the cluster as it is now gives (the fake's)."""
    fake = FakeIPVS()
    await cold_sync(cluster, fake)
    return ipvs.plain(await fake.dump())


async def memory(scale: float) -> dict[str, float]:
    gc.collect()
    base = vm_rss_kib()
    cluster = Cluster.make(scale)
    agent = Agent(NullPort())
    agent.load(cluster.services(), cluster.slices())
    gc.collect()
    objects = vm_rss_kib()
    for name, svc in agent.services.items():
        agent.sync.update(name, svc, agent.endpoints(name))
    await agent.sync.sync(full=True)
    gc.collect()
    state = vm_rss_kib()
    del agent
    return {
        "rss_base_mib": base / 1024,
        "rss_objects_mib": objects / 1024,
        "rss_agent_mib": state / 1024,
        "rss_peak_mib": vm_rss_kib("VmHWM") / 1024,
    }


def profiled(enabled: bool) -> cProfile.Profile | None:
    if not enabled:
        return None
    prof = cProfile.Profile()
    prof.enable()
    return prof


def profile_text(prof: cProfile.Profile | None) -> str:
    if prof is None:
        return ""
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(PROFILE_LINES)
    stats.sort_stats("tottime").print_stats(PROFILE_LINES)
    return out.getvalue()


# -- host run -------------------------------------------------------------------------------


async def host_run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = await memory(args.scale)
    runs: list[dict[str, float]] = []
    for _ in range(args.runs - 1):
        runs.append((await cold_sync(Cluster.make(args.scale), NullPort()))[1])
    cluster = Cluster.make(args.scale)
    fake = FakeIPVS()
    prof = profiled(args.profile == "cold")
    agent, last = await cold_sync(cluster, fake)
    result["profile_cold"] = profile_text(prof)
    runs.append(last)
    tables = await fake.dump()
    result["virtual_services"] = float(len(tables))
    result["real_servers"] = float(sum(len(s.dests) for s in tables.values()))
    result["services"] = float(cluster.n)
    for key in runs[0]:
        result[f"cold_{key}_s" if key != "ops" else "cold_ops"] = statistics.median(
            r[key] for r in runs
        )
    result["cold_port_s"] = last["port"]  # only the last run applied to the fake
    result["cold_handed_runs_s"] = [r["handed"] for r in runs]
    assert isinstance(agent.sync.port, TimedPort)
    result.update(adapter_cpu(agent.sync.port.last))
    prof = profiled(args.profile == "change")
    got = await changes(agent, cluster, args.changes)
    result["profile_change"] = profile_text(prof)
    result.update(summarize_changes("change", got))
    result["tables_match"] = ipvs.plain(await fake.dump()) == await expected_tables(cluster)
    return result


def adapter_cpu(tx: ipvs.Transaction) -> dict[str, float]:
    """What either port spends checking the cold transaction, and what the netlink adapter
    spends encoding it, before the kernel sees a byte (host CPU, no kernel needed)."""
    from kube_router.dataplane import ipvs_netlink as nl

    t0 = time.perf_counter()
    ipvs.validate(tx.ops)
    t1 = time.perf_counter()
    for seq, op in enumerate(tx.ops):
        cmd, payload = nl.op_payload(op)
        nl.message(0, nl.NLM_F_REQUEST | nl.NLM_F_ACK, seq, cmd, payload)
    t2 = time.perf_counter()
    return {"cold_validate_s": t1 - t0, "cold_encode_s": t2 - t1}


# -- VM run ----------------------------------------------------------------------------------


def make_netns() -> str:
    name = f"krb-{uuid.uuid4().hex[:10]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    return name


FORWARD = {"Masq": ipvs.FWD_MASQ, "Local": ipvs.FWD_LOCAL, "Tunnel": ipvs.FWD_TUNNEL,
           "Route": ipvs.FWD_DROUTE}  # fmt: skip
Tables = dict[str, dict[tuple[str, int], tuple[int, int]]]  # service -> real server -> fwd, weight


def _hex_endpoint(text: str) -> tuple[str, int]:
    address, port = text.rsplit(":", 1)
    return socket.inet_ntoa(bytes.fromhex(address)), int(port, 16)


def proc_tables(netns: str) -> Tables:
    """The namespace's IPVS tables as ``/proc/net/ip_vs`` lists them, read apart from the
    adapter: one read of the whole table instead of a netlink dump per service."""
    argv = ["ip", "netns", "exec", netns, "cat", "/proc/net/ip_vs"]
    return parse_proc(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)


def parse_proc(text: str) -> Tables:
    """``/proc/net/ip_vs`` (IPv4 services) as service -> real server -> (forward, weight)."""
    out: Tables = {}
    dests: dict[tuple[str, int], tuple[int, int]] = {}
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["->"] and words[1] != "RemoteAddress:Port":
            dests[_hex_endpoint(words[1])] = (FORWARD[words[2]], int(words[3]))
        elif words and words[0] in ("TCP", "UDP", "SCTP"):
            address, port = _hex_endpoint(words[1])
            dests = out.setdefault(f"{words[0].lower()}/{address}:{port}", {})
    return out


def record_tables(agent: Agent) -> Tables:
    """What the agent believes the kernel holds, in :func:`proc_tables`' shape."""
    return {
        str(key): {dk: (d.forward, d.weight) for dk, d in dests.items()}
        for key, (_, dests) in agent.sync.applied.items()
    }


def kernel_check(prefix: str, netns: str, agent: Agent) -> dict[str, Any]:
    t0 = time.perf_counter()
    tables = proc_tables(netns)
    return {
        f"{prefix}_read_s": time.perf_counter() - t0,
        f"{prefix}_virtual_services": float(len(tables)),
        f"{prefix}_real_servers": float(sum(len(d) for d in tables.values())),
        f"{prefix}_match": tables == record_tables(agent),
    }


async def kernel_run(args: argparse.Namespace) -> dict[str, Any]:
    """In a fresh namespace of a kernel with IPVS: cold sync, check, changes, check."""
    from kube_router.dataplane.ipvs_netlink import RealIPVS

    result: dict[str, Any] = {
        "kernel": platform.release(),
        "clocksource": Path(CLOCKSOURCE).read_text().strip(),
    }
    netns = make_netns()
    real = RealIPVS(netns)
    try:
        cluster = Cluster.make(args.scale)
        agent, cold = await cold_sync(cluster, real)
        result.update({f"kernel_cold_{k}_s": v for k, v in cold.items() if k != "ops"})
        result.update(kernel_check("kernel_cold", netns, agent))
        assert isinstance(agent.sync.port, TimedPort)
        hook_sent(real, agent.sync.port)
        got = await changes(agent, cluster, args.vm_changes)
        result.update(summarize_changes("kernel_change", got))
        result.update(kernel_check("kernel_changed", netns, agent))
    finally:
        real.close()
        subprocess.run(["ip", "netns", "del", netns], check=False)
    return result


def vm_run(args: argparse.Namespace) -> dict[str, Any]:
    """This script with --in-vm in a qemu VM (under the VM lock); its JSON."""
    script = Path(__file__).resolve()
    argv = [
        *("flock", VM_LOCK, sys.executable, "-m", "kube_router.lab.vm", "run"),
        *("--memory", str(VM_MEMORY_MB), "--timeout", str(VM_TIMEOUT_S), "--modprobe", VM_MODULES),
        *("--", sys.executable, str(script), "--in-vm"),
        *("--scale", str(args.scale), "--vm-changes", str(args.vm_changes)),
        *("--gc-threshold", str(args.gc_threshold)),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(JSON_MARK):
            found: dict[str, Any] = json.loads(line[len(JSON_MARK) :])
            found["vm_wall_s"] = time.perf_counter() - t0
            return found
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
    raise RuntimeError(f"the VM run gave no result (exit {proc.returncode}):\n{tail}")


def add_vm_figures(result: dict[str, Any], vm: dict[str, Any]) -> None:
    """The VM's figures, its slowdown (the cold compute: pure CPU, the same work in both) and
    the kernel figures divided by it (an estimate: emulated kernel code slows down unevenly)."""
    result.update(vm)
    compute = vm["kernel_cold_handed_s"] - vm["kernel_cold_dump_s"]
    slowdown = compute / (result["cold_handed_s"] - result["cold_dump_s"])
    result["vm_slowdown"] = slowdown
    for key in ("kernel_cold_port_s", "kernel_cold_handed_s", "kernel_change_p50_ms"):
        result[f"{key}_native_est"] = vm[key] / slowdown
    result["kernel_change_acked_p50_ms_native_est"] = vm["kernel_change_acked_p50_ms"] / slowdown


# -- report ----------------------------------------------------------------------------------


def _bar(key: str, value: float) -> str:
    bar = BARS.get(key)
    if bar is None:
        return DASH
    unit = "s" if key.endswith("_s") else "ms"
    return f"{bar:g} {unit}" + ("" if value <= bar else " **MISSED**")


def _ms(r: dict[str, Any], key: str) -> str:
    return f"{r[key + '_p50_ms']:.2f} / {r[key + '_p90_ms']:.2f} ms"


def table(r: dict[str, Any], runs: int) -> list[str]:
    cold_runs = " / ".join(f"{v:.2f}" for v in r["cold_handed_runs_s"])
    rows = [
        ("Services / virtual services / real servers", DASH,
         f"{r['services']:,.0f} / {r['virtual_services']:,.0f} / {r['real_servers']:,.0f}"),
        (f"cold sync: computed and handed to the port, p50 of {runs}",
         _bar("cold_handed_s", r["cold_handed_s"]), f"{r['cold_handed_s']:.2f} s ({cold_runs})"),
        (f"{DASH} EndpointSlices to endpoints", DASH, f"{r['cold_endpoints_s']:.2f} s"),
        (f"{DASH} `IPVSSync.update` of every Service", DASH, f"{r['cold_update_s']:.2f} s"),
        (f"{DASH} `sync(full=True)`: dump and plan", DASH,
         f"{r['cold_plan_s'] + r['cold_dump_s']:.2f} s ({r['cold_ops']:,.0f} operations)"),
        ("cold sync: the fake applying (not in the bar)", DASH, f"{r['cold_port_s']:.2f} s"),
        (f"{DASH} `ipvs.validate` (both ports) / netlink encoding (real port)", DASH,
         f"{r['cold_validate_s']:.2f} / {r['cold_encode_s']:.2f} s"),
        ("endpoint change: event to `apply`, p50", _bar("change_p50_ms", r["change_p50_ms"]),
         f"{r['change_p50_ms']:.2f} ms ({r['change_ops_p50']:.0f} operations)"),
        ("endpoint change: event to `apply`, p90", _bar("change_p90_ms", r["change_p90_ms"]),
         f"{r['change_p90_ms']:.2f} ms"),
        (f"{DASH} to the fake applied / to `sync` returned, p50 / p90", DASH,
         f"{_ms(r, 'change_acked')}; {_ms(r, 'change_done')}"),
        ("resident memory: before / objects / agent after cold sync / peak", DASH,
         f"{r['rss_base_mib']:.0f} / {r['rss_objects_mib']:.0f} / {r['rss_agent_mib']:.0f} / "
         f"{r['rss_peak_mib']:.0f} MiB"),
        ("fake tables equal a fresh cold sync after the changes", DASH, str(r["tables_match"])),
    ]  # fmt: skip
    if "vm_slowdown" in r:
        rows += vm_rows(r)
    lines = ["| Measure | Bar | Result |", "|---|---|---|"]
    return lines + [f"| {a} | {b} | {c} |" for a, b, c in rows]


def vm_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    def est(key: str, unit: str) -> str:
        return f"{r[key]:.2f} {unit} (native est. {r[key + '_native_est']:.2f} {unit})"

    return [
        ("VM slowdown: cold compute in the VM / on the host", DASH,
         f"{r['vm_slowdown']:.1f}{TIMES} (kernel {r['kernel']}, clock {r['clocksource']})"),
        ("VM cold sync: computed and handed to the port", DASH, est("kernel_cold_handed_s", "s")),
        ("VM cold sync: the real port applying (validate, encode, kernel)", DASH,
         est("kernel_cold_port_s", "s")),
        ("VM kernel after the cold sync: virtual services / real servers, equal to the record",
         DASH, f"{r['kernel_cold_virtual_services']:,.0f} / "
         f"{r['kernel_cold_real_servers']:,.0f}, {r['kernel_cold_match']}"),
        ("VM endpoint change: event to first netlink batch sent, p50 / p90", DASH,
         f"{_ms(r, 'kernel_change')} (p50 native est. "
         f"{r['kernel_change_p50_ms_native_est']:.2f} ms)"),
        ("VM endpoint change: event to kernel acknowledged, p50 / p90", DASH,
         f"{_ms(r, 'kernel_change_acked')} (p50 native est. "
         f"{r['kernel_change_acked_p50_ms_native_est']:.2f} ms)"),
        (f"{DASH} to `sync` returned, p50 / p90", DASH, _ms(r, "kernel_change_done")),
        ("VM kernel after the changes: equal to the record", DASH,
         str(r["kernel_changed_match"])),
    ]  # fmt: skip


def missed(r: dict[str, Any]) -> list[str]:
    return [key for key, bar in BARS.items() if r[key] > bar]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3, help="cold syncs (p50)")
    parser.add_argument("--changes", type=int, default=300, help="endpoint changes (p50/p90)")
    parser.add_argument("--vm", action="store_true", help="also against the real kernel in a VM")
    parser.add_argument("--vm-changes", type=int, default=200, help="endpoint changes in the VM")
    parser.add_argument("--in-vm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--profile", choices=("cold", "change"), default=None)
    parser.add_argument(
        "--gc-threshold", type=int, default=0, help="gc generation 0 threshold (0: Python's)"
    )
    args = parser.parse_args(argv)
    if min(args.runs, args.changes, args.vm_changes) < 1:
        parser.error("--runs, --changes and --vm-changes must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.gc_threshold:
        gc.set_threshold(args.gc_threshold, *gc.get_threshold()[1:])
    if args.in_vm:
        print(JSON_MARK + json.dumps(asyncio.run(kernel_run(args))))
        return 0
    result = asyncio.run(host_run(args))
    if args.vm:
        add_vm_figures(result, vm_run(args))
    cmd = f"python bench/proxy.py --scale {args.scale} --runs {args.runs} --changes {args.changes}"
    cmd += f" --gc-threshold {args.gc_threshold}" if args.gc_threshold else ""
    cmd += f" --vm --vm-changes {args.vm_changes}" if args.vm else ""
    print(
        f"# proxy benchmark, {time.strftime('%Y-%m-%d')}, {platform.node()}, "
        f"{os.cpu_count()} CPUs, kernel {platform.release()}, Python {platform.python_version()}"
    )
    print(f"# command: {cmd}")
    print("\n".join(table(result, args.runs)))
    for key in ("profile_cold", "profile_change"):
        if result.get(key):
            print(result[key])
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if not k.startswith("profile")}))
    checks = ("tables_match", "kernel_cold_match", "kernel_changed_match")
    ok = not missed(result) and all(result.get(key, True) for key in checks)
    return 0 if ok or args.scale != 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
