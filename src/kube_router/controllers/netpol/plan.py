"""Turn desired state into the fewest kernel transactions (pure: text in, transactions out).

Incremental (against what we applied last): only chains whose rules changed are rewritten, only
set members that changed are added or deleted. Full (against what the kernel holds, so it also
repairs damage from outside): chains whose rules differ from the kernel's are rewritten, sets the
kernel lacks are created, the others get only their missing and extra members (a set of the wrong
type is recreated), our jumps are put back at position 1 of
the built-in chains, and chains and sets of ours that are no longer wanted are removed. Nothing
that is not ours is ever named.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kube_router.controllers.netpol.compile import IPSetSpec
from kube_router.controllers.netpol.desired import BUILTIN_CHAINS, FamilyState
from kube_router.controllers.netpol.names import IPV6, Family
from kube_router.controllers.netpol.pieces import LIST_SET
from kube_router.dataplane import ipset
from kube_router.dataplane import iptables_parse as ipt
from kube_router.dataplane.iptables_rule import RuleError, parse_rule

OWN_CHAIN_PREFIXES = (
    "KUBE-POD-FW-",
    "KUBE-NWPLCY-",
    "KUBE-ROUTER-INPUT",
    "KUBE-ROUTER-FORWARD",
    "KUBE-ROUTER-OUTPUT",
)
SET_PREFIXES = ("KUBE-SRC-", "KUBE-DST-", "KUBE-POOL-", "kube-router-local-pods")
JUMP_COMMENT = "kube-router netpol - "
SPELLING_CACHE_SIZE = 1 << 16  # rules whose iptables-save spelling is remembered


def is_own_chain(name: str) -> bool:
    return name.startswith(OWN_CHAIN_PREFIXES)


def set_spec(spec: IPSetSpec) -> ipset.SetSpec:
    return _set_spec(spec.name, spec.kind, spec.family)


@functools.lru_cache(maxsize=SPELLING_CACHE_SIZE)
def _set_spec(name: str, kind: str, family: Family) -> ipset.SetSpec:
    return ipset.SetSpec(name, kind, "inet6" if family == IPV6 else "inet")


@dataclass
class KernelView:
    """What a full sync found in the kernel: the filter table and our sets."""

    table: ipt.Table
    sets: Mapping[str, ipset.SetState]
    family: ipt.Family = "ipv4"


@dataclass
class Plan:
    """Applied in this order: ``rules_before`` (empties chains that hold sets about to be
    recreated), ``sets_before``, ``rules``, ``sets_after`` (destroys)."""

    sets_before: ipset.Transaction
    rules: ipt.Transaction
    sets_after: ipset.Transaction
    rule_lines: int = 0
    rules_before: ipt.Transaction | None = None


def _lists_first(names: Iterable[str], kinds: Mapping[str, str]) -> list[str]:
    """Destroy order: a list:set holds references to its members, so it goes first."""
    return sorted(names, key=lambda n: (kinds.get(n) != LIST_SET, n))


def _is_our_jump(rule: ipt.Rule) -> bool:
    return JUMP_COMMENT in rule.spec and "-j KUBE-ROUTER-" in rule.spec


def _fix_builtin_jumps(tx: ipt.Transaction, desired: FamilyState, table: ipt.Table) -> int:
    """Our jump must be the first rule of INPUT/FORWARD/OUTPUT, exactly once."""
    lines = 0
    for chain, jump in desired.builtin_jumps().items():
        rules = table.chains[chain].rules if chain in table.chains else []
        ours = [r for r in rules if _is_our_jump(r)]
        if len(ours) == 1 and rules[0] is ours[0]:
            continue
        for rule in ours:
            tx.delete(chain, rule.spec)
            lines += 1
        tx.insert(chain, jump, 1)
        lines += 1
    return lines


def _write_chains(tx: ipt.Transaction, chains: Mapping[str, list[str]]) -> int:
    for chain in chains:
        tx.declare(chain)
    lines = len(chains)
    for chain, rules in chains.items():
        for rule in rules:
            tx.append(chain, rule)
        lines += len(rules)
    return lines


def _remove_chains(tx: ipt.Transaction, names: list[str]) -> int:
    for name in names:
        tx.flush(name)
    for name in names:
        tx.delete_chain(name)
    return 2 * len(names)


def plan_full(desired: FamilyState, kernel: KernelView) -> Plan:
    """Make the kernel match ``desired``, touching only what differs from what it holds."""
    before, after, tx = ipset.Transaction(), ipset.Transaction(), ipt.Transaction("filter")
    retyped = _sync_sets(before, desired.sets, kernel.sets)
    emptied, pre = _empty_holders(kernel.table, retyped)
    own = desired.own_chains()
    lines = _write_chains(
        tx, {c: r for c, r in own.items() if c in emptied or not _chain_holds(kernel, c, r)}
    )
    stale = sorted(c for c in kernel.table.chains if is_own_chain(c) and c not in own)
    lines += _remove_chains(tx, stale)
    lines += _fix_builtin_jumps(tx, desired, kernel.table)
    kinds = {n: have.spec.type for n, have in kernel.sets.items()}
    for name in _lists_first(set(kernel.sets) - set(desired.sets), kinds):
        after.destroy(name)
    return Plan(before, tx, after, lines, pre)


def _empty_holders(table: ipt.Table, names: set[str]) -> tuple[set[str], ipt.Transaction | None]:
    """Flush our chains whose rules match a set that must be recreated with another type (a
    set of upstream's layout, or one damaged from outside): the kernel will not destroy a set a
    rule holds. Packets meanwhile meet the pod chains' drop (fail closed) until ``rules``."""
    if not names:
        return set(), None
    tokens = {f" {name} " for name in names}
    holders = {
        chain.name
        for chain in table.chains.values()
        if is_own_chain(chain.name)
        and any(t in f"{rule.spec} " for rule in chain.rules for t in tokens)
    }
    if not holders:
        return set(), None
    pre = ipt.Transaction("filter")
    for name in sorted(holders):
        pre.flush(name)
    return holders, pre


def _chain_holds(kernel: KernelView, name: str, rules: list[str]) -> bool:
    """Whether the kernel's chain has exactly ``rules``, compared as iptables-save spells them."""
    chain = kernel.table.chains.get(name)
    if chain is None or len(chain.rules) != len(rules):
        return False
    return all(
        have.spec == rule or have.spec == saved_spelling(rule, kernel.family)
        for have, rule in zip(chain.rules, rules, strict=True)
    )


@functools.lru_cache(maxsize=SPELLING_CACHE_SIZE)
def saved_spelling(rule: str, family: ipt.Family) -> str:
    """How iptables-save prints ``rule`` (``-s``/``-d`` first, ``/32``, implicit matches...).

    The same canonical form the strict fake gives, which agrees with the real tools; remembered,
    so a rule is parsed once however many full syncs compare it."""
    try:
        return parse_rule(ipt.tokenize(rule), family, chain_exists=_any_chain).text
    except RuleError:
        return rule  # cannot be spelt: compares unequal, and the chain is rewritten


def _any_chain(_name: str) -> bool:
    return True


def _sync_sets(
    before: ipset.Transaction,
    desired: Mapping[str, IPSetSpec],
    kernel: Mapping[str, ipset.SetState],
) -> set[str]:
    """Sets the kernel lacks are created; the others get only their missing and extra members.
    Returns the sets recreated because the kernel's has another type.

    Member sets come before the list:sets that hold them. New sets are created largest first:
    ``ipset restore`` looks each line's set up by walking the sets it has seen in creation order,
    so a big set created early keeps its adds cheap.
    """
    retyped: set[str] = set()
    for lists in (False, True):
        part = {n: s for n, s in desired.items() if (s.kind == LIST_SET) == lists}
        fresh = sorted(
            (set_spec(spec) for name, spec in part.items() if name not in kernel),
            key=lambda want: -len(part[want.name].entries),
        )
        for want in fresh:
            before.fill(want, part[want.name].entries)
        for name, have in kernel.items():
            spec = part.get(name)
            if spec is not None and not _repair_set(before, spec, have):
                retyped.add(name)
    return retyped


def _repair_set(before: ipset.Transaction, spec: IPSetSpec, have: ipset.SetState) -> bool:
    """Repair one existing set's members; False when it had to be recreated with our type."""
    want = set_spec(spec)
    if (have.spec.type, have.spec.family, have.spec.timeout) != (
        want.type,
        want.family,
        want.timeout,
    ):
        # Upstream's layout (hash:ip where we keep a list:set) or damage from outside; swap
        # cannot cross types, so the set is recreated (plan_full empties the chains holding it).
        before.destroy(spec.name).fill(want, spec.entries)
        return False
    _repair_members(before, want, have.entries, spec.entries)
    return True


def _repair_members(
    before: ipset.Transaction, spec: ipset.SetSpec, have: frozenset[str], entries: Iterable[str]
) -> None:
    """Delete and add the members that differ; ``have`` is canonical (from ``ipset save``), so
    only the desired entries whose text differs need normalising."""
    wanted = set(entries)
    came = {ipset.normalize_entry(spec.type, spec.family, e) for e in wanted - have}
    gone = have - wanted - came
    for entry in sorted(gone):
        before.delete(spec, entry.removesuffix(" nomatch"))
    for entry in sorted(came - have):
        before.add(spec, entry)


def _set_diff(before: ipset.Transaction, new: IPSetSpec, old: IPSetSpec | None) -> None:
    if old is None and new.kind == LIST_SET:
        # No rule uses a new list yet, so no swap is needed; and destroying the temporary
        # list:set of a swap would wait for an RCU barrier. Flushed: one left over by a crash.
        spec = set_spec(new)
        before.create(spec).flush(new.name)
        for entry in new.entries:
            before.add(spec, entry)
        return
    if old is None or (old.kind, old.family) != (new.kind, new.family):
        before.replace(set_spec(new), new.entries)
        return
    spec = set_spec(new)
    edit = new.edit
    if edit is not None and edit.base is old.entries:  # a peer-set delta of the applied set
        gone, came = edit.removed, edit.added
    else:
        old_entries, new_entries = set(old.entries), set(new.entries)
        gone, came = frozenset(old_entries - new_entries), frozenset(new_entries - old_entries)
    for entry in sorted(gone):
        before.delete(spec, entry.removesuffix(" nomatch"))
    for entry in sorted(came):
        before.add(spec, entry)


PATCH_MIN_RULES = 32  # smaller chains are simply rewritten


Patch = tuple[list[str], list[tuple[int, str]]]  # rules to delete, (position, rule) to insert


def _chain_patch(old: list[str], new: list[str]) -> Patch | None:
    """How to edit a long chain in place (``-D`` what went, ``-I`` what came), if worth it.

    Adding one pod to a node with hundreds touches two rules of each KUBE-ROUTER-* chain; a
    rewrite would resend thousands. What lies between the common head and tail is replaced.
    None when the chain is short or the change is large.
    """
    if len(new) < PATCH_MIN_RULES or len(old) < PATCH_MIN_RULES:
        return None
    limit = min(len(old), len(new))
    head = 0
    while head < limit and old[head] == new[head]:
        head += 1
    tail = 0
    while tail < limit - head and old[-1 - tail] == new[-1 - tail]:
        tail += 1
    gone = old[head : len(old) - tail]
    came = [(j, new[j]) for j in range(head, len(new) - tail)]
    if len(gone) + len(came) > len(new) // 2:
        return None
    return gone, came


def _apply_patch(tx: ipt.Transaction, chain: str, patch: Patch) -> int:
    gone, came = patch
    for rule in gone:
        tx.delete(chain, rule)
    for j, rule in came:  # ascending: each lands at its final position
        tx.insert(chain, rule, j + 1)
    return len(gone) + len(came)


def plan_incremental(desired: FamilyState, last: FamilyState) -> Plan:
    before, after, tx = ipset.Transaction(), ipset.Transaction(), ipt.Transaction("filter")
    # Unchanged pieces are the very same objects from one sync to the next: "is" first. Member
    # sets before the list:sets that will hold them.
    changed_sets = [
        (name, spec, old)
        for name, spec in desired.sets.items()
        if (old := last.sets.get(name)) is not spec and old != spec
    ]
    changed_sets.sort(key=lambda c: c[1].kind == LIST_SET)
    for _, spec, old in changed_sets:
        _set_diff(before, spec, old)
    own, old_own = desired.own_chains(), last.own_chains()
    changed = {c: r for c, r in own.items() if (o := old_own.get(c)) is not r and o != r}
    patches = {
        c: p
        for c in changed
        if c in old_own
        if (p := _chain_patch(old_own[c], changed[c])) is not None
    }
    # New chains first, so that patched-in jumps find them.
    lines = _write_chains(tx, {c: r for c, r in changed.items() if c not in patches})
    for chain, patch in patches.items():
        lines += _apply_patch(tx, chain, patch)
    lines += _remove_chains(tx, sorted(set(old_own) - set(own)))
    kinds = {n: spec.kind for n, spec in last.sets.items()}
    for name in _lists_first(set(last.sets) - set(desired.sets), kinds):
        after.destroy(name)
    return Plan(before, tx, after, lines)


def plan_cleanup(table: ipt.Table, sets: Mapping[str, ipset.SetState]) -> Plan:
    """Remove every trace of the policy controller: our jumps, chains and sets."""
    tx = ipt.Transaction("filter")
    lines = 0
    for chain in BUILTIN_CHAINS:
        for rule in table.chains[chain].rules if chain in table.chains else []:
            if _is_our_jump(rule):
                tx.delete(chain, rule.spec)
                lines += 1
    lines += _remove_chains(tx, sorted(c for c in table.chains if is_own_chain(c)))
    after = ipset.Transaction()
    for name in _lists_first(sets, {n: have.spec.type for n, have in sets.items()}):
        after.destroy(name)
    return Plan(ipset.Transaction(), tx, after, lines)


def family_names(family: Family) -> tuple[ipt.Family, str]:
    """The iptables and ipset spellings of a compiler family."""
    return ("ipv6", "inet6") if family == IPV6 else ("ipv4", "inet")
