"""NetworkPolicy compiler: Kubernetes objects in, desired chains and ipsets out. No I/O.

The desired state is split so a controller can recompute only what changed:

- :func:`compile_static` (config and node pod CIDRs): the chains every node has;
- :func:`compile_policy` (one policy, the pods and namespaces): its chain and sets per family,
  the pods it targets, or an error saying why it cannot be compiled;
- :func:`compile_pod` (one local pod and the policies selecting it): its firewall chain and the
  jumps into it;
- :func:`assemble` (in :mod:`.assemble`) puts the pieces of one family together into whole
  chains and sets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from kube_router.config import Config
from kube_router.controllers.netpol.assemble import Assembler, assemble
from kube_router.controllers.netpol.names import Family
from kube_router.controllers.netpol.pieces import (
    HASH_IP,
    HASH_NET,
    Chains,
    IPSetSpec,
    PodFamily,
    PodPiece,
    PolicyFamily,
    PolicyPiece,
    enabled_families,
    is_actionable,
    is_finished,
    is_local,
    pod_ip,
    pod_ips,
    pod_key,
)
from kube_router.controllers.netpol.pod_rules import compile_pod
from kube_router.controllers.netpol.policy_rules import EGRESS, INGRESS, policy_family
from kube_router.controllers.netpol.resolve import (
    PodIndex,
    PodsByNs,
    PolicyError,
    RuleInfo,
    all_pods,
    excepts_cross,
    family_ips,
    ipblock_entries,
    named_ports_anywhere,
    peer_pods,
    policy_types,
    resolve_ports,
    select_in,
    target_pods,
    union_entries,
)
from kube_router.controllers.netpol.static_rules import compile_static
from kube_router.k8s.models import (
    IPBlock,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    Pod,
)

__all__ = [
    "HASH_IP",
    "HASH_NET",
    "Assembler",
    "Chains",
    "IPSetSpec",
    "PodFamily",
    "PodIndex",
    "PodPiece",
    "PodsByNs",
    "PolicyFamily",
    "PolicyPiece",
    "assemble",
    "compile_pod",
    "compile_policy",
    "compile_static",
    "is_actionable",
    "is_finished",
    "is_local",
    "pod_ip",
    "pod_ips",
    "pod_key",
]


def _resolve_rule(
    policy: NetworkPolicy,
    where: str,
    peers: Sequence[NetworkPolicyPeer],
    ports: Sequence[NetworkPolicyPort],
    context: tuple[PodsByNs, Sequence[Namespace], tuple[Family, ...]],
    warnings: list[str],
) -> RuleInfo:
    pods_index, namespaces, families = context
    rule = RuleInfo(match_all_peers=not peers, selects_pods=False)
    seen: set[int] = set()  # ids: the index holds one object per pod
    blocks: dict[Family, list[IPBlock]] = {}
    for i, peer in enumerate(peers):
        at = f"{where}[{i}]"
        if peer.pod_selector is not None or peer.namespace_selector is not None:
            rule.selects_pods = True
            pods, ips = peer_pods(policy, peer, pods_index, namespaces, at)
            rule.peer_ips.extend(ips)
            for pod in pods:
                if id(pod) not in seen:
                    seen.add(id(pod))
                    rule.peer_pods.append(pod)
        elif peer.ip_block is not None:
            family, entries = ipblock_entries(peer.ip_block, at)
            if family in families:
                rule.ipblocks.setdefault(family, []).extend(entries)
                blocks.setdefault(family, []).append(peer.ip_block)
            else:
                warnings.append(f"{at}.ipBlock {peer.ip_block.cidr}: {family} is not enabled")
    for family, several in blocks.items():
        if len(several) > 1 and excepts_cross(several):  # upstream's layout would be wrong
            rule.ipblocks[family] = union_entries(several, where)
    rule.match_all_ports = not ports
    return rule


def _resolve_rules(
    policy: NetworkPolicy,
    targets: list[Pod],
    context: tuple[PodsByNs, Sequence[Namespace], tuple[Family, ...]],
    warnings: list[str],
) -> dict[str, list[RuleInfo]]:
    ingress, egress = policy_types(policy)
    out: dict[str, list[RuleInfo]] = {}
    if ingress:
        out[INGRESS] = []
        for i, irule in enumerate(policy.spec.ingress):
            where = f"spec.ingress[{i}]"
            rule = _resolve_rule(
                policy, f"{where}.from", irule.from_, irule.ports, context, warnings
            )
            rule.ports, rule.named = resolve_ports(irule.ports, targets, where)
            out[INGRESS].append(rule)
    if egress:
        out[EGRESS] = []
        for i, erule in enumerate(policy.spec.egress):
            where = f"spec.egress[{i}]"
            rule = _resolve_rule(policy, f"{where}.to", erule.to, erule.ports, context, warnings)
            # A named port is the destination pod's: the peer pods' for selector peers, any
            # pod's for no ``to`` and for ipBlocks (upstream takes the policy namespace's pods'
            # numbers and matches them towards any address, and drops them towards ipBlocks).
            rule.ports, rule.named = resolve_ports(erule.ports, rule.peer_pods, where)
            if named_ports_anywhere(erule):
                rule.named_any = resolve_ports(erule.ports, all_pods(context[0]), where)[1]
            out[EGRESS].append(rule)
    return out


def _failed(
    policy: NetworkPolicy, pods_index: PodsByNs, reason: str, warnings: list[str]
) -> PolicyPiece:
    """The error result: target pods as well as they can be known (all of the namespace when
    the podSelector itself is bad), both directions when the policy types are bad."""
    ns = policy.metadata.namespace
    try:
        targets = target_pods(policy, pods_index)
    except PolicyError:
        targets = select_in(pods_index, ns, LabelSelector())
    try:
        ingress, egress = policy_types(policy)
    except PolicyError:
        ingress, egress = True, True
    return PolicyPiece(
        namespace=ns,
        name=policy.metadata.name,
        ingress=ingress,
        egress=egress,
        target_pods=frozenset(pod_key(p) for p in targets),
        error=reason,
        warnings=tuple(warnings),
    )


def compile_policy(
    policy: NetworkPolicy, pods_index: PodsByNs, namespaces: Iterable[Namespace], cfg: Config
) -> PolicyPiece:
    """Compile one policy; bad input gives a result with ``error`` set instead of raising.

    ``pods_index`` maps a namespace to its pods (any node, any state: only actionable pods
    count); ``namespaces`` are all namespaces, for namespaceSelectors.
    """
    warnings: list[str] = []
    families = enabled_families(cfg)
    try:
        targets = target_pods(policy, pods_index)
        context = (pods_index, list(namespaces), families)
        directions = _resolve_rules(policy, targets, context, warnings)
    except PolicyError as err:
        return _failed(policy, pods_index, str(err), warnings)
    ns, name = policy.metadata.namespace, policy.metadata.name
    all_ips = [ip for pod in targets for ip in pod_ips(pod)]
    return PolicyPiece(
        namespace=ns,
        name=name,
        ingress=INGRESS in directions,
        egress=EGRESS in directions,
        target_pods=frozenset(pod_key(p) for p in targets),
        families={
            f: policy_family(ns, name, f, directions, family_ips(all_ips, f)) for f in families
        },
        warnings=tuple(warnings),
    )
