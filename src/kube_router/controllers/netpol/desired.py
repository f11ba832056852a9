"""The whole desired network-policy state of this node, from the caches (pure, no I/O)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kube_router.config import Config
from kube_router.controllers.netpol.compile import (
    Assembler,
    IPSetSpec,
    PolicyPiece,
    compile_pod,
    compile_policy,
    compile_static,
    is_local,
)
from kube_router.controllers.netpol.delta import (
    Effect,
    PodChange,
    apply_delta,
    may_match,
    pod_effect,
    rule_peers,
)
from kube_router.controllers.netpol.names import Family
from kube_router.controllers.netpol.pieces import PodPiece, pod_key
from kube_router.controllers.netpol.resolve import PodIndex, resolves_named_ports_anywhere
from kube_router.k8s.models import Namespace, NetworkPolicy, Pod

BUILTIN_CHAINS = ("INPUT", "FORWARD", "OUTPUT")


@dataclass
class FamilyState:
    """One family's chains (our chains plus the one jump per built-in chain) and sets."""

    chains: dict[str, list[str]]
    sets: dict[str, IPSetSpec]

    def own_chains(self) -> dict[str, list[str]]:
        return {c: r for c, r in self.chains.items() if c not in BUILTIN_CHAINS}

    def builtin_jumps(self) -> dict[str, str]:
        return {c: self.chains[c][0] for c in BUILTIN_CHAINS if self.chains.get(c)}


@dataclass
class Desired:
    families: dict[Family, FamilyState]
    errors: dict[str, str] = field(default_factory=dict)  # "ns/name" -> why it cannot compile
    policy_chains: int = 0


def policy_sees_namespace(policy: NetworkPolicy, labels: dict[str, str]) -> bool:
    return any(
        p.namespace_selector is not None and may_match(p.namespace_selector, labels)
        for peers, _, _ in rule_peers(policy)
        for p in peers
    )


@dataclass
class Changes:
    """What changed since the last sync, from the change trackers."""

    pods: dict[str, tuple[Pod | None, Pod | None]] = field(default_factory=dict)
    namespaces: dict[str, tuple[Namespace | None, Namespace | None]] = field(default_factory=dict)
    policies: set[str] = field(default_factory=set)


class IncrementalCompiler:
    """Keeps compiled policy and pod pieces; recompiles only what a change can affect."""

    def __init__(self) -> None:
        self.index = PodIndex()
        self.local: dict[str, Pod] = {}
        self.policies: dict[str, PolicyPiece] = {}
        self.assemblers: dict[Family, Assembler] = {}
        self._across: dict[str, tuple[NetworkPolicy, bool]] = {}
        self.pods: dict[str, PodPiece] = {}
        self.recompiled_policies = 0
        self.recompiled_pods = 0
        self.deltas = 0

    def _reaching_across(self, objs: dict[str, NetworkPolicy]) -> dict[str, bool]:
        """Per policy: whether a namespaceSelector peer, or named ports resolved on every pod, let
        it reach other namespaces (kept per policy object, so only new and changed policies are
        looked at)."""
        fresh: dict[str, tuple[NetworkPolicy, bool]] = {}
        for key, pol in objs.items():
            hit = self._across.get(key)
            if hit is None or hit[0] is not pol:
                peers = (p for rule, _, _ in rule_peers(pol) for p in rule)
                wide = any(p.namespace_selector is not None for p in peers)
                hit = (pol, wide or resolves_named_ports_anywhere(pol))
            fresh[key] = hit
        self._across = fresh
        return {key: hit[1] for key, hit in fresh.items()}

    def _dirty_policies(
        self, changes: Changes, objs: dict[str, NetworkPolicy], ns_labels: dict[str, dict[str, str]]
    ) -> tuple[set[str], dict[str, list[PodChange]]]:
        """Policies to recompile, and policies a pod reaches only across namespaces (deltas)."""
        dirty = set(changes.policies) | (set(objs) ^ set(self.policies))
        for old_ns, new_ns in changes.namespaces.values():
            for ns in (n for n in (old_ns, new_ns) if n is not None):
                dirty |= {
                    k for k, pol in objs.items() if policy_sees_namespace(pol, ns.metadata.labels)
                }
        deltas: dict[str, list[PodChange]] = defaultdict(list)
        across = self._reaching_across(objs)
        for old, new in changes.pods.values():
            pods = [p for p in (old, new) if p is not None]
            home = {p.metadata.namespace for p in pods}
            for key, pol in objs.items():
                if key in dirty or (pol.metadata.namespace not in home and not across[key]):
                    continue
                effects = {
                    pod_effect(pol, p, ns_labels.get(p.metadata.namespace, {})) for p in pods
                }
                if Effect.RECOMPILE in effects:
                    dirty.add(key)
                elif Effect.DELTA in effects:
                    deltas[key].append((old, new))
        return dirty, {k: v for k, v in deltas.items() if k not in dirty}

    def build(
        self,
        cfg: Config,
        pods: Iterable[Pod],
        namespaces: Sequence[Namespace],
        policies: Iterable[NetworkPolicy],
        node_ips: set[str],
        node_pod_cidrs: Sequence[str],
        changes: Changes | None,
    ) -> Desired:
        """The whole desired state; ``changes`` None means recompile everything."""
        self._index(pods, node_ips, changes)
        by_ns, local, ip_owners = self.index, self.local, self.index.ip_owners
        objs = {f"{p.metadata.namespace}/{p.metadata.name}": p for p in policies}
        ns_labels = {n.metadata.name: n.metadata.labels for n in namespaces}
        deltas: dict[str, list[PodChange]] = {}
        if changes is None:
            self.policies, self.pods, self.assemblers = {}, {}, {}
            dirty = set(objs)
        else:
            dirty, deltas = self._dirty_policies(changes, objs, ns_labels)
        for key, pod_changes in deltas.items():
            edited = apply_delta(self.policies[key], objs[key], pod_changes, ns_labels, ip_owners)
            if edited is None:
                dirty.add(key)
            else:
                self.policies[key] = edited  # targets and rules unchanged: no pod chain moves
                self.deltas += 1
        changed_targets: set[str] = set()
        for key in dirty:
            old = self.policies.pop(key, None)
            new = compile_policy(objs[key], by_ns, namespaces, cfg) if key in objs else None
            self.recompiled_policies += new is not None
            if new is not None:
                self.policies[key] = new
            if old != new:
                changed_targets |= (old.target_pods if old else frozenset()) | (
                    new.target_pods if new else frozenset()
                )
        self._update_pods(cfg, local, changes, changed_targets)
        return _assemble_all(
            cfg, self.assemblers, self.policies.values(), self.pods.values(), node_pod_cidrs
        )

    def _index(self, pods: Iterable[Pod], node_ips: set[str], changes: Changes | None) -> None:
        """Rebuild the pod index (full), or move only the pods that changed."""
        if changes is None:
            pods = list(pods)
            self.index = PodIndex(pods)
            self.local = {pod_key(p): p for p in pods if is_local(p, node_ips)}
            return
        for key, (old, new) in changes.pods.items():
            self.local.pop(key, None)
            if old is not None:
                self.index.remove(old.metadata.namespace, old.metadata.name)
            if new is not None:
                self.index.put(new)
                if is_local(new, node_ips):
                    self.local[key] = new

    def _update_pods(
        self, cfg: Config, local: dict[str, Pod], changes: Changes | None, changed_targets: set[str]
    ) -> None:
        for key in set(self.pods) - set(local):
            del self.pods[key]
        changed_pods = set(changes.pods) if changes is not None else set(local)
        todo = {k for k in local if k not in self.pods} | (
            (changed_pods | changed_targets) & set(local)
        )
        if not todo:
            return
        selecting: dict[str, list[PolicyPiece]] = defaultdict(list)
        for piece in self.policies.values():
            for key in piece.target_pods & todo:
                selecting[key].append(piece)
        for key in todo:
            self.pods[key] = compile_pod(local[key], selecting.get(key, []), cfg)
            self.recompiled_pods += 1


def _assemble_all(
    cfg: Config,
    assemblers: dict[Family, Assembler],
    pieces: Iterable[PolicyPiece],
    pod_pieces: Iterable[PodPiece],
    node_pod_cidrs: Sequence[str],
) -> Desired:
    pieces, pod_pieces = list(pieces), list(pod_pieces)
    families: dict[Family, FamilyState] = {}
    for family, chains in compile_static(cfg, list(node_pod_cidrs)).items():
        assembler = assemblers.setdefault(family, Assembler(family))
        all_chains, sets = assembler.build(chains, pieces, pod_pieces, cfg.netpol_default_deny)
        families[family] = FamilyState(all_chains, sets)
    errors = {f"{p.namespace}/{p.name}": p.error for p in pieces if p.error}
    count = sum(len(pf.chains) for p in pieces for pf in p.families.values())
    return Desired(families, errors, count)


def build_desired(
    cfg: Config,
    pods: Iterable[Pod],
    namespaces: Sequence[Namespace],
    policies: Iterable[NetworkPolicy],
    node_ips: set[str],
    node_pod_cidrs: Sequence[str],
) -> Desired:
    """Compile everything from scratch: static chains, every policy, every local pod's chain."""
    return IncrementalCompiler().build(
        cfg, pods, namespaces, policies, node_ips, node_pod_cidrs, None
    )
