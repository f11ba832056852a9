"""The routing controller's BGP settings, computed once at start from flags and the local Node.

Pure: no I/O. The controller calls :func:`build_settings` once it has the Config, the node's
identity and its Node object, logs each of ``settings.problems`` once (they name the node), and
starts gobgpd with ``settings.global_spec()``. What upstream refuses to start BGP for and that
cannot be worked around (no ``node.asn`` with ``--nodes-full-mesh=false``, a bad route-reflector
cluster ID, a bad ``bgp-local-addresses`` entry, an IPv6 primary IP without ``--router-id``)
raises :class:`SettingsError`; the rest (a bad community, prefix or prepend annotation) becomes
a :class:`Problem` and is left out.

Public API:

- :func:`build_settings` ``(config, identity, node) -> RoutingSettings``
- :class:`RoutingSettings` and its ``global_spec() -> model.GlobalSpec``
- :func:`router_id` ``(configured, primary_ip) -> str`` (``--router-id``, ``generate``)
- :func:`bfd_warning` ``(settings, peers_ask_bfd=False) -> str | None``: the one warning to log
  when BFD is asked for (gobgpd 3.10 has no BFD)
- :func:`local_pod_cidrs` ``(node) -> (cidrs, errors)``: the local node's pod CIDRs
- :func:`custom_import_reject` ``(text) -> (cidrs, errors)``, :func:`cluster_id` ``(text)``
- :class:`Problem`, :class:`SettingsError`, :class:`PathPrepend`
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from kube_router import node as node_info
from kube_router.bgp.model import IPV4, IPV6, GlobalSpec, GracefulRestart
from kube_router.controllers.routing.compile.communities import (
    COMMUNITIES_ANNOTATION,
    parse_communities,
)
from kube_router.controllers.shared.pod_cidrs import node_pod_cidrs
from kube_router.goparse import parse_cidr, parse_ip, parse_uint
from kube_router.k8s.models import Node

if TYPE_CHECKING:
    from kube_router.config import Config

NODE_ASN_ANNOTATION: Final = "kube-router.io/node.asn"
RR_SERVER_ANNOTATION: Final = "kube-router.io/rr.server"
RR_CLIENT_ANNOTATION: Final = "kube-router.io/rr.client"
PREPEND_AS_ANNOTATION: Final = "kube-router.io/path-prepend.as"
PREPEND_REPEAT_ANNOTATION: Final = "kube-router.io/path-prepend.repeat-n"
CUSTOM_IMPORT_REJECT_ANNOTATION: Final = "kube-router.io/node.bgp.customimportreject"
LOCAL_ADDRESSES_ANNOTATION: Final = "kube-router.io/bgp-local-addresses"

DEFAULT_CLUSTER_ASN: Final = 64512
ROUTER_ID_GENERATE: Final = "generate"
ASN_BITS: Final = 32
PREPEND_REPEAT_BITS: Final = 8
FNV32_OFFSET: Final = 0x811C9DC5
FNV32_PRIME: Final = 0x01000193
UINT32_MASK: Final = 0xFFFFFFFF
BFD_WARNING: Final = (
    "BFD was asked for ({what}) but gobgpd 3.10, the BGP engine here, has no BFD: peers use "
    "BGP hold timers only (see docs/bgp.md)"
)


class SettingsError(Exception):
    """The local node's BGP settings cannot be worked out; BGP cannot start."""


@dataclass(frozen=True)
class Problem:
    """Bad input found while computing BGP state: logged once by the controller, then skipped."""

    node: str
    message: str

    def __str__(self) -> str:
        return f"node {self.node}: {self.message}"


@dataclass(frozen=True)
class PathPrepend:
    asn: int
    repeat: int


@dataclass(frozen=True)
class RoutingSettings:
    """Everything the pure routing modules need to know about this node and the flags."""

    node_name: str
    primary_ip: str
    #: Families enabled by flag that this node has an address of, with the best address of each
    #: (next hop of the paths we originate).
    next_hops: Mapping[str, str]
    node_ips: frozenset[str]  # every InternalIP and ExternalIP (local endpoint detection)
    asn: int
    router_id: str
    full_mesh: bool = True
    enable_ibgp: bool = True
    listen_port: int = 179
    listen_addresses: tuple[str, ...] = ()
    bgp_port: int = 179
    hold_time: int = 90
    multihop_ttl: int = 0
    graceful_restart: GracefulRestart = field(default_factory=GracefulRestart)
    override_nexthop: bool = False
    advertise_pod_cidr: bool = True
    advertise_cluster_ip: bool = False
    advertise_external_ip: bool = False
    advertise_loadbalancer_ip: bool = False
    rr_server: bool = False
    rr_client: bool = False
    rr_cluster_id: str = ""
    path_prepend: PathPrepend | None = None
    communities: tuple[str, ...] = ()
    custom_import_reject: tuple[str, ...] = ()  # CIDRs, both families
    pod_cidrs: tuple[str, ...] = ()
    enable_bfd: bool = False
    problems: tuple[Problem, ...] = field(default=(), compare=False)

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(f for f in (IPV4, IPV6) if f in self.next_hops)

    def global_spec(self) -> GlobalSpec:
        return GlobalSpec(
            asn=self.asn,
            router_id=self.router_id,
            listen_port=self.listen_port,
            listen_addresses=self.listen_addresses,
            graceful_restart=self.graceful_restart,
        )


def _family(address: str) -> str:
    return IPV6 if ":" in address else IPV4


def _fnv32a(data: bytes) -> int:
    value = FNV32_OFFSET
    for byte in data:
        value = ((value ^ byte) * FNV32_PRIME) & UINT32_MASK
    return value


def router_id(configured: str, primary_ip: str) -> str:
    """``--router-id`` as given; ``generate``: FNV-32a of the primary IP; else the primary IPv4.

    ``generate`` hashes the 16-byte form of the address, as upstream hashes Go's ``net.IP``
    (an IPv4 address is ``::ffff:a.b.c.d`` there), so a node gets the same ID as upstream's.
    """
    address = ipaddress.ip_address(primary_ip)
    if configured == ROUTER_ID_GENERATE:
        packed = address.packed
        if address.version == 4:
            packed = ipaddress.IPv6Address(f"::ffff:{address}").packed
        return str(ipaddress.IPv4Address(_fnv32a(packed)))
    if configured:
        return configured
    if address.version != 4:
        raise SettingsError(
            f"the primary node IP {primary_ip} is IPv6: give --router-id (an IPv4 address or "
            '"generate")'
        )
    return primary_ip


def bfd_warning(settings: RoutingSettings, peers_ask_bfd: bool = False) -> str | None:
    """The warning to log once when BFD is asked for; None when it is not."""
    asked = [
        what
        for what, on in (
            ("--enable-bfd", settings.enable_bfd),
            ("kube-router.io/peers", peers_ask_bfd),
        )
        if on
    ]
    return BFD_WARNING.format(what=" and ".join(asked)) if asked else None


def _node_asn(node: Node, name: str) -> int:
    text = node.metadata.annotations.get(NODE_ASN_ANNOTATION)
    if text is None:
        raise SettingsError(
            f"node {name} has no {NODE_ASN_ANNOTATION} annotation, which --nodes-full-mesh=false "
            "requires on every node"
        )
    try:
        asn = parse_uint(text.strip(), 0, ASN_BITS)
    except ValueError as err:
        raise SettingsError(f"node {name}: bad {NODE_ASN_ANNOTATION} {text!r}: {err}") from err
    if asn == 0:
        raise SettingsError(f"node {name}: {NODE_ASN_ANNOTATION} must not be 0")
    return asn


def cluster_id(text: str) -> str:
    """A route-reflector cluster ID (an IPv4 address or a uint32) as gobgpd stores it: dotted.

    gobgpd turns a number into an address (``42`` is ``0.0.0.42``) and reports that form; giving
    it that form keeps a level-triggered peer sync from seeing a difference every time.
    """
    address = parse_ip(text)
    if address is not None:
        if address.version != 4:
            raise ValueError(f"{text!r} is an IPv6 address; use an IPv4 address or a number")
        return str(address)
    return str(ipaddress.IPv4Address(parse_uint(text, 0, ASN_BITS)))


def _route_reflector(node: Node, name: str) -> tuple[bool, bool, str]:
    ann = node.metadata.annotations
    for annotation, server in ((RR_SERVER_ANNOTATION, True), (RR_CLIENT_ANNOTATION, False)):
        if annotation in ann:
            try:
                return server, not server, cluster_id(ann[annotation].strip())
            except ValueError as err:
                raise SettingsError(
                    f"node {name}: bad {annotation} cluster ID {ann[annotation]!r}: {err}"
                ) from err
    return False, False, ""


def _path_prepend(ann: Mapping[str, str], errors: list[str]) -> PathPrepend | None:
    asn_text, repeat_text = ann.get(PREPEND_AS_ANNOTATION), ann.get(PREPEND_REPEAT_ANNOTATION)
    if asn_text is None and repeat_text is None:
        return None
    if asn_text is None or repeat_text is None:
        errors.append(
            f"set both {PREPEND_AS_ANNOTATION} and {PREPEND_REPEAT_ANNOTATION}; no prepend"
        )
        return None
    try:
        asn = parse_uint(asn_text.strip(), 0, ASN_BITS)
        repeat = parse_uint(repeat_text.strip(), 0, PREPEND_REPEAT_BITS)
    except ValueError as err:
        errors.append(f"bad path prepend ({asn_text!r} x {repeat_text!r}): {err}; no prepend")
        return None
    return PathPrepend(asn, repeat)


def custom_import_reject(text: str) -> tuple[tuple[str, ...], list[str]]:
    """The annotation's CIDRs (as networks) and a message per bad entry."""
    good: dict[str, None] = {}
    errors: list[str] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            good[str(parse_cidr(entry))] = None
        except ValueError as err:
            errors.append(f"{CUSTOM_IMPORT_REJECT_ANNOTATION}: {err}; skipped")
    return tuple(good), errors


def local_pod_cidrs(node: Node) -> tuple[tuple[str, ...], list[str]]:
    """The pod CIDRs this node advertises (``shared.pod_cidrs``' one order); a bad entry is a
    message and is skipped (upstream fails)."""
    return node_pod_cidrs(node)


def _listen_addresses(
    node: Node, name: str, next_hops: Mapping[str, str], errors: list[str]
) -> tuple[str, ...]:
    text = node.metadata.annotations.get(LOCAL_ADDRESSES_ANNOTATION)
    if text is None:
        return tuple(next_hops[f] for f in (IPV4, IPV6) if f in next_hops)
    out: list[str] = []
    for raw in text.split(","):
        address = parse_ip(raw.strip())
        if address is None:
            raise SettingsError(
                f"node {name}: {raw!r} in {LOCAL_ADDRESSES_ANNOTATION} is not an IP"
            )
        family = IPV4 if address.version == 4 else IPV6
        if family not in next_hops:
            errors.append(
                f"{LOCAL_ADDRESSES_ANNOTATION}: {address} is {family}, which is not enabled on "
                "this node; not listening on it"
            )
            continue
        out.append(str(address))
    for family in next_hops:
        if not any(_family(a) == family for a in out):
            errors.append(f"{LOCAL_ADDRESSES_ANNOTATION} has no {family} address: BGP may not work")
    return tuple(dict.fromkeys(out))


def _graceful_restart(config: Config) -> GracefulRestart:
    if not config.bgp_graceful_restart:
        return GracefulRestart()
    return GracefulRestart(
        enabled=True,
        restart_time=int(config.bgp_graceful_restart_time),
        deferral_time=int(config.bgp_graceful_restart_deferral_time),
        local_restarting=True,
    )


@dataclass(frozen=True)
class _Extras:
    path_prepend: PathPrepend | None
    communities: tuple[str, ...]
    custom_import_reject: tuple[str, ...]
    pod_cidrs: tuple[str, ...]


def _extras(node: Node, errors: list[str]) -> _Extras:
    ann = node.metadata.annotations
    communities, bad = parse_communities(ann.get(COMMUNITIES_ANNOTATION, ""))
    errors += bad
    reject, bad = custom_import_reject(ann.get(CUSTOM_IMPORT_REJECT_ANNOTATION, ""))
    errors += bad
    pods, bad = local_pod_cidrs(node)
    errors += bad
    return _Extras(_path_prepend(ann, errors), communities, reject, pods)


def build_settings(config: Config, identity: node_info.NodeIdentity, node: Node) -> RoutingSettings:
    """Compute the settings once; :class:`SettingsError` when BGP cannot start on this node."""
    name = identity.name
    next_hops = {
        family: str(ip) for family, ip in ((IPV4, identity.ipv4), (IPV6, identity.ipv6)) if ip
    }
    primary = str(identity.primary_ip)
    asn = config.cluster_asn or DEFAULT_CLUSTER_ASN
    if not config.nodes_full_mesh:
        asn = _node_asn(node, name)
    rr_server, rr_client, rr_id = _route_reflector(node, name)
    errors: list[str] = []
    listen = _listen_addresses(node, name, next_hops, errors)
    extra = _extras(node, errors)
    return RoutingSettings(
        node_name=name,
        primary_ip=primary,
        next_hops=next_hops,
        node_ips=frozenset(str(ip) for ip in node_info.all_ips(node)),
        asn=asn,
        router_id=router_id(config.router_id, primary),
        full_mesh=config.nodes_full_mesh,
        enable_ibgp=config.enable_ibgp,
        listen_port=config.bgp_port,
        listen_addresses=listen,
        bgp_port=config.bgp_port,
        hold_time=int(config.bgp_holdtime),
        multihop_ttl=config.peer_router_multihop_ttl if config.peer_router_multihop_ttl > 1 else 0,
        graceful_restart=_graceful_restart(config),
        override_nexthop=config.override_nexthop,
        advertise_pod_cidr=config.advertise_pod_cidr,
        advertise_cluster_ip=config.advertise_cluster_ip,
        advertise_external_ip=config.advertise_external_ip,
        advertise_loadbalancer_ip=config.advertise_loadbalancer_ip,
        rr_server=rr_server,
        rr_client=rr_client,
        rr_cluster_id=rr_id,
        path_prepend=extra.path_prepend,
        communities=extra.communities,
        custom_import_reject=extra.custom_import_reject,
        pod_cidrs=extra.pod_cidrs,
        enable_bfd=config.enable_bfd,
        problems=tuple(Problem(name, e) for e in errors),
    )
