"""A local pod's firewall chain and the jumps into it.

Final order of a ``KUBE-POD-FW-*`` chain (upstream writes the first part with ``-I chain 1``, so
its lines land in reverse; these are the resulting positions):

1. jump to KUBE-NWPLCY-COMMON, then ACCEPT from the local node;
2. ``-s podIP -j KUBE-NWPLCY-DEFAULT`` when no policy covers the pod's egress, and
   ``-d podIP -j KUBE-NWPLCY-DEFAULT`` when none covers its ingress;
3. per selecting policy, ``-d podIP`` to its ingress chain and ``-s podIP`` to its egress chain
   (upstream jumps unconditionally to its one chain when a policy has both types: see
   ``names.policy_egress_chain`` for the hole that opens);
4. NFLOG (group 100, 10/minute, burst 10) and REJECT what no policy marked, clear the allowed
   mark, and set the netpol-ok mark.
"""

from __future__ import annotations

from collections.abc import Iterable

from kube_router.config import Config
from kube_router.controllers.netpol.names import (
    COMMON_CHAIN,
    DEFAULT_CHAIN,
    FORWARD_CHAIN,
    INPUT_CHAIN,
    OUTPUT_CHAIN,
    Family,
    pod_fw_chain,
)
from kube_router.controllers.netpol.pieces import (
    PodFamily,
    PodPiece,
    PolicyPiece,
    enabled_families,
    pod_ip,
)
from kube_router.controllers.netpol.rulefmt import (
    ALLOWED,
    MARK_ALLOWED,
    NETPOL_OK,
    NFLOG_BURST,
    NFLOG_GROUP,
    NFLOG_LIMIT,
    comment,
    id_comment,
    join,
)
from kube_router.k8s.models import Pod

PHYSDEV = "-m physdev --physdev-is-bridged"


def _policy_jumps(ip: str, family: Family, policies: list[PolicyPiece]) -> list[str]:
    """A jump per direction each policy enforces, matched to that direction's leg only: the
    ingress chain for packets to the pod, the egress chain for packets from it."""
    rules = []
    for policy in policies:
        if policy.error is not None:  # fail closed: counted as covering, but nothing allows
            continue
        text = id_comment(policy.namespace, policy.name, "policy")
        for direction, chain in policy.chains(family).items():
            where = f"-d {ip}" if direction == "ingress" else f"-s {ip}"
            rules.append(join(where, text, f"-j {chain}"))
    return rules


def pod_chain_rules(pod: Pod, ip: str, family: Family, policies: list[PolicyPiece]) -> list[str]:
    """The rules of the pod's firewall chain for one family, in final order."""
    ns, name = pod.metadata.namespace, pod.metadata.name
    rules = [
        f"{comment('common netpol rules')} -j {COMMON_CHAIN}",
        f"{comment('from local node')} -m addrtype --src-type LOCAL -d {ip} -j ACCEPT",
    ]
    if not any(p.egress for p in policies):
        rules.append(f"-s {ip} {comment('default egress')} -j {DEFAULT_CHAIN}")
    if not any(p.ingress for p in policies):
        rules.append(f"-d {ip} {comment('default ingress')} -j {DEFAULT_CHAIN}")
    rules.extend(_policy_jumps(ip, family, policies))
    unmarked = f"-m mark ! --mark {ALLOWED}"
    rules += [
        f"{id_comment(ns, name, 'log-drop')} {unmarked} -m limit --limit {NFLOG_LIMIT}"
        f" --limit-burst {NFLOG_BURST} -j NFLOG --nflog-group {NFLOG_GROUP}",
        f"{id_comment(ns, name, 'reject')} {unmarked} -j REJECT",
        f"-j MARK --set-mark 0/{MARK_ALLOWED:#x}",
        f"{comment('set netpol-ok mark')} -j MARK --set-mark {NETPOL_OK}",
    ]
    return rules


def pod_jumps(pod: Pod, ip: str, chain: str) -> dict[str, tuple[str, ...]]:
    """Rules in KUBE-ROUTER-INPUT/FORWARD/OUTPUT sending the pod's traffic to its chain."""
    ns, name = pod.metadata.namespace, pod.metadata.name
    into = f"{id_comment(ns, name, 'in')} -d {ip} -j {chain}"
    out = f"{id_comment(ns, name, 'out')} -s {ip} -j {chain}"
    return {
        INPUT_CHAIN: (out,),
        FORWARD_CHAIN: (into, f"{PHYSDEV} {into}", out, f"{PHYSDEV} {out}"),
        OUTPUT_CHAIN: (into, out),
    }


def compile_pod(pod: Pod, selecting_policies: Iterable[PolicyPiece], cfg: Config) -> PodPiece:
    """A local pod's chain and jumps for each enabled family it has an address in.

    ``selecting_policies`` are the compiled policies whose ``target_pods`` hold this pod (their
    order does not matter: they are sorted by namespace and name). A policy that failed to compile
    is counted for its directions but not jumped to, so those directions fail closed.
    """
    policies = sorted(selecting_policies, key=lambda p: (p.namespace, p.name))
    chain = pod_fw_chain(pod.metadata.namespace, pod.metadata.name)
    families: dict[Family, PodFamily] = {}
    for family in enabled_families(cfg):
        ip = pod_ip(pod, family)
        if ip is None:
            continue
        rules = pod_chain_rules(pod, ip, family, policies)
        families[family] = PodFamily(ip, tuple(rules), pod_jumps(pod, ip, chain))
    return PodPiece(pod.metadata.namespace, pod.metadata.name, chain, families)
