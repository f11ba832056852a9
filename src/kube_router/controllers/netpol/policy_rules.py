"""The rules and sets of one policy's chains (one per direction), for one family.

Each allowing match becomes two rules, as upstream's pair but for its second half::

    <comment> [-m set --match-set SRC src] [-m set --match-set DST dst] [-p proto [--dport p]]
        -j MARK --set-xmark 0x10000/0x10000
    <comment> -m mark --mark 0x10000/0x10000 -j RETURN

Upstream repeats the whole match in the RETURN rule. The mark alone decides the same: the pod
chain clears it before jumping here, so it is set only by the MARK rule just above (return now)
or by an earlier policy chain that already allowed the packet (return at once, allowed either way).
Leaving the sets out halves the set lookups: ``iptables-restore`` finds each ``--match-set`` name
by walking the kernel's list of sets, which at 1,000 policies was most of its time.

Ingress rules put the policy's target pods on the destination side and the peers on the source
side; egress rules the other way round. A named port is matched through a set of the pods that
expose it (on the destination side) and the number it stands for: the target pods for ingress,
the peer pods for egress to selected pods, and every pod of the cluster for egress to any address
or to an ipBlock (beside the ipBlock's own set).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kube_router.controllers.netpol import names
from kube_router.controllers.netpol.names import Family
from kube_router.controllers.netpol.pieces import (
    HASH_IP,
    HASH_NET,
    IPSetSpec,
    PolicyFamily,
)
from kube_router.controllers.netpol.resolve import PortMatch, RuleInfo, family_ips
from kube_router.controllers.netpol.rulefmt import ALLOWED, id_comment, join

INGRESS = "ingress"
EGRESS = "egress"
NAMED_PORT_SUFFIX = " np"


@dataclass
class _Chain:
    """Rules and sets of one policy chain being built."""

    namespace: str
    name: str
    family: Family
    direction: str = INGRESS
    rules: list[str] = field(default_factory=list)
    sets: dict[str, IPSetSpec] = field(default_factory=dict)

    def add_set(self, name: str, kind: str, entries: tuple[str, ...]) -> str:
        self.sets.setdefault(name, IPSetSpec(name, kind, self.family, entries))
        return name

    def allow(
        self, kind: str, src: str, dst: str, port: PortMatch | None, also_dst: str = ""
    ) -> None:
        text = id_comment(self.namespace, self.name, f"{self.direction} {kind}")
        match = join(
            text,
            f"-m set --match-set {src} src" if src else "",
            f"-m set --match-set {dst} dst" if dst else "",
            f"-m set --match-set {also_dst} dst" if also_dst else "",
            f"-p {port.protocol}" if port else "",
            f"--dport {port.port}" if port and port.port else "",
        )
        self.rules.append(f"{match} -j MARK --set-xmark {ALLOWED}")
        self.rules.append(f"{text} -m mark --mark {ALLOWED} -j RETURN")

    def pair(self, target: str, other: str) -> tuple[str, str]:
        """(src, dst): target pods are the destination of ingress, the source of egress."""
        return (other, target) if self.direction == INGRESS else (target, other)


def _named_port_set(chain: _Chain, rule_no: int, index: int, ips: tuple[str, ...]) -> str:
    namer = (
        names.ingress_named_port_set if chain.direction == INGRESS else names.egress_named_port_set
    )
    name = namer(chain.namespace, chain.name, rule_no, index, chain.family)
    return chain.add_set(name, HASH_IP, family_ips(ips, chain.family))


def _anywhere_named_port_set(chain: _Chain, rule_no: int, index: int, ips: tuple[str, ...]) -> str:
    name = names.egress_any_named_port_set(
        chain.namespace, chain.name, rule_no, index, chain.family
    )
    return chain.add_set(name, HASH_IP, family_ips(ips, chain.family))


def _allow_ports(
    chain: _Chain, kind: str, rule_no: int, rule: RuleInfo, src: str, dst: str, anywhere: bool
) -> None:
    """Allow src->dst on the rule's ports: all ports, each numeric port, each named port.

    A named port matches its number towards the pods that expose it under that name: a set of
    them replaces the destination side (target or peer pods); with ``anywhere`` (egress to any
    address or to an ipBlock) it is a set of such pods of the whole cluster, matched beside the
    destination set, if any.
    """
    if rule.match_all_ports:
        chain.allow(kind, src, dst, None)
        return
    for port in rule.ports:
        chain.allow(kind, src, dst, port)
    named = rule.named_any if anywhere else rule.named
    for index, endpoint in enumerate(named):
        number = PortMatch(endpoint.protocol, str(endpoint.port))
        if anywhere:
            owners = _anywhere_named_port_set(chain, rule_no, index, endpoint.ips)
            chain.allow(kind + NAMED_PORT_SUFFIX, src, dst, number, also_dst=owners)
        else:
            owners = _named_port_set(chain, rule_no, index, endpoint.ips)
            chain.allow(kind + NAMED_PORT_SUFFIX, src, owners, number)


def _peer_pods_set(chain: _Chain, rule_no: int, rule: RuleInfo) -> str:
    namer = names.ingress_pods_set if chain.direction == INGRESS else names.egress_pods_set
    ips = family_ips(rule.peer_ips, chain.family)
    return chain.add_set(namer(chain.namespace, chain.name, rule_no, chain.family), HASH_IP, ips)


def _ipblock_set(chain: _Chain, rule_no: int, entries: list[str]) -> str:
    namer = names.ingress_ipblock_set if chain.direction == INGRESS else names.egress_ipblock_set
    name = namer(chain.namespace, chain.name, rule_no, chain.family)
    return chain.add_set(name, HASH_NET, tuple(sorted(set(entries))))


def _add_rule(chain: _Chain, rule_no: int, rule: RuleInfo, target: str) -> None:
    """One ingress/egress rule: peer pods, then any peer, then ipBlocks (upstream's order)."""
    egress = chain.direction == EGRESS
    if rule.selects_pods:
        src, dst = chain.pair(target, _peer_pods_set(chain, rule_no, rule))
        _allow_ports(chain, "pods", rule_no, rule, src, dst, anywhere=False)
    if rule.match_all_peers:
        src, dst = chain.pair(target, "")
        _allow_ports(chain, "any", rule_no, rule, src, dst, anywhere=egress)
    blocks = rule.ipblocks.get(chain.family, [])
    if blocks:
        src, dst = chain.pair(target, _ipblock_set(chain, rule_no, blocks))
        _allow_ports(chain, "cidr", rule_no, rule, src, dst, anywhere=egress)


def policy_family(
    namespace: str,
    name: str,
    family: Family,
    directions: dict[str, list[RuleInfo]],
    target_ips: tuple[str, ...],
) -> PolicyFamily:
    """The chains and sets of a policy for one family; ``directions`` holds the enforced ones.

    Each direction gets a chain of its own (:func:`names.direction_chains`): a pod chain jumps to
    the ingress one only for packets to the pod and to the egress one only for packets from it.
    """
    chain_names = names.direction_chains(
        namespace, name, family, INGRESS in directions, EGRESS in directions
    )
    sets: dict[str, IPSetSpec] = {}
    chains: dict[str, tuple[str, tuple[str, ...]]] = {}
    for direction, rules in directions.items():
        chain = _Chain(namespace, name, family, direction, sets=sets)
        namer = names.target_dst_set if direction == INGRESS else names.target_src_set
        target = chain.add_set(namer(namespace, name, family), HASH_IP, target_ips)
        for rule_no, rule in enumerate(rules):
            _add_rule(chain, rule_no, rule, target)
        chains[direction] = (chain_names[direction], tuple(chain.rules))
    return PolicyFamily(chains, tuple(sets.values()))
