"""Upstream's NPC metrics (per-family ones only for enabled families), plus compile errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import Gauge, Histogram

from kube_router.controllers.netpol.names import IPV4, IPV6, Family

_V = {IPV4: "v4", IPV6: "v6"}


class NetpolMetrics:
    """Upstream's NPC metrics (per-family ones only for enabled families), plus compile errors."""

    def __init__(self, registry: Any, families: Sequence[Family]) -> None:
        def hist(name: str, doc: str) -> Histogram:
            return Histogram(name, doc, namespace="kube_router", registry=registry)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, namespace="kube_router", registry=registry)

        self.sync_time = hist("controller_iptables_sync_time", "Time to sync network policy")
        self.compile_time = hist(
            "controller_policy_chains_sync_time", "Time to compile policy chains"
        )
        self.chains = gauge("controller_policy_chains", "Active policy chains")
        self.ipsets = gauge("controller_policy_ipsets", "Active policy ipsets")
        self.errors = gauge(
            "controller_policy_compile_errors",
            "NetworkPolicies that cannot be compiled (their pods fail closed)",
        )
        self.save = {
            f: hist(f"controller_iptables_{_V[f]}_save_time", f"iptables-save time ({_V[f]})")
            for f in families
        }
        self.restore = {
            f: hist(f"controller_iptables_{_V[f]}_restore_time", f"iptables-restore time ({_V[f]})")
            for f in families
        }
        self.ipset_restore = {
            f: hist(
                f"controller_policy_ipset_{_V[f]}_restore_time", f"ipset restore time ({_V[f]})"
            )
            for f in families
        }
