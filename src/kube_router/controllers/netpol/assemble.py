"""Put one family's pieces together: static chains, policy chains and sets, local pod chains.

An :class:`Assembler` remembers what each policy piece contributed, so a sync in which a few
policies changed re-assembles those few instead of all of them.
"""

from __future__ import annotations

from collections.abc import Iterable

from kube_router.controllers.netpol.names import ROUTER_CHAINS, Family, local_pods_set
from kube_router.controllers.netpol.pieces import (
    HASH_IP,
    Chains,
    IPSetSpec,
    PodFamily,
    PodPiece,
    PolicyPiece,
)
from kube_router.controllers.netpol.resolve import family_ips
from kube_router.controllers.netpol.static_rules import ROUTER_TAIL

PolicyKey = tuple[str, str]  # namespace, name


class Assembler:
    """One family's whole chains and sets, re-assembling only policy pieces that changed.

    Chains of unchanged policies are shared between successive results: nothing may mutate a
    chain list it is handed.
    """

    def __init__(self, family: Family) -> None:
        self.family = family
        self._pieces: dict[PolicyKey, PolicyPiece] = {}
        self._owned: dict[PolicyKey, tuple[tuple[str, ...], tuple[str, ...]]] = {}  # chains, sets
        self._chains: Chains = {}
        self._sets: dict[str, IPSetSpec] = {}
        self._pod_lists: dict[str, tuple[PodFamily, list[str]]] = {}  # chain -> its rules

    def build(
        self,
        static: Chains,
        policies: Iterable[PolicyPiece],
        pods: Iterable[PodPiece],
        default_deny: bool = False,
    ) -> tuple[Chains, dict[str, IPSetSpec]]:
        """Whole chains and sets from the static chains, every policy piece and local pod.

        Pod jumps go into the ``KUBE-ROUTER-*`` chains before their two tail rules. With default
        deny, ``kube-router-local-pods`` lists the local pods that have a chain.
        """
        seen: set[PolicyKey] = set()
        for piece in policies:
            key = (piece.namespace, piece.name)
            seen.add(key)
            if self._pieces.get(key) is not piece:
                self._drop(key)
                self._add(key, piece)
        for key in set(self._pieces) - seen:
            self._drop(key)
        chains: Chains = {chain: list(rules) for chain, rules in static.items()}
        chains.update(self._chains)
        sets = dict(self._sets)
        local_ips = self._add_pods(chains, pods)
        if default_deny:
            name = local_pods_set(self.family)
            sets[name] = IPSetSpec(name, HASH_IP, self.family, family_ips(local_ips, self.family))
        return chains, sets

    def _add(self, key: PolicyKey, piece: PolicyPiece) -> None:
        self._pieces[key] = piece
        part = piece.families.get(self.family)
        if part is None:
            return
        for chain, rules in part.chains.values():
            self._chains[chain] = list(rules)
        self._sets.update((s.name, s) for s in part.sets)
        self._owned[key] = (
            tuple(chain for chain, _ in part.chains.values()),
            tuple(s.name for s in part.sets),
        )

    def _drop(self, key: PolicyKey) -> None:
        self._pieces.pop(key, None)
        chains, names = self._owned.pop(key, ((), ()))
        for chain in chains:
            self._chains.pop(chain, None)
        for name in names:
            self._sets.pop(name, None)

    def _add_pods(self, chains: Chains, pods: Iterable[PodPiece]) -> list[str]:
        local_ips: list[str] = []
        jumps: dict[str, list[str]] = {chain: [] for chain in ROUTER_CHAINS}
        lists: dict[str, tuple[PodFamily, list[str]]] = {}
        for pod in sorted(pods, key=lambda p: (p.namespace, p.name)):
            pod_family = pod.families.get(self.family)
            if pod_family is None:
                continue
            known = self._pod_lists.get(pod.chain)
            if known is None or known[0] is not pod_family:
                known = (pod_family, list(pod_family.rules))
            lists[pod.chain] = known
            chains[pod.chain] = known[1]
            local_ips.append(pod_family.ip)
            for chain in ROUTER_CHAINS:
                jumps[chain].extend(pod_family.jumps.get(chain, ()))
        self._pod_lists = lists
        tail = len(ROUTER_TAIL)
        for chain in ROUTER_CHAINS:
            rules = chains[chain]
            chains[chain] = rules[: len(rules) - tail] + jumps[chain] + rules[len(rules) - tail :]
        return local_ips


def assemble(
    static: Chains,
    policies: Iterable[PolicyPiece],
    pods: Iterable[PodPiece],
    family: Family,
    default_deny: bool = False,
) -> tuple[Chains, list[IPSetSpec]]:
    """:meth:`Assembler.build` from nothing."""
    chains, sets = Assembler(family).build(static, policies, pods, default_deny)
    return chains, list(sets.values())
