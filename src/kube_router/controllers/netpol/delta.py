"""Peer-set deltas: a pod a policy does not target changes only set members, not its rules.

When a pod reaches a policy only as a peer (never as a target, and the policy has no named
ports), its add, change or removal changes the members of those rules' peer sets and nothing
else: the rules name the sets. Editing the compiled piece costs microseconds where
a recompile re-selects every peer pod. Anything unusual (named ports, an IP another pod also
holds, a set that is not there) returns None, and the caller recompiles instead.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
from collections.abc import Mapping, Sequence

from kube_router.controllers.netpol.names import Family, egress_pods_set, ingress_pods_set
from kube_router.controllers.netpol.pieces import (
    IPSetSpec,
    PolicyFamily,
    PolicyPiece,
    SetEdit,
    ip_family,
    is_actionable,
    pod_ips,
)
from kube_router.controllers.netpol.resolve import has_named_port, resolves_named_ports_anywhere
from kube_router.controllers.netpol.selectors import matches
from kube_router.k8s.models import LabelSelector, NetworkPolicy, NetworkPolicyPeer, Pod

PodChange = tuple[Pod | None, Pod | None]


def may_match(selector: LabelSelector | None, labels: Mapping[str, str]) -> bool:
    """Selector matching where an absent selector matches and an invalid one may (its policy
    fails closed anyway, so assuming a match only costs a recompile)."""
    if selector is None:
        return True
    try:
        return matches(selector, labels)
    except ValueError:
        return True


def selects_peer(
    policy: NetworkPolicy,
    peers: Sequence[NetworkPolicyPeer],
    pod: Pod,
    ns_labels: Mapping[str, str],
) -> bool:
    """Whether a pod-selecting peer among ``peers`` (of ``policy``) may select ``pod``."""
    for p in peers:
        if p.namespace_selector is not None:
            if may_match(p.namespace_selector, ns_labels) and may_match(
                p.pod_selector, pod.metadata.labels
            ):
                return True
        elif (
            p.pod_selector is not None
            and pod.metadata.namespace == policy.metadata.namespace
            and may_match(p.pod_selector, pod.metadata.labels)
        ):
            return True
    return False


class Effect(enum.Enum):
    """What a pod change does to a compiled policy."""

    NONE = 0  # nothing
    DELTA = 1  # only peer-set members
    RECOMPILE = 2  # targets, named ports or rules may move


def pod_effect(policy: NetworkPolicy, pod: Pod, ns_labels: Mapping[str, str]) -> Effect:
    """Conservative: a pod of the policy's namespace that its podSelector may target, or any pod
    of that namespace when the policy has named ports (they resolve against those pods), or any
    pod at all when an egress rule resolves named ports on every pod, needs a recompile; a pod
    only a peer selects needs a peer-set delta."""
    if pod.metadata.namespace == policy.metadata.namespace and (
        has_named_ports(policy) or may_match(policy.spec.pod_selector, pod.metadata.labels)
    ):
        return Effect.RECOMPILE
    if resolves_named_ports_anywhere(policy):
        return Effect.RECOMPILE  # a pod anywhere may expose (or stop exposing) the named port
    if any(selects_peer(policy, peers, pod, ns_labels) for peers, _, _ in rule_peers(policy)):
        return Effect.DELTA
    return Effect.NONE


def has_named_ports(policy: NetworkPolicy) -> bool:
    spec = policy.spec
    return any(has_named_port(r.ports) for r in spec.ingress) or any(
        has_named_port(r.ports) for r in spec.egress
    )


def rule_peers(policy: NetworkPolicy) -> list[tuple[Sequence[NetworkPolicyPeer], str, int]]:
    """Every rule's peers with its direction and index."""
    out: list[tuple[Sequence[NetworkPolicyPeer], str, int]] = []
    out += [(r.from_, "ingress", i) for i, r in enumerate(policy.spec.ingress)]
    out += [(r.to, "egress", i) for i, r in enumerate(policy.spec.egress)]
    return out


def _holds(pod: Pod | None, ip: str) -> bool:
    return pod is not None and is_actionable(pod) and ip in pod_ips(pod)


def _set_name(policy: NetworkPolicy, direction: str, rule: int, family: Family) -> str:
    func = ingress_pods_set if direction == "ingress" else egress_pods_set
    return func(policy.metadata.namespace, policy.metadata.name, rule, family)


def _ips(
    policy: NetworkPolicy,
    pod: Pod | None,
    peers: Sequence[NetworkPolicyPeer],
    labels: Mapping[str, str],
) -> set[str]:
    if pod is None or not is_actionable(pod) or not selects_peer(policy, peers, pod, labels):
        return set()
    return set(pod_ips(pod))


def apply_delta(
    piece: PolicyPiece,
    policy: NetworkPolicy,
    changes: Sequence[PodChange],
    ns_labels: Mapping[str, Mapping[str, str]],
    ip_owners: Mapping[str, int],
) -> PolicyPiece | None:
    """The piece with its peer sets edited for ``changes`` (pods it does not target), or None."""
    if piece.error or has_named_ports(policy):
        return None
    sets = {s.name: s for pf in piece.families.values() for s in pf.sets}
    edits: dict[str, tuple[set[str], set[str]]] = {}  # set name -> (remove, add)
    for old, new in changes:
        for peers, direction, rule in rule_peers(policy):
            old_ips = _ips(
                policy, old, peers, ns_labels.get(old.metadata.namespace, {}) if old else {}
            )
            new_ips = _ips(
                policy, new, peers, ns_labels.get(new.metadata.namespace, {}) if new else {}
            )
            for ip in old_ips ^ new_ips:
                family = ip_family(ip)
                if family is None:
                    return None
                if family not in piece.families:
                    continue  # the policy has nothing for this family (not enabled)
                name = _set_name(policy, direction, rule, family)
                if name not in sets:
                    return None
                if ip in old_ips and ip_owners.get(ip, 0) > _holds(new, ip):
                    return None  # another pod holds this IP too: let a recompile decide
                remove, add = edits.setdefault(name, (set(), set()))
                (add if ip in new_ips else remove).add(ip)
    return _edited(piece, sets, edits) if edits else piece


def _edited(
    piece: PolicyPiece,
    sets: Mapping[str, IPSetSpec],
    edits: Mapping[str, tuple[set[str], set[str]]],
) -> PolicyPiece:
    families: dict[Family, PolicyFamily] = {}
    for family, pf in piece.families.items():
        new_sets = []
        for spec in pf.sets:
            if spec.name in edits:
                new_sets.append(_edited_set(sets[spec.name], *edits[spec.name]))
            else:
                new_sets.append(spec)
        families[family] = dataclasses.replace(pf, sets=tuple(new_sets))
    return dataclasses.replace(piece, families=families)


def _edited_set(spec: IPSetSpec, remove: set[str], add: set[str]) -> IPSetSpec:
    """The set with members removed and added, still sorted (bisect: a few members move in a
    set of thousands), remembering the edit for the plan."""
    entries = list(spec.entries)
    removed, added = set(), set()
    for entry in remove:
        i = bisect.bisect_left(entries, entry)
        if i < len(entries) and entries[i] == entry:
            del entries[i]
            removed.add(entry)
    for entry in add:
        i = bisect.bisect_left(entries, entry)
        if i == len(entries) or entries[i] != entry:
            entries.insert(i, entry)
            added.add(entry)
    edit = SetEdit(spec.entries, frozenset(removed - added), frozenset(added - removed))
    return dataclasses.replace(spec, entries=tuple(entries), edit=edit)
