"""Turn desired virtual services into the IPVS operations that make the kernel match (pure).

The same function serves a full sync (against a dump of the kernel) and a partial one (against
what was applied last, for the services that changed). A real server that is no longer wanted is
deleted, or with graceful termination set to weight 0 and handed back for later deletion; UDP
ones are handed back too, so their conntrack entries can be flushed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kube_router.controllers.proxy.compile import VirtualService
from kube_router.dataplane import ipvs
from kube_router.dataplane.ipvs import Dest, Service, ServiceKey, Transaction

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class Plan:
    tx: Transaction = field(default_factory=Transaction)
    drained: list[tuple[ServiceKey, Dest]] = field(default_factory=list)  # set to weight 0
    removed: list[tuple[ServiceKey, Dest]] = field(default_factory=list)  # deleted


def same_dest(want: Dest, have: Dest) -> bool:
    """Equal as the kernel keeps them: it turns masquerading to a local address into LOCALNODE."""
    w, h = want.settings(), have.settings()
    if w == h:
        return True
    masq_or_local = {want.forward, have.forward} <= {ipvs.FWD_MASQ, ipvs.FWD_LOCAL}
    return masq_or_local and w[:1] + w[2:] == h[:1] + h[2:]


def excluded(key: ServiceKey, cidrs: Iterable[Network]) -> bool:
    """A virtual service on an address in ``--excluded-cidrs`` is never removed."""
    if key.fwmark or not key.address:
        return False
    address = ipaddress.ip_address(key.address)
    return any(address in net for net in cidrs)


def _sync_dests(
    plan: Plan,
    key: ServiceKey,
    want: Mapping[tuple[str, int], Dest],
    have: Mapping[tuple[str, int], Dest],
    graceful: bool,
) -> None:
    for dkey, dest in want.items():
        current = have.get(dkey)
        if current is None:
            plan.tx.add_dest(key, dest)
        elif not same_dest(dest, current):
            plan.tx.edit_dest(key, dest)
    for dkey, dest in have.items():
        if dkey in want:
            continue
        if graceful:
            if dest.weight != 0:
                plan.tx.edit_dest(key, dataclasses.replace(dest, weight=0))
            plan.drained.append((key, dest))
        else:
            plan.tx.del_dest(key, *dkey)
            plan.removed.append((key, dest))


def plan_ipvs(
    desired: Mapping[ServiceKey, VirtualService],
    current: Mapping[ServiceKey, tuple[Service, Mapping[tuple[str, int], Dest]]],
    keys: Iterable[ServiceKey] | None = None,
    graceful: bool = False,
    excluded_cidrs: Iterable[Network] = (),
) -> Plan:
    """Operations for ``keys`` (all of desired and current when None)."""
    plan = Plan()
    todo = set(desired) | set(current) if keys is None else set(keys)
    cidrs = list(excluded_cidrs)
    for key in sorted(todo, key=str):
        want, have = desired.get(key), current.get(key)
        if want is None:
            if have is not None and not excluded(key, cidrs):
                plan.tx.del_service(key)
                plan.removed += [(key, d) for d in have[1].values()]
            continue
        if have is None:
            plan.tx.add_service(want.service)
            _sync_dests(plan, key, want.dests, {}, graceful)
            continue
        if want.service.settings() != have[0].settings():
            plan.tx.edit_service(want.service)
        _sync_dests(plan, key, want.dests, have[1], graceful)
    return plan
