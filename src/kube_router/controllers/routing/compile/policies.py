"""gobgpd's import and export policies and their defined sets, with upstream's names (pure).

Defined sets (prefix sets, then neighbor sets; each family its own set, as gobgpd refuses mixed
families; all of them present even when empty, as upstream creates them):

- ``podcidrdefinedset(v6)``: the node's pod CIDRs, exact length;
- ``servicevipsdefinedset(v6)``: the advertised service VIPs, /32 and /128;
- ``defaultroutedefinedset(v6)``: ``0.0.0.0/0`` and ``::/0``, exact length;
- ``customimportrejectdefinedset(v6)``: ``kube-router.io/node.bgp.customimportreject``, from the
  prefix length up to 32 or 128 (the prefix and everything inside it);
- ``iBGPpeerset(v6)``: every node's primary IP (with ``--enable-ibgp``);
- ``externalpeerset(v6)``: the external peers; ``allpeerset(v6)``: both.

Export (default REJECT): pod CIDRs to iBGP peers; service VIPs to external peers, and pod CIDRs
too with ``--advertise-pod-cidr``, with AS-path prepend, next-hop-self (``--override-nexthop``)
and the node's communities. Import (default ACCEPT): from any peer, reject service VIPs, the
default route and the custom import reject prefixes. Statements are named
``<prefixSet><neighborSet>``. A route-reflector server gets no policies and no sets at all.

A statement never refers to an empty set: gobgpd matches everything against an empty set.
Upstream matches both pod sets against ``iBGPpeerset`` only, which is empty in an IPv6-only
cluster (its node IPs are in ``iBGPpeersetv6``), so there upstream's pod statement matches every
neighbour and sends pod CIDRs to external peers whatever ``--advertise-pod-cidr`` says. Here each
pod set is matched against whichever iBGP set holds peers: the same statements as upstream's in
an IPv4 or dual-stack cluster, and ``podcidrdefinedsetv6iBGPpeersetv6`` in an IPv6-only one.

Public API:

- :func:`policy_state` ``(settings, *, ibgp_peer_ips, external_peer_ips, vips) -> PolicyState``
- :func:`defined_sets` (same arguments) ``-> tuple[DefinedSetSpec, ...]``
- the set name constants (``POD_CIDR_SET`` ...)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Final

from kube_router.bgp.model import (
    IPV4,
    IPV6,
    Action,
    DefinedSetSpec,
    DefinedType,
    PolicySpec,
    PolicyState,
    PrefixMatch,
    StatementSpec,
)
from kube_router.controllers.routing.compile.settings import RoutingSettings

POD_CIDR_SET: Final = "podcidrdefinedset"
POD_CIDR_SET_V6: Final = "podcidrdefinedsetv6"
SERVICE_VIPS_SET: Final = "servicevipsdefinedset"
SERVICE_VIPS_SET_V6: Final = "servicevipsdefinedsetv6"
DEFAULT_ROUTE_SET: Final = "defaultroutedefinedset"
DEFAULT_ROUTE_SET_V6: Final = "defaultroutedefinedsetv6"
CUSTOM_IMPORT_REJECT_SET: Final = "customimportrejectdefinedset"
CUSTOM_IMPORT_REJECT_SET_V6: Final = "customimportrejectdefinedsetv6"
IBGP_PEER_SET: Final = "iBGPpeerset"
IBGP_PEER_SET_V6: Final = "iBGPpeersetv6"
EXTERNAL_PEER_SET: Final = "externalpeerset"
EXTERNAL_PEER_SET_V6: Final = "externalpeersetv6"
ALL_PEER_SET: Final = "allpeerset"
ALL_PEER_SET_V6: Final = "allpeersetv6"

MAX_LEN: Final = {IPV4: 32, IPV6: 128}
DEFAULT_ROUTE: Final = {IPV4: "0.0.0.0/0", IPV6: "::/0"}
_FAMILIES: Final = (IPV4, IPV6)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _family_of(network: Network) -> str:
    return IPV4 if network.version == 4 else IPV6


def _by_family(texts: Iterable[str]) -> dict[str, list[Network]]:
    out: dict[str, list[Network]] = {IPV4: [], IPV6: []}
    for text in texts:
        network = ipaddress.ip_network(text, strict=False)
        if network not in out[_family_of(network)]:
            out[_family_of(network)].append(network)
    return out


def _prefix_set(name: str, networks: Iterable[Network], longer: bool = False) -> DefinedSetSpec:
    """A prefix set: exact prefix lengths, or with ``longer`` the prefix and all inside it."""
    matches = tuple(
        PrefixMatch(str(n), n.prefixlen, MAX_LEN[_family_of(n)] if longer else n.prefixlen)
        for n in sorted(networks, key=lambda n: (n.network_address, n.prefixlen))
    )
    return DefinedSetSpec(name, DefinedType.PREFIX, prefixes=matches)


def _host_prefixes(addresses: Iterable[str]) -> dict[str, list[Network]]:
    out: dict[str, list[Network]] = {IPV4: [], IPV6: []}
    for text in dict.fromkeys(addresses):
        address = ipaddress.ip_address(text)
        family = IPV4 if address.version == 4 else IPV6
        out[family].append(ipaddress.ip_network(f"{address}/{MAX_LEN[family]}"))
    return out


def _neighbor_set(name: str, hosts: Iterable[Network]) -> DefinedSetSpec:
    members = tuple(str(n) for n in sorted(hosts, key=lambda n: n.network_address))
    return DefinedSetSpec(name, DefinedType.NEIGHBOR, members=members)


def _named(v4: str, v6: str) -> Mapping[str, str]:
    return {IPV4: v4, IPV6: v6}


POD_SETS: Final = _named(POD_CIDR_SET, POD_CIDR_SET_V6)
VIP_SETS: Final = _named(SERVICE_VIPS_SET, SERVICE_VIPS_SET_V6)
DEFAULT_SETS: Final = _named(DEFAULT_ROUTE_SET, DEFAULT_ROUTE_SET_V6)
REJECT_SETS: Final = _named(CUSTOM_IMPORT_REJECT_SET, CUSTOM_IMPORT_REJECT_SET_V6)
IBGP_SETS: Final = _named(IBGP_PEER_SET, IBGP_PEER_SET_V6)
EXTERNAL_SETS: Final = _named(EXTERNAL_PEER_SET, EXTERNAL_PEER_SET_V6)
ALL_SETS: Final = _named(ALL_PEER_SET, ALL_PEER_SET_V6)


def defined_sets(
    settings: RoutingSettings,
    *,
    ibgp_peer_ips: Iterable[str],
    external_peer_ips: Iterable[str],
    vips: Iterable[str],
) -> tuple[DefinedSetSpec, ...]:
    """Every defined set upstream keeps in gobgpd, both families, empty ones included."""
    pods, rejects = _by_family(settings.pod_cidrs), _by_family(settings.custom_import_reject)
    vip_hosts = _host_prefixes(vips)
    ibgp = _host_prefixes(ibgp_peer_ips if settings.enable_ibgp else ())
    external = _host_prefixes(external_peer_ips)
    out: list[DefinedSetSpec] = []
    for f in _FAMILIES:
        default = [ipaddress.ip_network(DEFAULT_ROUTE[f])]
        out += [
            _prefix_set(POD_SETS[f], pods[f]),
            _prefix_set(VIP_SETS[f], vip_hosts[f]),
            _prefix_set(DEFAULT_SETS[f], default),
            _prefix_set(REJECT_SETS[f], rejects[f], longer=True),
        ]
    for f in _FAMILIES:
        both = list(dict.fromkeys(external[f] + ibgp[f]))
        out += [
            _neighbor_set(IBGP_SETS[f], ibgp[f]),
            _neighbor_set(EXTERNAL_SETS[f], external[f]),
            _neighbor_set(ALL_SETS[f], both),
        ]
    return tuple(out)


def _statement(prefix_set: str, neighbor_set: str, template: StatementSpec) -> StatementSpec:
    return StatementSpec(
        name=prefix_set + neighbor_set,
        prefix_set=prefix_set,
        neighbor_set=neighbor_set,
        action=template.action,
        add_communities=template.add_communities,
        prepend_asn=template.prepend_asn,
        prepend_repeat=template.prepend_repeat,
        next_hop_self=template.next_hop_self,
    )


def _external_actions(settings: RoutingSettings) -> StatementSpec:
    prepend = settings.path_prepend
    return StatementSpec(
        name="",
        action=Action.ACCEPT,
        add_communities=settings.communities,
        prepend_asn=prepend.asn if prepend else 0,
        prepend_repeat=prepend.repeat if prepend else 0,
        next_hop_self=settings.override_nexthop,
    )


def _export(settings: RoutingSettings, filled: set[str]) -> PolicySpec:
    statements: list[StatementSpec] = []
    accept = StatementSpec(name="", action=Action.ACCEPT)
    pod_sets = [POD_SETS[f] for f in _FAMILIES if POD_SETS[f] in filled]
    if settings.enable_ibgp:
        ibgp_sets = [IBGP_SETS[f] for f in _FAMILIES if IBGP_SETS[f] in filled]
        statements += [_statement(p, i, accept) for p in pod_sets for i in ibgp_sets]
    actions = _external_actions(settings)
    for peer_set in (EXTERNAL_SETS[f] for f in _FAMILIES):
        if peer_set not in filled:
            continue
        vip_sets = [VIP_SETS[f] for f in _FAMILIES if VIP_SETS[f] in filled]
        statements += [_statement(v, peer_set, actions) for v in vip_sets]
        if settings.advertise_pod_cidr:
            statements += [_statement(p, peer_set, actions) for p in pod_sets]
    return PolicySpec(tuple(statements))


def _import(filled: set[str]) -> PolicySpec:
    statements: list[StatementSpec] = []
    reject = StatementSpec(name="", action=Action.REJECT)
    for peer_set in (ALL_SETS[f] for f in _FAMILIES):
        if peer_set not in filled:
            continue
        for sets in (VIP_SETS, DEFAULT_SETS, REJECT_SETS):
            statements += [
                _statement(sets[f], peer_set, reject) for f in _FAMILIES if sets[f] in filled
            ]
    return PolicySpec(tuple(statements))


def policy_state(
    settings: RoutingSettings,
    *,
    ibgp_peer_ips: Iterable[str],
    external_peer_ips: Iterable[str],
    vips: Iterable[str],
) -> PolicyState:
    """Defined sets and the export and import policies (nothing on a route-reflector server).

    ``ibgp_peer_ips``: every node's primary IP (``peers.node_primary_ips``); ``external_peer_ips``:
    the addresses of the external peers configured (``PeerResult.peers``); ``vips``: the
    advertised service VIPs (``VipTable.vips()``).
    """
    if settings.rr_server:
        return PolicyState()
    sets = defined_sets(
        settings, ibgp_peer_ips=ibgp_peer_ips, external_peer_ips=external_peer_ips, vips=vips
    )
    filled = {s.name for s in sets if s.prefixes or s.members}
    return PolicyState(defined_sets=sets, export=_export(settings, filled), import_=_import(filled))
