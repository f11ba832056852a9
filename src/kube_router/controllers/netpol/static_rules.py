"""The chains every node has, whatever the policies: heads, default, common and tail chains.

The positioned rules (the built-in chain jumps and the ``KUBE-ROUTER-INPUT`` head) carry
upstream's rule UUID in their comment: ``<comment> - <UUID>`` where UUID is the first 16
characters of base32(sha256(chain + the rule's arguments joined without separators)), computed
on the rule before the UUID is added.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Final

from kube_router.config import Config
from kube_router.config_checks import node_port_range
from kube_router.controllers.netpol.names import (
    BUILTIN_JUMPS,
    COMMON_CHAIN,
    DEFAULT_CHAIN,
    INPUT_CHAIN,
    IPV4,
    IPV6,
    ROUTER_CHAINS,
    TAIL_CHAIN,
    Family,
    hash16,
    local_pods_set,
)
from kube_router.controllers.netpol.pieces import Chains, enabled_families
from kube_router.controllers.netpol.rulefmt import ALLOWED, NETPOL_OK, comment, join

NODE_PORT_PROTOCOLS: Final = ("tcp", "udp", "sctp")
ROUTER_TAIL: Final = (
    f"{comment('rule to explicitly handle traffic for network policies ACCEPT/REJECT decision')}"
    f" -j {TAIL_CHAIN}",
    f"{comment('rule to explicitly ACCEPT traffic that comply to network policies')}"
    f" -m mark --mark {NETPOL_OK} -j ACCEPT",
)
_ICMP: Final[dict[Family, tuple[str, str]]] = {
    IPV4: ("icmp", "--icmp-type"),
    IPV6: ("ipv6-icmp", "--icmpv6-type"),
}
_ICMP_TYPES: Final = (
    ("echo-request", "allow icmp echo requests"),
    ("destination-unreachable", "allow icmp destination unreachable messages"),
    ("time-exceeded", "allow icmp time exceeded messages"),
)
_ICMPV6_TYPES: Final = (
    ("neighbor-solicitation", "allow icmp neighbor solicitation messages"),
    ("neighbor-advertisement", "allow icmp neighbor advertisement messages"),
    ("echo-reply", "allow icmp echo reply messages"),
)


def with_uuid(chain: str, args: Sequence[str]) -> str:
    """Render ``args`` (with one ``--comment`` value) after adding upstream's rule UUID to it."""
    uuid = hash16(chain + "".join(args))
    out: list[str] = []
    for i, arg in enumerate(args):
        if i > 0 and args[i - 1] == "--comment":
            out.append(f'"{arg} - {uuid}"')
        else:
            out.append(arg)
    return " ".join(out)


def builtin_jump(builtin: str) -> str:
    """The rule at position 1 of a built-in chain, jumping to our chain."""
    return with_uuid(
        builtin, ["-m", "comment", "--comment", "kube-router netpol", "-j", BUILTIN_JUMPS[builtin]]
    )


def _family_ranges(cidrs: Sequence[str], family: Family) -> list[str]:
    version = 4 if family == IPV4 else 6
    nets = (ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip())
    return [str(net) for net in nets if net.version == version]


def _return_to(cidr: str, text: str) -> str:
    return with_uuid(INPUT_CHAIN, ["-m", "comment", "--comment", text, "-d", cidr, "-j", "RETURN"])


def input_head(cfg: Config, family: Family) -> list[str]:
    """RETURN rules at the head of KUBE-ROUTER-INPUT: service ranges and node ports."""
    rules = [
        _return_to(c, "allow traffic to primary/secondary cluster IP range")
        for c in _family_ranges(cfg.service_cluster_ip_range, family)
    ]
    first, last = node_port_range(cfg.service_node_port_range)
    for proto in NODE_PORT_PROTOCOLS:
        args = ["-p", proto, "-m", "comment", "--comment"]
        args += [f"allow LOCAL {proto.upper()} traffic to node ports", "-m", "addrtype"]
        args += ["--dst-type", "LOCAL", "-m", "multiport", "--dports", f"{first}:{last}"]
        rules.append(with_uuid(INPUT_CHAIN, [*args, "-j", "RETURN"]))
    for cidr in _family_ranges(cfg.service_external_ip_range, family):
        rules.append(_return_to(cidr, f"allow traffic to external IP range: {cidr}"))
    for cidr in _family_ranges(cfg.loadbalancer_ip_range, family):
        rules.append(_return_to(cidr, f"allow traffic to load balancer IP range: {cidr}"))
    return rules


def common_rules(family: Family) -> list[str]:
    """KUBE-NWPLCY-COMMON: conntrack state, then the ICMP types routing needs (NDP for IPv6)."""
    rules = [
        f"{comment('rule to drop invalid state for pod')} -m conntrack --ctstate INVALID -j DROP",
        f"{comment('rule for stateful firewall for pod')}"
        " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]
    proto, option = _ICMP[family]
    types = _ICMP_TYPES + (_ICMPV6_TYPES if family == IPV6 else ())
    for kind, text in types:
        rules.append(f"{comment(text)} -p {proto} {option} {kind} -j ACCEPT")
    return rules


def tail_rules(family: Family, pod_cidrs: Sequence[str], default_deny: bool) -> list[str]:
    """KUBE-NWPLCY-TAIL; with default deny, REJECTs around the netpol-ok ACCEPT per pod CIDR."""
    accept = f"{comment('accept netpol-ok')} -m mark --mark {NETPOL_OK} -j ACCEPT"
    if not default_deny:
        return [accept]
    cidrs = _family_ranges(pod_cidrs, family)
    local = local_pods_set(family)
    gated = comment("reject unprogrammed local pod (default-deny)")
    early = comment("reject pre-netpol (default-deny)")
    rules: list[str] = []
    for cidr in cidrs:
        rules.append(join("-s", cidr, gated, f"-m set ! --match-set {local} src -j REJECT"))
        rules.append(join("-d", cidr, gated, f"-m set ! --match-set {local} dst -j REJECT"))
    rules.append(accept)
    for cidr in cidrs:
        rules.extend((f"-s {cidr} {early} -j REJECT", f"-d {cidr} {early} -j REJECT"))
    return rules


def compile_static(cfg: Config, node_pod_cidrs: Sequence[str]) -> dict[Family, Chains]:
    """Per family: our static chains, and the built-in chains' position-1 jump rules.

    ``KUBE-ROUTER-*`` lists hold the head rules followed by the two tail rules
    (:data:`ROUTER_TAIL`); pod jumps go between them (see ``assemble``). The ``INPUT``,
    ``FORWARD`` and ``OUTPUT`` entries are the one rule to keep at position 1 of those chains,
    which are not ours. Raises ConfigError on a bad ``--service-node-port-range``.
    """
    result: dict[Family, Chains] = {}
    for family in enabled_families(cfg):
        chains: Chains = {builtin: [builtin_jump(builtin)] for builtin in BUILTIN_JUMPS}
        for chain in ROUTER_CHAINS:
            head = input_head(cfg, family) if chain == INPUT_CHAIN else []
            chains[chain] = [*head, *ROUTER_TAIL]
        mark = comment("rule to mark traffic matching a network policy")
        chains[DEFAULT_CHAIN] = [f"{mark} -j MARK --set-xmark {ALLOWED}"]
        chains[COMMON_CHAIN] = common_rules(family)
        chains[TAIL_CHAIN] = tail_rules(family, node_pod_cidrs, cfg.netpol_default_deny)
        result[family] = chains
    return result
