"""The proxy benchmark against a real kernel: ``ServiceProxyController`` driving ``RealIPVS``
(and, unless ``--vm-ipvs-only``, the real kube-dummy-if, iptables and ipset ports) in a fresh
network namespace of a qemu VM, checked through ``/proc/net/ip_vs``; run by ``proxy.py --vm``.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from kube_router.controllers.proxy.ports import ProxyDataplane
from kube_router.dataplane import ipvs
from kube_router.dataplane.vips import DUMMY_IF
from proxy_rig import (
    NODE_LINK,
    NODE_PREFIX,
    Cluster,
    Rig,
    Tables,
    TimedPort,
    changes,
    cold_sync,
    make_rig,
    node_ip,
    null_dataplane,
    record_tables,
    summarize_changes,
)

VM_LOCK = "/tmp/kr-vm.lock"
VM_MEMORY_MB = 3072
VM_MODULES = (
    "ip_vs,ip_vs_rr,dummy,xt_ipvs,xt_set,ip_set_hash_ip,ip_set_hash_ipport,xt_comment,"
    "nf_conntrack_netlink"
)
VM_TIMEOUT_S = 2400
JSON_MARK = "PROXY-BENCH-JSON "
CLOCKSOURCE = "/sys/devices/system/clocksource/clocksource0/current_clocksource"
TAIL_LINES = 30

FORWARD = {"Masq": ipvs.FWD_MASQ, "Local": ipvs.FWD_LOCAL, "Tunnel": ipvs.FWD_TUNNEL,
           "Route": ipvs.FWD_DROUTE}  # fmt: skip


def make_netns() -> str:
    """A fresh namespace: lo up, and the node's link (a dummy) with the node IP."""
    name = f"krb-{uuid.uuid4().hex[:10]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    for argv in (
        ["link", "set", "lo", "up"],
        ["link", "add", NODE_LINK, "type", "dummy"],
        ["addr", "add", f"{node_ip(0)}/{NODE_PREFIX}", "dev", NODE_LINK],
        ["link", "set", NODE_LINK, "up"],
    ):
        subprocess.run(["ip", "-n", name, *argv], check=True)
    return name


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


def dummy_vips(netns: str) -> int:
    """How many IPv4 addresses kube-dummy-if holds (0: no such link)."""
    argv = ["ip", "-n", netns, "-4", "-o", "addr", "show", "dev", DUMMY_IF]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    return len(proc.stdout.splitlines()) if proc.returncode == 0 else 0


def kernel_check(prefix: str, netns: str, rig: Rig) -> dict[str, Any]:
    t0 = time.perf_counter()
    tables = proc_tables(netns)
    return {
        f"{prefix}_read_s": time.perf_counter() - t0,
        f"{prefix}_virtual_services": float(len(tables)),
        f"{prefix}_real_servers": float(sum(len(d) for d in tables.values())),
        f"{prefix}_match": tables == record_tables(rig),
        f"{prefix}_vips": float(dummy_vips(netns)),
    }


class SendWatch:
    """A netlink socket that notes when the first bytes of each apply leave."""

    def __init__(self, inner: socket.socket, timed: TimedPort) -> None:
        self.inner = inner
        self.timed = timed

    def send(self, data: bytes, *flags: int) -> int:
        if not self.timed.sent_at:
            self.timed.sent_at = time.perf_counter()
        return self.inner.send(data, *flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def hook_sent(port: Any, timed: TimedPort) -> None:
    """Record when a RealIPVS sends its first netlink batch of each apply (a partial sync
    sends nothing before it: no dump)."""
    genl = port._socket()
    genl.sock = SendWatch(genl.sock, timed)


async def kernel_dataplane(netns: str, ipvs_only: bool) -> ProxyDataplane:
    if not ipvs_only:
        return await ProxyDataplane.real(("ipv4",), netns=netns)
    from kube_router.dataplane.ipvs_netlink import RealIPVS

    return null_dataplane(RealIPVS(netns))


async def kernel_run(args: argparse.Namespace) -> dict[str, Any]:
    """In a fresh namespace of a kernel with IPVS: cold sync, check, changes, check."""
    result: dict[str, Any] = {
        "kernel": platform.release(),
        "clocksource": Path(CLOCKSOURCE).read_text().strip(),
        "kernel_rest_ports": "null" if args.vm_ipvs_only else "real",
    }
    netns = make_netns()
    dataplane: ProxyDataplane | None = None
    try:
        dataplane = await kernel_dataplane(netns, args.vm_ipvs_only)
        real = dataplane.ipvs
        cluster = Cluster.make(args.scale)
        rig = await make_rig(cluster, dataplane)
        cold = await cold_sync(rig)
        result.update({f"kernel_cold_{k}_s": v for k, v in cold.items() if k != "ops"})
        result.update(kernel_check("kernel_cold", netns, rig))
        hook_sent(real, rig.port)
        got = await changes(rig, cluster, args.vm_changes)
        result.update(summarize_changes("kernel_change", got))
        result.update(kernel_check("kernel_changed", netns, rig))
        result["kernel_services"] = float(cluster.n)
    finally:
        if dataplane is not None:
            dataplane.ipvs.close()
            dataplane.vips.close()
        subprocess.run(["ip", "netns", "del", netns], check=False)
    return result


def vm_run(args: argparse.Namespace, script: Path) -> dict[str, Any]:
    """``script`` with --in-vm in a qemu VM (under the VM lock); its JSON."""
    argv = [
        *("flock", VM_LOCK, sys.executable, "-m", "kube_router_lab.vm", "run"),
        *("--memory", str(VM_MEMORY_MB), "--timeout", str(VM_TIMEOUT_S), "--modprobe", VM_MODULES),
        *("--", sys.executable, str(script), "--in-vm"),
        *("--scale", str(args.scale), "--vm-changes", str(args.vm_changes)),
        *("--gc-threshold", str(args.gc_threshold)),
        *(("--vm-ipvs-only",) if args.vm_ipvs_only else ()),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(JSON_MARK):
            found: dict[str, Any] = json.loads(line[len(JSON_MARK) :])
            found["vm_wall_s"] = time.perf_counter() - t0
            return found
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-TAIL_LINES:])
    raise RuntimeError(f"the VM run gave no result (exit {proc.returncode}):\n{tail}")


def add_vm_figures(result: dict[str, Any], vm: dict[str, Any]) -> None:
    """The VM's figures, its slowdown (the cold compute: pure CPU, the same work in both) and
    the kernel figures divided by it (an estimate: emulated kernel code slows down unevenly)."""
    result.update(vm)
    compute = vm["kernel_cold_handed_s"] - vm["kernel_cold_dump_s"]
    slowdown = compute / (result["cold_handed_s"] - result["cold_dump_s"])
    result["vm_slowdown"] = slowdown
    for key in (
        "kernel_cold_port_s",
        "kernel_cold_handed_s",
        "kernel_cold_total_s",
        "kernel_change_p50_ms",
        "kernel_change_acked_p50_ms",
        "kernel_change_done_p50_ms",
    ):
        result[f"{key}_native_est"] = vm[key] / slowdown
