"""The service proxy's firewall as data: desired specs, the rules and sets they mean (pure).

One :class:`FirewallSpec` per family says what the proxy wants; :func:`layout` turns it into
:class:`Layout`, our objects exactly as ``iptables-save`` and ``ipset save`` print them. A Layout
is also read back from the kernel (``firewall_kernel``), so one planner (``firewall_plan``) serves
a full apply (desired against the kernel) and a partial one (desired against what the last apply
wrote).

What is ours (reference §4.1, §5.4): the sets ``kube-router-local-ips``, ``kube-router-svip``,
``kube-router-svip-prt`` (``inet6:`` for IPv6); the filter chain ``KUBE-ROUTER-SERVICES`` and
its INPUT jump; in nat POSTROUTING the IPVS masquerade rules (recognised by their shape) and the
jump to ``KUBE-ROUTER-HAIRPIN``, and that chain.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from kube_router.controllers.proxy.compile import ServicePlan
from kube_router.dataplane import ipset
from kube_router.dataplane import iptables_parse as ipt
from kube_router.dataplane.ipset_entry import HASH_IP, HASH_IP_PORT
from kube_router.dataplane.iptables_rule import parse_rule
from kube_router.dataplane.ipvs import PROTOCOL_NAMES, Family

LOCAL_IPS_SET: Final = "kube-router-local-ips"
SERVICE_IPS_SET: Final = "kube-router-svip"
SERVICE_PORTS_SET: Final = "kube-router-svip-prt"
BASE_SETS: Final = {
    LOCAL_IPS_SET: HASH_IP,
    SERVICE_IPS_SET: HASH_IP,
    SERVICE_PORTS_SET: HASH_IP_PORT,
}
SERVICES_CHAIN: Final = "KUBE-ROUTER-SERVICES"
HAIRPIN_CHAIN: Final = "KUBE-ROUTER-HAIRPIN"
INPUT: Final = "INPUT"
POSTROUTING: Final = "POSTROUTING"
OWN_JUMP_PREFIX: Final = "KUBE-ROUTER-"  # kube-router's jumps (ours and the policy controller's)
INPUT_COMMENT: Final = "handle traffic to IPVS service IPs in custom chain"
ACCEPT_COMMENT: Final = "allow input traffic to ipvs services"
REJECT_COMMENT: Final = "reject all unexpected traffic to service IPs"
MASQ_MATCH: Final = '-m ipvs --ipvs --vdir ORIGINAL --vmethod MASQ -m comment --comment ""'
HAIRPIN_JUMP: Final = f"-m ipvs --vdir ORIGINAL -j {HAIRPIN_CHAIN}"
SPELLING_CACHE_SIZE: Final = 1 << 14
FAMILIES: Final[tuple[Family, Family]] = ("ipv4", "ipv6")

_ICMP: Final = {
    "ipv4": ("icmp", "--icmp-type", "icmp-port-unreachable"),
    "ipv6": ("ipv6-icmp", "--icmpv6-type", "icmp6-port-unreachable"),
}
_ICMP_TYPES: Final = (
    ("echo-request", "allow icmp echo requests"),
    ("destination-unreachable", "allow icmp destination unreachable messages"),
    ("time-exceeded", "allow icmp time exceeded messages"),
)
_ICMP6_TYPES: Final = (
    ("neighbor-solicitation", "allow icmp neighbor solicitation messages"),
    ("neighbor-advertisement", "allow icmp neighbor advertisement messages"),
    ("echo-reply", "allow icmp echo reply messages"),
)


@dataclass(frozen=True, order=True)
class HairpinRule:
    """SNAT to the VIP what a local endpoint sends to itself through ``vip:port``."""

    endpoint: str
    vip: str
    port: int

    def rule(self) -> str:
        bits = ipaddress.ip_address(self.endpoint).max_prefixlen
        ep = f"{self.endpoint}/{bits}"
        return (
            f"-s {ep} -d {ep} -m ipvs --vaddr {self.vip} --vport {self.port} "
            f"-j SNAT --to-source {self.vip}"
        )


@dataclass(frozen=True)
class FirewallSpec:
    """One family's desired proxy firewall."""

    family: Family
    local_ips: frozenset[str] = frozenset()
    service_ips: frozenset[str] = frozenset()
    service_ports: frozenset[tuple[str, str, int]] = frozenset()  # (ip, tcp|udp|sctp, port)
    pod_cidrs: tuple[str, ...] = ()
    node_ip: str | None = None
    masquerade_all: bool = False
    permit_all: bool = True
    hairpin: frozenset[HairpinRule] = frozenset()


def set_name(base: str, family: Family) -> str:
    return ipset.family_name(base, _ipset_family(family))


def _ipset_family(family: Family) -> str:
    return ipset.INET6 if family == "ipv6" else ipset.INET


def set_spec(base: str, family: Family) -> ipset.SetSpec:
    return ipset.SetSpec(set_name(base, family), BASE_SETS[base], _ipset_family(family))


def _family_of(address: str) -> Family:
    return "ipv6" if ipaddress.ip_network(address, strict=False).version == 6 else "ipv4"


# --- from service plans to specs ---------------------------------------------------------------


def hairpin_rules(plan: ServicePlan, global_hairpin: bool) -> set[HairpinRule]:
    """Hairpin SNAT rules of one Service: each local endpoint through each virtual service it
    backs (cluster IPs, NodePorts; externalIPs only with ``service.hairpin.externalips``)."""
    if not (global_hairpin or plan.options.hairpin) or not plan.local_endpoints:
        return set()
    kinds = {"cluster", "nodeport"} | ({"external"} if plan.options.hairpin_external else set())
    rules: set[HairpinRule] = set()
    for key, vs in plan.virtual.items():
        if vs.kind not in kinds or key.fwmark or not key.address:
            continue
        for address, _port in vs.dests:
            if address in plan.local_endpoints:
                rules.add(HairpinRule(address, key.address, key.port))
    return rules


@dataclass(frozen=True)
class Settings:
    """The flags and node facts the firewall follows besides the Services."""

    pod_cidrs: tuple[str, ...] = ()  # the node's pod CIDRs, any family
    masquerade_all: bool = False  # --masquerade-all
    permit_all: bool = True  # --ipvs-permit-all
    hairpin: bool = False  # --hairpin-mode
    families: tuple[Family, ...] | None = None  # None: the families with a node IP


def build_specs(
    plans: Mapping[str, ServicePlan] | Iterable[ServicePlan],
    local_ips: Mapping[Family, Iterable[str]] | Iterable[str],
    node_ips: Mapping[Family, str],
    settings: Settings | None = None,
) -> dict[Family, FirewallSpec]:
    """Each family's spec from every Service's plan and the node's addresses.

    ``local_ips`` (all local addresses, mixed families or per family) and the pod CIDRs are
    split by family; ``node_ips`` is the node's primary address per family (the masquerade
    rules' SNAT source; a family without one gets none)."""
    cfg = settings or Settings()
    items = list(plans.values() if isinstance(plans, Mapping) else plans)
    svips, ports, hairpin = _collect(items, cfg.hairpin)
    flat = (
        [ip for ips in local_ips.values() for ip in ips]
        if isinstance(local_ips, Mapping)
        else list(local_ips)
    )
    locals_by, cidrs_by = _split(flat), _split(cfg.pod_cidrs)
    families = (
        cfg.families if cfg.families is not None else tuple(f for f in FAMILIES if f in node_ips)
    )
    return {
        f: FirewallSpec(
            family=f,
            local_ips=frozenset(locals_by.get(f, ())),
            service_ips=frozenset(svips[f]),
            service_ports=frozenset(ports[f]),
            pod_cidrs=tuple(dict.fromkeys(cidrs_by.get(f, ()))),
            node_ip=node_ips.get(f),
            masquerade_all=cfg.masquerade_all,
            permit_all=cfg.permit_all,
            hairpin=frozenset(hairpin[f]),
        )
        for f in families
    }


def _collect(
    plans: Iterable[ServicePlan], global_hairpin: bool
) -> tuple[
    dict[Family, set[str]], dict[Family, set[tuple[str, str, int]]], dict[Family, set[HairpinRule]]
]:
    """Every VIP, every VIP with protocol and port, every hairpin rule, per family."""
    svips: dict[Family, set[str]] = {f: set() for f in FAMILIES}
    ports: dict[Family, set[tuple[str, str, int]]] = {f: set() for f in FAMILIES}
    hairpin: dict[Family, set[HairpinRule]] = {f: set() for f in FAMILIES}
    for plan in plans:
        for key in plan.virtual:
            if key.fwmark or not key.address:
                continue  # fwmark (DSR) services: not in the sets (DSR is not built yet)
            svips[key.family].add(key.address)
            proto = PROTOCOL_NAMES.get(key.protocol, str(key.protocol))
            ports[key.family].add((key.address, proto, key.port))
        for rule in hairpin_rules(plan, global_hairpin):
            hairpin[_family_of(rule.vip)].add(rule)
    return svips, ports, hairpin


def _split(addresses: Iterable[str]) -> dict[Family, list[str]]:
    out: dict[Family, list[str]] = {}
    for text in addresses:
        out.setdefault(_family_of(text), []).append(text)
    return out


# --- rule text ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=SPELLING_CACHE_SIZE)
def spelling(rule: str, family: Family, table: str) -> str:
    """``rule`` as iptables-save prints it (the strict fake's canonical form)."""
    return parse_rule(ipt.tokenize(rule), family, table, chain_exists=_any_chain).text


def _any_chain(_name: str) -> bool:
    return True


@functools.lru_cache(maxsize=len(FAMILIES))
def services_rules(family: Family) -> tuple[str, ...]:
    """The rules of KUBE-ROUTER-SERVICES, in upstream's order."""
    proto, flag, reject = _ICMP[family]
    kinds = _ICMP_TYPES + (_ICMP6_TYPES if family == "ipv6" else ())
    rules = [f'-m comment --comment "{c}" -p {proto} {flag} {t} -j ACCEPT' for t, c in kinds]
    rules.append(
        f'-m comment --comment "{ACCEPT_COMMENT}" '
        f"-m set --match-set {set_name(SERVICE_PORTS_SET, family)} dst,dst -j ACCEPT"
    )
    rules.append(
        f'-m comment --comment "{REJECT_COMMENT}" '
        f"-m set ! --match-set {set_name(LOCAL_IPS_SET, family)} dst "
        f"-j REJECT --reject-with {reject}"
    )
    return tuple(spelling(r, family, "filter") for r in rules)


@functools.lru_cache(maxsize=len(FAMILIES))
def input_jump(family: Family) -> str:
    rule = (
        f'-m comment --comment "{INPUT_COMMENT}" '
        f"-m set --match-set {set_name(SERVICE_IPS_SET, family)} dst -j {SERVICES_CHAIN}"
    )
    return spelling(rule, family, "filter")


def masquerade_rule(node_ip: str, cidr: str | None, family: Family) -> str:
    where = f"! -s {cidr} ! -d {cidr} " if cidr else ""
    rule = f"{MASQ_MATCH} {where}-j SNAT --to-source {node_ip} --random-fully"
    return spelling(rule, family, "nat")


def postrouting_rules(spec: FirewallSpec) -> tuple[str, ...]:
    """Our POSTROUTING rules in the order we append them."""
    rules: list[str] = []
    if spec.node_ip:
        if spec.masquerade_all:
            rules.append(masquerade_rule(spec.node_ip, None, spec.family))
        rules += [masquerade_rule(spec.node_ip, c, spec.family) for c in spec.pod_cidrs]
    if spec.hairpin:
        rules.append(spelling(HAIRPIN_JUMP, spec.family, "nat"))
    return tuple(rules)


# --- layouts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Our objects in one family as the kernel's tools print them.

    ``input_ok``: the INPUT jump is there once and no foreign rule precedes it;
    ``input_jumps``: every INPUT rule jumping to our chain (what to delete to move it).
    ``postrouting``: our POSTROUTING rules in kernel order; chains are None when absent.
    """

    family: Family
    sets: Mapping[str, ipset.SetState] = field(default_factory=dict)
    services: tuple[str, ...] | None = None
    input_ok: bool = False
    input_jumps: tuple[str, ...] = ()
    postrouting: tuple[str, ...] = ()
    hairpin: tuple[str, ...] | None = None


def _entries(spec: ipset.SetSpec, entries: Iterable[str]) -> frozenset[str]:
    return frozenset(ipset.normalize_entry(spec.type, spec.family, e) for e in entries)


def layout(spec: FirewallSpec) -> Layout:
    """What ``spec`` looks like once applied."""
    f = spec.family
    members = {
        LOCAL_IPS_SET: spec.local_ips,
        SERVICE_IPS_SET: spec.service_ips,
        SERVICE_PORTS_SET: (f"{ip},{proto}:{port}" for ip, proto, port in spec.service_ports),
    }
    sets = {}
    for base, entries in members.items():
        want = set_spec(base, f)
        sets[want.name] = ipset.SetState(want, _entries(want, entries))
    hairpin = tuple(sorted(spelling(r.rule(), f, "nat") for r in spec.hairpin))
    return Layout(
        family=f,
        sets=sets,
        services=services_rules(f) if spec.permit_all else None,
        input_ok=spec.permit_all,
        input_jumps=(input_jump(f),) if spec.permit_all else (),
        postrouting=postrouting_rules(spec),
        hairpin=hairpin or None,
    )
