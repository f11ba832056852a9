"""Peer-set deltas: a pod of another namespace changes only set members, not a policy's rules.

When a pod reaches a policy only through namespaceSelector peers, its add, change or removal
changes the members of those rules' peer sets and nothing else: the rules name the sets, the
targets live in the policy's own namespace. Editing the compiled piece costs microseconds where
a recompile re-selects every peer pod. Anything unusual (named ports, an IP another pod also
holds, a set that is not there) returns None, and the caller recompiles instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from kube_router.controllers.netpol.names import Family, egress_pods_set, ingress_pods_set
from kube_router.controllers.netpol.pieces import (
    IPSetSpec,
    PolicyFamily,
    PolicyPiece,
    ip_family,
    is_actionable,
    pod_ips,
)
from kube_router.controllers.netpol.resolve import has_named_port
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


def selects_across(
    peers: Sequence[NetworkPolicyPeer], pod: Pod, ns_labels: Mapping[str, str]
) -> bool:
    """Whether a namespaceSelector peer among ``peers`` selects ``pod``."""
    return any(
        p.namespace_selector is not None
        and may_match(p.namespace_selector, ns_labels)
        and may_match(p.pod_selector, pod.metadata.labels)
        for p in peers
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
    pod: Pod | None, peers: Sequence[NetworkPolicyPeer], labels: Mapping[str, str]
) -> set[str]:
    if pod is None or not is_actionable(pod) or not selects_across(peers, pod, labels):
        return set()
    return set(pod_ips(pod))


def apply_delta(
    piece: PolicyPiece,
    policy: NetworkPolicy,
    changes: Sequence[PodChange],
    ns_labels: Mapping[str, Mapping[str, str]],
    ip_owners: Mapping[str, int],
) -> PolicyPiece | None:
    """The piece with its peer sets edited for ``changes`` (pods of other namespaces), or None."""
    rule_ports = [r.ports for r in policy.spec.ingress] + [r.ports for r in policy.spec.egress]
    if piece.error or any(has_named_port(ports) for ports in rule_ports):
        return None
    sets = {s.name: s for pf in piece.families.values() for s in pf.sets}
    edits: dict[str, tuple[set[str], set[str]]] = {}  # set name -> (remove, add)
    for old, new in changes:
        for peers, direction, rule in rule_peers(policy):
            old_ips = _ips(old, peers, ns_labels.get(old.metadata.namespace, {}) if old else {})
            new_ips = _ips(new, peers, ns_labels.get(new.metadata.namespace, {}) if new else {})
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
                remove, add = edits[spec.name]
                entries = tuple(sorted((set(spec.entries) - remove) | add))
                new_sets.append(dataclasses.replace(sets[spec.name], entries=entries))
            else:
                new_sets.append(spec)
        families[family] = dataclasses.replace(pf, sets=tuple(new_sets))
    return dataclasses.replace(piece, families=families)
