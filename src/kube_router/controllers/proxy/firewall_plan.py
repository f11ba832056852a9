"""Read the proxy's firewall out of the kernel, and plan the fewest edits to a layout (pure).

``kernel_layout`` reads our objects from ``iptables-save`` tables and ``ipset save`` states;
``plan`` turns (wanted, have) layouts into restore transactions: sets the kernel lacks are
created, others get only their missing and extra members; KUBE-ROUTER-SERVICES is rewritten only
when its rules differ; hairpin rules and our POSTROUTING rules are deleted and appended one by
one (others' rules are never named, nor reordered).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from kube_router.controllers.proxy.firewall_rules import BASE_SETS as _BASE_SETS
from kube_router.controllers.proxy.firewall_rules import (
    HAIRPIN_CHAIN,
    INPUT,
    OWN_JUMP_PREFIX,
    POSTROUTING,
    SERVICES_CHAIN,
    Layout,
    input_jump,
    set_name,
)
from kube_router.dataplane import ipset
from kube_router.dataplane import iptables_parse as ipt
from kube_router.dataplane.ipvs import Family

# Our masquerade rules as iptables-save prints them, current and older variants (MASQUERADE,
# SNAT without --random-fully), for any node IP and pod CIDR.
MASQ_SHAPE: Final = re.compile(
    r"(! -s (?P<src>\S+) ! -d (?P=src) )?-m ipvs --vdir ORIGINAL --vmethod MASQ -m comment "
    r'--comment "" -j (SNAT --to-source \S+( --random-fully)?|MASQUERADE)'
)


@dataclass
class Plan:
    """Restore inputs for one apply: ipset ones shared by the families, iptables per family."""

    sets: ipset.Transaction = field(default_factory=ipset.Transaction)  # before the rules
    destroy: ipset.Transaction = field(default_factory=ipset.Transaction)  # after the rules
    rules: dict[Family, tuple[ipt.Transaction, ipt.Transaction]] = field(default_factory=dict)

    def tables(self, family: Family) -> tuple[ipt.Transaction, ...]:
        """The family's non-empty transactions (filter, then nat)."""
        return tuple(tx for tx in self.rules.get(family, ()) if len(tx))


def target(rule: ipt.Rule) -> str | None:
    words = rule.words
    for i, word in enumerate(words[:-1]):
        if word in ("-j", "--jump"):
            return words[i + 1]
    return None


def is_masquerade(rule: ipt.Rule) -> bool:
    return MASQ_SHAPE.fullmatch(rule.spec) is not None


def _chain(table: ipt.Table | None, name: str) -> tuple[str, ...] | None:
    chain = table.chains.get(name) if table is not None else None
    return None if chain is None else tuple(r.spec for r in chain.rules)


def _input_state(table: ipt.Table | None, family: Family) -> tuple[bool, tuple[str, ...]]:
    """Whether our INPUT jump is in place (once, no foreign rule before it), and every rule
    jumping to our chain."""
    chain = table.chains.get(INPUT) if table is not None else None
    rules = chain.rules if chain is not None else []
    ours = [i for i, r in enumerate(rules) if target(r) == SERVICES_CHAIN]
    jumps = tuple(rules[i].spec for i in ours)
    if len(ours) != 1 or jumps[0] != input_jump(family):
        return False, jumps
    before = rules[: ours[0]]
    return all((target(r) or "").startswith(OWN_JUMP_PREFIX) for r in before), jumps


def kernel_layout(
    family: Family,
    filter_table: ipt.Table | None,
    nat_table: ipt.Table | None,
    sets: Mapping[str, ipset.SetState],
) -> Layout:
    """Our objects as the kernel holds them (tables as parsed from iptables-save)."""
    names = {set_name(base, family) for base in _BASE_SETS}
    post = nat_table.chains.get(POSTROUTING) if nat_table is not None else None
    ours = tuple(
        r.spec
        for r in (post.rules if post is not None else [])
        if is_masquerade(r) or target(r) == HAIRPIN_CHAIN
    )
    input_ok, jumps = _input_state(filter_table, family)
    return Layout(
        family=family,
        sets={n: s for n, s in sets.items() if n in names},
        services=_chain(filter_table, SERVICES_CHAIN),
        input_ok=input_ok,
        input_jumps=jumps,
        postrouting=ours,
        hairpin=_chain(nat_table, HAIRPIN_CHAIN),
    )


# --- planning ----------------------------------------------------------------------------------


def plan(want: Layout, have: Layout, out: Plan | None = None) -> Plan:
    """Edits that turn ``have`` into ``want`` (added to ``out``, or a new Plan)."""
    out = out or Plan()
    _plan_sets(out, want.sets, have.sets)
    filt, nat = ipt.Transaction("filter"), ipt.Transaction("nat")
    _plan_filter(filt, want, have)
    _plan_nat(nat, want, have)
    out.rules[want.family] = (filt, nat)
    return out


def _plan_sets(
    out: Plan, want: Mapping[str, ipset.SetState], have: Mapping[str, ipset.SetState]
) -> None:
    for name, state in want.items():
        current = have.get(name)
        spec = state.spec
        if current is None:
            out.sets.fill(spec, state.entries)
        elif (current.spec.type, current.spec.family, current.spec.timeout) != (
            spec.type,
            spec.family,
            spec.timeout,
        ):
            # only damage from outside gives our name another type; swap cannot cross types
            out.sets.destroy(name).fill(spec, state.entries)
        else:
            for entry in sorted(current.entries - state.entries):
                out.sets.delete(spec, entry)
            for entry in sorted(state.entries - current.entries):
                out.sets.add(spec, entry)
    for name in sorted(set(have) - set(want)):
        out.destroy.destroy(name)


def _plan_filter(tx: ipt.Transaction, want: Layout, have: Layout) -> None:
    if want.services is not None and want.services != have.services:
        tx.declare(SERVICES_CHAIN)  # creates it, or flushes it (our INPUT jump stays valid)
        for rule in want.services:
            tx.append(SERVICES_CHAIN, rule)
    if want.input_ok != have.input_ok or (not want.input_ok and have.input_jumps):
        for rule in have.input_jumps:
            tx.delete(INPUT, rule)
        if want.input_ok:
            tx.insert(INPUT, input_jump(want.family), 1)
    if want.services is None and have.services is not None:
        tx.flush(SERVICES_CHAIN).delete_chain(SERVICES_CHAIN)


def _plan_nat(tx: ipt.Transaction, want: Layout, have: Layout) -> None:
    if want.hairpin is not None:
        if have.hairpin is None:
            tx.declare(HAIRPIN_CHAIN)
        _edit_rules(tx, HAIRPIN_CHAIN, want.hairpin, have.hairpin or ())
    _edit_rules(tx, POSTROUTING, want.postrouting, have.postrouting)
    if want.hairpin is None and have.hairpin is not None:
        tx.flush(HAIRPIN_CHAIN).delete_chain(HAIRPIN_CHAIN)


def _edit_rules(
    tx: ipt.Transaction, chain: str, want: tuple[str, ...], have: tuple[str, ...]
) -> None:
    """Delete what is extra (or doubled), append what is missing, in ``want``'s order."""
    wanted, held = Counter(want), Counter(have)
    for rule in have:
        if held[rule] > wanted[rule]:
            tx.delete(chain, rule)
            held[rule] -= 1
    for rule in want:
        if held[rule] < wanted[rule]:
            tx.append(chain, rule)
            held[rule] += 1


def cleanup_layout(family: Family) -> Layout:
    """Nothing of ours: the target of ``--cleanup-config``."""
    return Layout(family=family)
