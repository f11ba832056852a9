"""The service proxy's iptables rules and ipsets, kept in line with the desired specs.

``ProxyFirewall.apply(specs, full)``: a full apply reads the kernel (``iptables-save`` of filter
and nat per family, one ``ipset save``) and repairs whatever differs; a partial one compares with
what the last successful apply wrote and writes nothing when that is equal. Either way it is at
most one ``ipset restore`` (all families) and one ``iptables-restore --noflush`` per table and
family. Any failure forgets what was written, so the next apply is full. A change of Service VIPs
only edits set members; KUBE-ROUTER-SERVICES itself never depends on the Services.

See ``firewall_rules`` for what is ours, ``firewall_plan`` for how edits are chosen.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

from kube_router.controllers.proxy import firewall_plan as fwp
from kube_router.controllers.proxy.firewall_rules import (
    BASE_SETS,
    FirewallSpec,
    HairpinRule,
    Layout,
    Settings,
    build_specs,
    hairpin_rules,
    layout,
)
from kube_router.dataplane import ipset
from kube_router.dataplane import iptables_parse as ipt
from kube_router.dataplane.iptables import IPTables
from kube_router.dataplane.ipvs import Family

log = logging.getLogger(__name__)

__all__ = [
    "FirewallError",
    "FirewallSpec",
    "HairpinRule",
    "IPSetPort",
    "ProxyFirewall",
    "Settings",
    "build_specs",
    "hairpin_rules",
]


class FirewallError(Exception):
    """Reading or writing the proxy's iptables rules or ipsets failed."""


class IPSetPort(Protocol):
    """What the firewall needs of the ipset port (RealIPSets, FakeIPSets)."""

    async def save(self, prefixes: Sequence[str] | None = None) -> dict[str, ipset.SetState]: ...

    async def restore(self, tx: ipset.Transaction) -> None: ...


class ProxyFirewall:
    """Keeps the proxy's firewall in line with one FirewallSpec per family."""

    def __init__(self, iptables: Mapping[Family, IPTables], ipsets: IPSetPort) -> None:
        self.iptables = dict(iptables)
        self.ipsets = ipsets
        self._last: dict[Family, tuple[FirewallSpec, Layout]] = {}

    @property
    def last(self) -> dict[Family, FirewallSpec]:
        """What the last successful apply wrote (empty after a failure or cleanup)."""
        return {f: spec for f, (spec, _) in self._last.items()}

    async def apply(self, specs: Mapping[Family, FirewallSpec], full: bool) -> None:
        """Make the kernel hold ``specs``; partial unless ``full`` or after a failure."""
        missing = sorted(set(specs) - set(self.iptables))
        if missing:
            raise FirewallError(f"no iptables port for family {', '.join(missing)}")
        last, self._last = self._last, {}  # unknown until this apply succeeds
        if full or any(f not in last for f in specs):
            last = {}
        try:
            wanted = {
                f: last[f] if f in last and last[f][0] == spec else (spec, layout(spec))
                for f, spec in specs.items()
            }
            haves = {f: last[f][1] for f in specs} if last else await self._read(list(specs))
            plan = fwp.Plan()
            for family, (_, want) in wanted.items():
                if want is not haves[family]:
                    fwp.plan(want, haves[family], plan)
            await self._write(plan, list(specs))
        except Exception as err:
            kind = "full" if not last else "partial"
            raise FirewallError(f"proxy firewall {kind} apply failed: {err}") from err
        self._last = wanted

    async def cleanup(self) -> None:
        """Remove our INPUT jump, chains, masquerade and hairpin rules and sets; nothing else."""
        self._last = {}
        families = list(self.iptables)
        try:
            haves = await self._read(families)
            plan = fwp.Plan()
            for family in families:
                fwp.plan(fwp.cleanup_layout(family), haves[family], plan)
            await self._write(plan, families)
        except Exception as err:
            raise FirewallError(f"proxy firewall cleanup failed: {err}") from err

    async def _read(self, families: Sequence[Family]) -> dict[Family, Layout]:
        """Our objects as the kernel holds them, per family."""
        sets = await self.ipsets.save(tuple(BASE_SETS))
        out: dict[Family, Layout] = {}
        for family in families:
            port = self.iptables[family]
            filt = ipt.parse_save(await port.save("filter")).get("filter")
            nat = ipt.parse_save(await port.save("nat")).get("nat")
            out[family] = fwp.kernel_layout(family, filt, nat, sets)
        return out

    async def _write(self, plan: fwp.Plan, families: Sequence[Family]) -> None:
        if plan.sets.lines:
            await self.ipsets.restore(plan.sets)
        for family in families:
            for tx in plan.tables(family):
                log.debug("proxy firewall: %d lines to %s %s", len(tx), family, tx.table)
                await self.iptables[family].restore(tx)
        if plan.destroy.lines:
            await self.ipsets.restore(plan.destroy)
