"""The BGP neighbours this node wants: external peers (global or per node) and iBGP peers (pure).

External peers come from the ``--peer-router-*`` flags when any are given (all nodes peer with
them), else from the local Node's ``kube-router.io/peers`` YAML, else from the deprecated
``kube-router.io/peer.*`` annotations. iBGP peers are the other Nodes: a full mesh, or with
``--nodes-full-mesh=false`` only the nodes of our ``node.asn``; a route-reflector client peers
only with servers. Bad input (malformed YAML, a bad IP, ASN, port or base64 password, lists of
different lengths) never stops the rest: each returns a :class:`Problem` naming the node, and the
good peers are still returned, so the controller logs each problem once and applies the rest.

Public API (all return :class:`PeerResult`: ``peers``, ``problems``, ``bfd_requested``):

- :func:`external_peers` ``(config, settings, node, passwords)``: global peers if any, else node's
- :func:`global_peers` ``(config, settings, passwords)``: ``passwords`` decoded, as
  ``config_checks.peer_passwords(config)`` returns them (that call reads the passwords file)
- :func:`node_peers` ``(node, settings)``: the ``kube-router.io/peers`` YAML or ``peer.*``
- :func:`internal_peers` ``(nodes, settings)``: iBGP peers among ``nodes`` (all Nodes)
- :func:`node_primary_ips` ``(nodes) -> list[str]``: every node's primary IP (iBGP peer sets)
- :func:`decode_password` ``(text) -> str``: base64 as Go's StdEncoding decodes it
- :func:`parse_peers_yaml` ``(text) -> (configs, errors, bfd_requested)`` and
  :func:`parse_deprecated` ``(annotations) -> (configs, errors)``: the annotation parsers
  (:class:`PeerConfig` values, before they meet this node's settings)
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import yaml

from kube_router import node as node_info
from kube_router.bgp.model import IPV4, IPV6, PeerSpec
from kube_router.config_checks import MAX_BFD_INTERVAL_MS, MAX_BFD_MULTIPLIER, PEER_ASN_RANGES
from kube_router.controllers.routing.compile.settings import (
    NODE_ASN_ANNOTATION,
    RR_CLIENT_ANNOTATION,
    RR_SERVER_ANNOTATION,
    Problem,
    RoutingSettings,
)
from kube_router.goparse import parse_ip, parse_uint
from kube_router.k8s.models import Node

if TYPE_CHECKING:
    from kube_router.config import Config

PEERS_ANNOTATION: Final = "kube-router.io/peers"
PEER_IPS_ANNOTATION: Final = "kube-router.io/peer.ips"
PEER_ASNS_ANNOTATION: Final = "kube-router.io/peer.asns"
PEER_PASSWORDS_ANNOTATION: Final = "kube-router.io/peer.passwords"
PEER_LOCALIPS_ANNOTATION: Final = "kube-router.io/peer.localips"
PEER_PORTS_ANNOTATION: Final = "kube-router.io/peer.ports"

DEFAULT_BGP_PORT: Final = 179
MAX_PORT: Final = 65535
UINT32_BITS: Final = 32


class PeerError(ValueError):
    """One peer entry that cannot be used; the message says why."""


@dataclass(frozen=True)
class PeerResult:
    peers: tuple[PeerSpec, ...] = ()
    problems: tuple[Problem, ...] = ()
    bfd_requested: bool = False  # a peers annotation entry asked for BFD (gobgpd 3.10 has none)


def _family(address: str) -> str:
    return IPV6 if ":" in address else IPV4


def decode_password(text: str) -> str:
    """Base64 as Go's ``StdEncoding.DecodeString``: padding required, CR and LF ignored."""
    try:
        raw = binascii.a2b_base64(text.replace("\r", "").replace("\n", ""), strict_mode=True)
        return raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as err:
        raise PeerError(f"password is not base64-encoded UTF-8 text: {err}") from err


def _asn(value: int) -> int:
    if not any(low <= value <= high for low, high in PEER_ASN_RANGES):
        raise PeerError(f"reserved ASN number {value} for a BGP peer")
    return value


def _ip(text: str, what: str) -> str:
    address = parse_ip(text.strip())
    if address is None:
        raise PeerError(f"{what} {text!r} is not an IP address")
    return str(address)


@dataclass(frozen=True)
class PeerConfig:
    """One external peer as configured, before it meets this node."""

    address: str
    asn: int
    port: int = DEFAULT_BGP_PORT
    password: str = ""
    local_ip: str = ""


def _external(wanted: PeerConfig, settings: RoutingSettings) -> PeerSpec:
    local = wanted.local_ip or settings.primary_ip
    family = _family(wanted.address)
    if family != _family(local):
        raise PeerError(
            f"peer {wanted.address} is {family} but the local address {local} is not; set the "
            "peer's local IP to an address of its family"
        )
    if family not in settings.families:
        raise PeerError(f"peer {wanted.address} is {family}, which this node does not have")
    return PeerSpec(
        address=wanted.address,
        asn=wanted.asn,
        local_address=local,
        port=wanted.port or DEFAULT_BGP_PORT,
        password=wanted.password,
        hold_time=settings.hold_time,
        families=settings.families,
        graceful_restart=settings.graceful_restart,
        multihop_ttl=settings.multihop_ttl,
    )


def _meet(
    wanted: Iterable[PeerConfig], settings: RoutingSettings, problems: list[Problem]
) -> list[PeerSpec]:
    peers: dict[str, PeerSpec] = {}
    for item in wanted:
        if item.address in peers:
            problems.append(Problem(settings.node_name, f"peer {item.address} given twice"))
            continue
        try:
            peers[item.address] = _external(item, settings)
        except PeerError as err:
            problems.append(Problem(settings.node_name, f"not peering: {err}"))
    return list(peers.values())


def global_peers(config: Config, settings: RoutingSettings, passwords: Sequence[str]) -> PeerResult:
    """Peers from ``--peer-router-ips/asns/ports`` and the decoded ``passwords``.

    The flags were checked at start (counts, ASN ranges, ports, base64), so only what depends on
    this node can go wrong here (a peer of a family this node does not have).
    """
    ports = config.peer_router_ports
    wanted = [
        PeerConfig(
            address=str(ip),
            asn=config.peer_router_asns[i],
            port=ports[i] if ports else DEFAULT_BGP_PORT,
            password=passwords[i] if passwords else "",
        )
        for i, ip in enumerate(config.peer_router_ips)
    ]
    problems: list[Problem] = []
    return PeerResult(tuple(_meet(wanted, settings, problems)), tuple(problems))


def external_peers(
    config: Config, settings: RoutingSettings, node: Node, passwords: Sequence[str]
) -> PeerResult:
    """Global peers when any are configured, else the local node's own (upstream's rule)."""
    if config.peer_router_ips:
        return global_peers(config, settings, passwords)
    return node_peers(node, settings)


# --- kube-router.io/peers (YAML) -------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """YAML 1.2 scalars, as upstream's Go YAML library reads them: no sexagesimal numbers (an
    IPv6 address such as ``1:2:3:4:5:6:7:8`` stays a string) and only true/false booleans."""


_Loader.yaml_implicit_resolvers = {
    key: [
        (tag, rx) for tag, rx in resolvers if tag.rsplit(":", 1)[-1] not in ("int", "float", "bool")
    ]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)


def _uint(value: Any, what: str, bits: int = UINT32_BITS) -> int:
    if isinstance(value, bool):
        raise PeerError(f"{what} {value!r} is not a number")
    if isinstance(value, int):
        if not 0 <= value < (1 << bits):
            raise PeerError(f"{what} {value} is out of range")
        return value
    if isinstance(value, str):
        try:
            return parse_uint(value.strip(), 10, bits)
        except ValueError as err:
            raise PeerError(f"{what} {value!r} is not a number: {err}") from err
    raise PeerError(f"{what} {value!r} is not a number")


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise PeerError(f"{what} {value!r} is not a string")
    return value


_BFD_BOUNDS: Final = {
    "port": MAX_PORT,
    "detection_multiplier": MAX_BFD_MULTIPLIER,
    "desired_min_tx_interval": MAX_BFD_INTERVAL_MS,
    "required_min_rx_interval": MAX_BFD_INTERVAL_MS,
}


def _bfd(value: Any) -> bool:
    """Validate a peer's bfd block as upstream does; whether it asks for BFD."""
    if value is None:
        return False
    if not isinstance(value, Mapping):
        raise PeerError(f"bfd {value!r} is not a mapping")
    enabled = value.get("enabled", False)
    if not isinstance(enabled, bool):
        raise PeerError(f"bfd.enabled {enabled!r} is not true or false")
    for key, high in _BFD_BOUNDS.items():
        if value.get(key) is not None:
            number = _uint(value[key], f"bfd.{key}")
            if not 1 <= number <= high:
                raise PeerError(f"bfd.{key} must be between 1 and {high}, got {number}")
    return enabled


def _yaml_peer(item: Any) -> tuple[PeerConfig, bool]:
    if not isinstance(item, Mapping):
        raise PeerError(f"entry {item!r} is not a mapping")
    if item.get("remoteip") is None:
        raise PeerError("remoteip cannot be empty")
    if item.get("remoteasn") is None:
        raise PeerError("remoteasn cannot be empty")
    address = _ip(_string(item["remoteip"], "remoteip"), "remoteip")
    asn = _asn(_uint(item["remoteasn"], "remoteasn"))
    port = DEFAULT_BGP_PORT
    if item.get("port") is not None:
        port = _uint(item["port"], "port")
        if port > MAX_PORT:
            raise PeerError(f"port {port} is above {MAX_PORT}")
    password = decode_password(_string(item.get("password") or "", "password"))
    local = item.get("localip")
    local_ip = _ip(_string(local, "localip"), "localip") if local else ""
    bfd = _bfd(item.get("bfd"))
    return PeerConfig(address, asn, port, password, local_ip), bfd


def parse_peers_yaml(text: str) -> tuple[list[PeerConfig], list[str], bool]:
    """The ``kube-router.io/peers`` entries that are good, a message per bad one, and BFD asked."""
    try:
        doc = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as err:
        return [], [f"{PEERS_ANNOTATION} is not valid YAML: {err}"], False
    if doc is None:
        return [], [], False
    if not isinstance(doc, list):
        return [], [f"{PEERS_ANNOTATION} must be a YAML list of peers"], False
    wanted: list[PeerConfig] = []
    errors: list[str] = []
    bfd = False
    for position, item in enumerate(doc, start=1):
        try:
            peer, asks_bfd = _yaml_peer(item)
        except PeerError as err:
            errors.append(f"{PEERS_ANNOTATION} entry {position}: {err}; skipped")
            continue
        wanted.append(peer)
        bfd = bfd or asks_bfd
    return wanted, errors, bfd


# --- deprecated kube-router.io/peer.* annotations ---------------------------------------------


def _split(ann: Mapping[str, str], key: str) -> list[str] | None:
    text = ann.get(key)
    return None if text is None else [item.strip() for item in text.split(",")]


def _deprecated_peer(ip: str, asn: str, port: str, password: str, local: str) -> PeerConfig:
    port_number = parse_uint(port, 0, UINT32_BITS) if port else DEFAULT_BGP_PORT
    if port_number > MAX_PORT:
        raise PeerError(f"port {port_number} is above {MAX_PORT}")
    return PeerConfig(
        address=_ip(ip, "peer IP"),
        asn=_asn(parse_uint(asn, 0, UINT32_BITS)),
        port=port_number,
        password=decode_password(password) if password else "",
        local_ip=_ip(local, "local IP") if local else "",
    )


def parse_deprecated(ann: Mapping[str, str]) -> tuple[list[PeerConfig], list[str]]:
    """Peers from ``peer.ips`` and ``peer.asns`` (with optional ports, passwords, local IPs).

    Lists of a different length than ``peer.ips`` cannot be paired: all these peers are
    skipped with one message. A bad entry skips only its own peer. A blank port, password or
    local IP means the default (179, none, the node IP).
    """
    ips, asns = _split(ann, PEER_IPS_ANNOTATION), _split(ann, PEER_ASNS_ANNOTATION)
    if ips is None or asns is None:
        return [], []
    optional = {
        key: _split(ann, key)
        for key in (PEER_PORTS_ANNOTATION, PEER_PASSWORDS_ANNOTATION, PEER_LOCALIPS_ANNOTATION)
    }
    columns = {PEER_ASNS_ANNOTATION: asns, **optional}
    for key, values in columns.items():
        if values is not None and len(values) != len(ips):
            return [], [
                f"{key} has {len(values)} entries but {PEER_IPS_ANNOTATION} has {len(ips)}; "
                "not peering with any of them"
            ]
    wanted, errors = [], []
    for i, ip in enumerate(ips):

        def column(key: str, index: int = i) -> str:
            values = optional[key]
            return values[index] if values is not None else ""

        try:
            wanted.append(
                _deprecated_peer(
                    ip,
                    asns[i],
                    column(PEER_PORTS_ANNOTATION),
                    column(PEER_PASSWORDS_ANNOTATION),
                    column(PEER_LOCALIPS_ANNOTATION),
                )
            )
        except ValueError as err:
            errors.append(f"kube-router.io/peer.* entry {i + 1} ({ip}): {err}; skipped")
    return wanted, errors


def node_peers(node: Node, settings: RoutingSettings) -> PeerResult:
    """The node's own external peers: ``kube-router.io/peers``, else the ``peer.*`` annotations."""
    ann = node.metadata.annotations
    bfd = False
    if PEERS_ANNOTATION in ann:
        wanted, errors, bfd = parse_peers_yaml(ann[PEERS_ANNOTATION])
    else:
        wanted, errors = parse_deprecated(ann)
    problems = [Problem(settings.node_name, e) for e in errors]
    peers = _meet(wanted, settings, problems)
    return PeerResult(tuple(peers), tuple(problems), bfd)


# --- iBGP -------------------------------------------------------------------------------------


def _node_families(node: Node) -> tuple[str, ...]:
    versions = {ip.version for ip in node_info.all_ips(node)}
    return tuple(f for f, v in ((IPV4, 4), (IPV6, 6)) if v in versions)


def _skip_reason(node: Node, address: str, settings: RoutingSettings) -> str | None:
    """Why we do not peer with this other node (None: we do); "" means skip without a word."""
    ann = node.metadata.annotations
    if settings.rr_client and RR_SERVER_ANNOTATION not in ann:
        return ""
    if not settings.full_mesh:
        text = ann.get(NODE_ASN_ANNOTATION)
        if text is None:
            return ""  # not in any ASN group: upstream says so at info level only
        try:
            asn = parse_uint(text.strip(), 0, UINT32_BITS)
        except ValueError:
            return f"not peering with node {node.metadata.name}: bad {NODE_ASN_ANNOTATION} {text!r}"
        if asn != settings.asn:
            return ""
    if _family(address) != _family(settings.primary_ip):
        return (
            f"not peering with node {node.metadata.name}: its primary IP {address} is not of the "
            f"family of ours ({settings.primary_ip})"
        )
    return None


def _internal(node: Node, address: str, settings: RoutingSettings) -> PeerSpec:
    families = tuple(f for f in _node_families(node) if f in settings.families)
    rr_client = settings.rr_server and RR_CLIENT_ANNOTATION in node.metadata.annotations
    return PeerSpec(
        address=address,
        asn=settings.asn,
        local_address=settings.primary_ip,
        port=settings.bgp_port,
        families=families or (_family(address),),
        graceful_restart=settings.graceful_restart,
        rr_client=rr_client,
        rr_cluster_id=settings.rr_cluster_id if rr_client else "",
        internal=True,
    )


def internal_peers(nodes: Iterable[Node], settings: RoutingSettings) -> PeerResult:
    """iBGP peers: every other node we peer with (none without ``--enable-ibgp``).

    One session per node pair over the primary IPs, carrying the families both nodes have
    (upstream offers the other node's families even when ours is off; we offer only families
    enabled here). A node without a usable address is a problem named after that node.
    """
    if not settings.enable_ibgp:
        return PeerResult()
    peers: dict[str, PeerSpec] = {}
    problems: list[Problem] = []
    for node in nodes:
        name = node.metadata.name
        try:
            address = str(node_info.primary_ip(node))
        except node_info.NodeIdentityError as err:
            problems.append(Problem(name, str(err)))
            continue
        if address == settings.primary_ip or name == settings.node_name:
            continue
        why = _skip_reason(node, address, settings)
        if why is not None:
            if why:
                problems.append(Problem(name, why))
            continue
        peers.setdefault(address, _internal(node, address, settings))
    return PeerResult(tuple(peers.values()), tuple(problems))


def node_primary_ips(nodes: Iterable[Node]) -> list[str]:
    """Every node's primary IP, ours included (upstream's iBGP peer neighbor sets)."""
    out: dict[str, None] = {}
    for node in nodes:
        try:
            out[str(node_info.primary_ip(node))] = None
        except node_info.NodeIdentityError:
            continue
    return list(out)
