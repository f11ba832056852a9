"""What the routing controller asks of the BGP engine, in plain values (no gRPC types).

The routing controller computes these (pure code in ``controllers/routing``); the engine port
(``bgp/engine.py``: gobgpd over gRPC, and a strict fake) reconciles gobgpd's state to them.
Routes gobgpd learns come back as ``RouteEvent``; session changes as ``PeerEvent``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

#: Families as the rest of the code names them.
IPV4: Final = "ipv4"
IPV6: Final = "ipv6"

#: Upstream's names of gobgpd objects (kube-router.md §4.2), kept for the `gobgp` CLI's users.
EXPORT_POLICY_PREFIX: Final = "kube_router_export"
IMPORT_POLICY_PREFIX: Final = "kube_router_import"


@dataclass(frozen=True)
class GracefulRestart:
    enabled: bool = False
    restart_time: int = 90  # seconds
    deferral_time: int = 360  # seconds
    local_restarting: bool = True


@dataclass(frozen=True)
class GlobalSpec:
    """gobgpd's global settings (StartBgp)."""

    asn: int
    router_id: str
    listen_port: int = 179  # -1: no listener
    listen_addresses: tuple[str, ...] = ()
    graceful_restart: GracefulRestart = GracefulRestart()


@dataclass(frozen=True)
class PeerSpec:
    """One BGP neighbour as the controller wants it."""

    address: str
    asn: int
    local_address: str = ""
    port: int = 179
    password: str = ""  # plain text (already base64-decoded); never logged
    hold_time: int = 0  # seconds; 0 = gobgpd's default
    keepalive: int = 0  # seconds; 0 = gobgpd's default (hold / 3)
    families: tuple[str, ...] = (IPV4,)  # IPV4 and/or IPV6
    graceful_restart: GracefulRestart = GracefulRestart()
    rr_client: bool = False
    rr_cluster_id: str = ""
    multihop_ttl: int = 0  # 0 or 1: off
    internal: bool = False  # an iBGP peer (another node of the cluster)

    def __repr__(self) -> str:  # keep the password out of logs and reprs
        shown = "***" if self.password else ""
        return (
            f"PeerSpec({self.address} asn={self.asn} local={self.local_address or '-'} "
            f"port={self.port} families={','.join(self.families)} password={shown!r} "
            f"rr_client={self.rr_client} internal={self.internal})"
        )


@dataclass(frozen=True)
class PathSpec:
    """A route this node originates into gobgpd's global RIB."""

    prefix: str  # "10.244.1.0/24", "10.96.0.10/32", "2001:db8::/64"
    next_hop: str
    communities: tuple[int, ...] = ()

    @property
    def family(self) -> str:
        return IPV6 if ":" in self.prefix else IPV4


class DefinedType(enum.Enum):
    PREFIX = "prefix"
    NEIGHBOR = "neighbor"
    COMMUNITY = "community"


@dataclass(frozen=True)
class PrefixMatch:
    prefix: str  # CIDR
    mask_min: int
    mask_max: int


@dataclass(frozen=True)
class DefinedSetSpec:
    name: str
    type: DefinedType
    prefixes: tuple[PrefixMatch, ...] = ()  # PREFIX sets
    members: tuple[str, ...] = ()  # NEIGHBOR sets: "10.0.0.1/32"; COMMUNITY sets: "64512:1"


class Action(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    NONE = "none"  # no route action (only attribute changes)


@dataclass(frozen=True)
class StatementSpec:
    name: str
    prefix_set: str = ""  # match ANY of this prefix set ("" = no condition)
    neighbor_set: str = ""  # match ANY of this neighbor set
    action: Action = Action.ACCEPT
    add_communities: tuple[str, ...] = ()  # "64512:100", "no-export", "4294967041"
    prepend_asn: int = 0
    prepend_repeat: int = 0
    next_hop_self: bool = False


@dataclass(frozen=True)
class PolicySpec:
    """One policy; the engine names it ``<prefix><version>`` when it installs it."""

    statements: tuple[StatementSpec, ...]


@dataclass(frozen=True)
class PolicyState:
    """All policy state: defined sets, the export and import policies and their defaults.

    ``export`` None: no export policy assigned (route-reflector servers); same for ``import_``.
    Export's default action is REJECT, import's ACCEPT (upstream).
    """

    defined_sets: tuple[DefinedSetSpec, ...] = ()
    export: PolicySpec | None = None
    import_: PolicySpec | None = None


class SessionState(enum.Enum):
    UNKNOWN = "unknown"
    IDLE = "idle"
    CONNECT = "connect"
    ACTIVE = "active"
    OPENSENT = "opensent"
    OPENCONFIRM = "openconfirm"
    ESTABLISHED = "established"


@dataclass(frozen=True)
class PeerStatus:
    address: str
    asn: int
    state: SessionState
    internal: bool = False
    uptime_s: float = 0.0
    received: int = 0
    accepted: int = 0


@dataclass(frozen=True)
class RouteEvent:
    """A best path learned from a peer (or its withdrawal), from gobgpd's BEST table stream."""

    prefix: str
    next_hop: str
    withdraw: bool
    neighbor: str  # the peer it came from
    communities: tuple[int, ...] = field(default=())

    @property
    def family(self) -> str:
        return IPV6 if ":" in self.prefix else IPV4


@dataclass(frozen=True)
class PeerEvent:
    address: str
    state: SessionState
