"""The proxy benchmark's table: the measures, their bars, the host's and the VM's figures."""

from __future__ import annotations

from typing import Any

DASH = "\u2013"  # an empty cell, and the mark of a part of the row above
TIMES = "\u00d7"
BARS = {"cold_handed_s": 3.0, "change_p50_ms": 50.0, "change_p90_ms": 50.0}

Row = tuple[str, str, str]


def _bar(key: str, value: float) -> str:
    bar = BARS.get(key)
    if bar is None:
        return DASH
    unit = "s" if key.endswith("_s") else "ms"
    return f"{bar:g} {unit}" + ("" if value <= bar else " **MISSED**")


def _ms(r: dict[str, Any], key: str) -> str:
    return f"{r[key + '_p50_ms']:.2f} / {r[key + '_p90_ms']:.2f} ms"


def _runs(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def cold_rows(r: dict[str, Any], runs: int) -> list[Row]:
    return [
        ("Services / virtual services / real servers", DASH,
         f"{r['services']:,.0f} / {r['virtual_services']:,.0f} / {r['real_servers']:,.0f}"),
        (f"cold sync: `sync(full=True)` to the transaction handed to the IPVS port, p50 of {runs}",
         _bar("cold_handed_s", r["cold_handed_s"]),
         f"{r['cold_handed_s']:.2f} s ({_runs(r['cold_handed_runs_s'])})"),
        (f"{DASH} the stores to every Service's plan (endpoints, `IPVSSync.update`)", DASH,
         f"{r['cold_replan_s']:.2f} s"),
        (f"{DASH} dump (empty) and IPVS plan", DASH,
         f"{r['cold_dump_s'] + r['cold_plan_s']:.2f} s ({r['cold_ops']:,.0f} operations)"),
        ("cold sync: the fake IPVS port applying (not in the bar)", DASH,
         f"{r['cold_port_s']:.2f} s"),
        (f"{DASH} `ipvs.validate` (both ports) / netlink encoding (real port)", DASH,
         f"{r['cold_validate_s']:.2f} / {r['cold_encode_s']:.2f} s"),
        ("cold sync: the whole `sync(full=True)` but the IPVS port's time; VIP, iptables and "
         "ipset ports keeping nothing", DASH,
         f"{r['cold_own_s']:.2f} s ({_runs(r['cold_own_runs_s'])})"),
        (f"{DASH} VIPs (`vips.sync`) / firewall (`firewall.apply`) / health checks / the rest",
         DASH, f"{r['cold_vips_s']:.2f} / {r['cold_firewall_s']:.2f} / {r['cold_health_s']:.2f}"
         f" / {r['cold_rest_s']:.2f} s"),
    ]  # fmt: skip


def change_rows(r: dict[str, Any]) -> list[Row]:
    return [
        ("endpoint change: event to the transaction handed to the IPVS port, p50",
         _bar("change_p50_ms", r["change_p50_ms"]),
         f"{r['change_p50_ms']:.2f} ms ({r['change_ops_p50']:.0f} operations)"),
        ("endpoint change: event to the transaction handed to the IPVS port, p90",
         _bar("change_p90_ms", r["change_p90_ms"]), f"{r['change_p90_ms']:.2f} ms"),
        (f"{DASH} to the fake applied / to `sync(False)` returned, p50 / p90", DASH,
         f"{_ms(r, 'change_acked')}; {_ms(r, 'change_done')}"),
        (f"{DASH} `sync(False)` alone, p50 / p90", DASH, _ms(r, "change_sync")),
        ("resident memory: before / objects / controller after cold sync / peak", DASH,
         f"{r['rss_base_mib']:.0f} / {r['rss_objects_mib']:.0f} / {r['rss_agent_mib']:.0f} / "
         f"{r['rss_peak_mib']:.0f} MiB"),
        ("fake IPVS tables equal a fresh cold sync after the changes", DASH,
         str(r["tables_match"])),
    ]  # fmt: skip


def vm_rows(r: dict[str, Any]) -> list[Row]:
    def est(key: str, unit: str) -> str:
        return f"{r[key]:.2f} {unit} (native est. {r[key + '_native_est']:.2f} {unit})"

    rest = "real" if r["kernel_rest_ports"] == "real" else "keeping nothing"
    return [
        ("VM slowdown: cold compute in the VM / on the host", DASH,
         f"{r['vm_slowdown']:.1f}{TIMES} (kernel {r['kernel']}, clock {r['clocksource']})"),
        ("VM cold sync: to the transaction handed to the real IPVS port", DASH,
         est("kernel_cold_handed_s", "s")),
        ("VM cold sync: the real IPVS port applying (validate, encode, kernel)", DASH,
         est("kernel_cold_port_s", "s")),
        (f"VM cold sync: the whole `sync(full=True)`, VIP, iptables and ipset ports {rest}", DASH,
         est("kernel_cold_total_s", "s")),
        (f"{DASH} VIPs / firewall / health checks / the rest", DASH,
         f"{r['kernel_cold_vips_s']:.2f} / {r['kernel_cold_firewall_s']:.2f} / "
         f"{r['kernel_cold_health_s']:.2f} / {r['kernel_cold_rest_s']:.2f} s"),
        ("VM kernel after the cold sync: virtual services / real servers, equal to the record; "
         "VIPs on kube-dummy-if", DASH,
         f"{r['kernel_cold_virtual_services']:,.0f} / {r['kernel_cold_real_servers']:,.0f}, "
         f"{r['kernel_cold_match']}; {r['kernel_cold_vips']:,.0f}"),
        ("VM endpoint change: event to first netlink batch sent, p50 / p90", DASH,
         f"{_ms(r, 'kernel_change')} (p50 native est. "
         f"{r['kernel_change_p50_ms_native_est']:.2f} ms)"),
        ("VM endpoint change: event to kernel acknowledged, p50 / p90", DASH,
         f"{_ms(r, 'kernel_change_acked')} (p50 native est. "
         f"{r['kernel_change_acked_p50_ms_native_est']:.2f} ms)"),
        (f"{DASH} to `sync(False)` returned, p50 / p90", DASH,
         f"{_ms(r, 'kernel_change_done')} (p50 native est. "
         f"{r['kernel_change_done_p50_ms_native_est']:.2f} ms)"),
        ("VM kernel after the changes: equal to the record", DASH,
         str(r["kernel_changed_match"])),
    ]  # fmt: skip


def table(r: dict[str, Any], runs: int) -> list[str]:
    rows = cold_rows(r, runs) + change_rows(r)
    if "vm_slowdown" in r:
        rows += vm_rows(r)
    lines = ["| Measure | Bar | Result |", "|---|---|---|"]
    return lines + [f"| {a} | {b} | {c} |" for a, b, c in rows]


def missed(r: dict[str, Any]) -> list[str]:
    return [key for key, bar in BARS.items() if r[key] > bar]
