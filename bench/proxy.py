"""Service proxy benchmark: the ServiceProxyController's cold sync, one endpoint change, memory;
over the fake IPVS port on the host and over the real kernel in a VM.

At ``--scale 1.0``: 10,000 Services with one EndpointSlice each, 100,000 IPVS real servers, on
this node (node-0 of 100; endpoints spread over every node). Shapes: 8 in 10 ClusterIP with one
port and 10 endpoints; 1 in 10 NodePort with 5 endpoints (a cluster-IP and a node-port virtual
service, 5 real servers each); 1 in 10 ClusterIP with two ports and 5 endpoints. So every Service
gives 10 real servers: 12,000 virtual services, 100,000 real servers.

The controller is the agent's own (``proxy_rig``): its stores are filled directly, its handlers
called as the informers call them, its IPVS port timed. Reported:

- cold sync (``--runs``, p50): ``ctrl.sync(full=True)`` over the loaded stores; the bar's figure
  is the IPVS part, from the call to the transaction handed to the IPVS port (every Service's
  endpoints and plan, the dump of the empty port, the IPVS plan). The port's own time (the fake
  applying) is apart, and so is the whole sync: VIPs, firewall and health checks as well, over
  kube-dummy-if, iptables and ipset ports that keep nothing (the fakes' own bookkeeping of 10,000
  VIPs is quadratic and would dominate);
- one endpoint change (``--changes``, p50/p90): a new EndpointSlice for one Service (one endpoint
  added, removed or replaced, in turn) into the store and the controller's handler, then
  ``sync(False)`` as the sync runner calls it; timed to the transaction handed to the IPVS port,
  to the fake applied, and to ``sync`` returned;
- resident memory: VmRSS before anything, with the objects in the stores, and with the
  controller after a cold sync over ports that keep nothing (the kernel holds the tables);
  VmHWM is the peak;
- ``--vm``: the host figures, then the cold sync and ``--vm-changes`` changes in a qemu VM against
  the real kernel (``proxy_kernel``): RealIPVS, kube-dummy-if, iptables and ipsets in a fresh
  network namespace (``--vm-ipvs-only``: only IPVS real, the rest as on the host).

The garbage collector is tuned as the agent tunes it (``kube_router.app.tune_gc``) before
anything is measured. Usage: ``python bench/proxy.py [--scale 1.0] [--runs 3] [--changes 300]
[--vm] [--vm-changes 200] [--vm-ipvs-only] [--json] [--profile cold|change]
[--gc-threshold N]``. The VM run waits for the VM lock (``flock /tmp/kr-vm.lock``). Figures and
findings: ``docs/benchmarks.md``.
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
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from kube_router.app import tune_gc
from kube_router.dataplane import ipvs
from kube_router.dataplane.ipvs_fake import FakeIPVS
from proxy_kernel import JSON_MARK, add_vm_figures, kernel_run, vm_run
from proxy_report import missed, table
from proxy_rig import (
    Cluster,
    NullPort,
    changes,
    cold_sync,
    expected_tables,
    make_rig,
    null_dataplane,
    summarize_changes,
)

PROFILE_LINES = 30


def vm_rss_kib(field_name: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise LookupError(f"{field_name} not in /proc/self/status")


async def memory(scale: float) -> dict[str, float]:
    gc.collect()
    base = vm_rss_kib()
    cluster = Cluster.make(scale)
    rig = await make_rig(cluster, null_dataplane(NullPort()))
    gc.collect()
    objects = vm_rss_kib()
    await rig.ctrl.sync(True)
    gc.collect()
    state = vm_rss_kib()
    del rig
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


async def host_run(args: argparse.Namespace) -> dict[str, Any]:
    """Memory, ``--runs`` cold syncs (the last over the fake IPVS), then the changes."""
    result: dict[str, Any] = await memory(args.scale)
    runs: list[dict[str, float]] = []
    for _ in range(args.runs - 1):
        rig = await make_rig(Cluster.make(args.scale), null_dataplane(NullPort()))
        runs.append(await cold_sync(rig))
        del rig
    cluster = Cluster.make(args.scale)
    fake = FakeIPVS()
    rig = await make_rig(cluster, null_dataplane(fake))
    prof = profiled(args.profile == "cold")
    last = await cold_sync(rig)
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
    result["cold_own_runs_s"] = [r["own"] for r in runs]
    result.update(adapter_cpu(rig.port.last))
    prof = profiled(args.profile == "change")
    got = await changes(rig, cluster, args.changes)
    result["profile_change"] = profile_text(prof)
    result.update(summarize_changes("change", got))
    result["tables_match"] = ipvs.plain(await fake.dump()) == await expected_tables(cluster)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3, help="cold syncs (p50)")
    parser.add_argument("--changes", type=int, default=300, help="endpoint changes (p50/p90)")
    parser.add_argument("--vm", action="store_true", help="also against the real kernel in a VM")
    parser.add_argument("--vm-changes", type=int, default=200, help="endpoint changes in the VM")
    parser.add_argument(
        "--vm-ipvs-only", action="store_true", help="in the VM, VIPs and firewall as on the host"
    )
    parser.add_argument("--in-vm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--profile", choices=("cold", "change"), default=None)
    parser.add_argument(
        "--gc-threshold",
        type=int,
        default=0,
        help="gc generation-0 threshold (0: the agent's, kube_router.app.tune_gc)",
    )
    args = parser.parse_args(argv)
    if min(args.runs, args.changes, args.vm_changes) < 1:
        parser.error("--runs, --changes and --vm-changes must be at least 1")
    return args


def command(args: argparse.Namespace) -> str:
    cmd = f"python bench/proxy.py --scale {args.scale} --runs {args.runs} --changes {args.changes}"
    cmd += f" --gc-threshold {args.gc_threshold}" if args.gc_threshold else ""
    cmd += f" --vm --vm-changes {args.vm_changes}" if args.vm else ""
    cmd += " --vm-ipvs-only" if args.vm and args.vm_ipvs_only else ""
    return cmd


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tune_gc()
    if args.gc_threshold:
        gc.set_threshold(args.gc_threshold, *gc.get_threshold()[1:])
    if args.in_vm:
        print(JSON_MARK + json.dumps(asyncio.run(kernel_run(args))))
        return 0
    result = asyncio.run(host_run(args))
    if args.vm:
        add_vm_figures(result, vm_run(args, Path(__file__).resolve()))
    print(
        f"# proxy benchmark, {time.strftime('%Y-%m-%d')}, {platform.node()}, "
        f"{os.cpu_count()} CPUs, kernel {platform.release()}, Python {platform.python_version()}, "
        f"gc thresholds {gc.get_threshold()}"
    )
    print(f"# command: {command(args)}")
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
