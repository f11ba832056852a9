"""The whole desired network-policy state of this node, from the caches (pure, no I/O)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kube_router.config import Config
from kube_router.controllers.netpol.compile import (
    IPSetSpec,
    PolicyPiece,
    assemble,
    compile_pod,
    compile_policy,
    compile_static,
    is_actionable,
    is_local,
)
from kube_router.controllers.netpol.names import Family
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


def build_desired(
    cfg: Config,
    pods: Iterable[Pod],
    namespaces: Sequence[Namespace],
    policies: Iterable[NetworkPolicy],
    node_ips: set[str],
    node_pod_cidrs: Sequence[str],
) -> Desired:
    """Compile everything: static chains, every policy, every local pod's chain."""
    by_ns: dict[str, list[Pod]] = defaultdict(list)
    local: list[Pod] = []
    for pod in pods:
        if not is_actionable(pod):
            continue
        by_ns[pod.metadata.namespace].append(pod)
        if is_local(pod, node_ips):
            local.append(pod)
    pieces = [compile_policy(p, by_ns, namespaces, cfg) for p in policies]
    errors = {f"{p.namespace}/{p.name}": p.error for p in pieces if p.error}
    selecting: dict[str, list[PolicyPiece]] = defaultdict(list)
    for piece in pieces:
        for key in piece.target_pods:
            selecting[key].append(piece)
    pod_pieces = [
        compile_pod(pod, selecting.get(f"{pod.metadata.namespace}/{pod.metadata.name}", []), cfg)
        for pod in local
    ]
    families: dict[Family, FamilyState] = {}
    static = compile_static(cfg, list(node_pod_cidrs))
    for family, chains in static.items():
        all_chains, sets = assemble(chains, pieces, pod_pieces, family, cfg.netpol_default_deny)
        families[family] = FamilyState(all_chains, {s.name: s for s in sets})
    policy_chains = sum(len(p.families) for p in pieces)
    return Desired(families, errors, policy_chains)
