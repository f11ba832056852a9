"""The route injector's plain values: its settings, this node, a decision for one learned route,
what a batch did. Pure (see ``injector.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from kube_router.bgp.model import PeerEvent, RouteEvent
from kube_router.dataplane.ipvs import Family
from kube_router.dataplane.routes import DEFAULT_FOU_PORT, Encap, Route, RouteFailure, Tunnel

OVERLAY_SUBNET: Final = "subnet"


OVERLAY_FULL: Final = "full"


Event = RouteEvent | PeerEvent


@dataclass(frozen=True)
class InjectorSettings:
    """The flags that shape injection (``--enable-overlay``, ``--overlay-type``,
    ``--overlay-encap``, ``--overlay-encap-port``, ``--override-nexthop``)."""

    enable_overlay: bool = True
    overlay_type: str = OVERLAY_SUBNET
    encap: Encap = Encap.IPIP
    encap_port: int = DEFAULT_FOU_PORT
    override_next_hop: bool = False


@dataclass(frozen=True)
class NodeInfo:
    """This node: its best IP per family, the subnets of its node interface(s) (CIDRs, the
    "local node subnets" that decide between a route via the next hop and a tunnel), and its
    pod CIDRs (for the table-77 rules)."""

    ips: Mapping[Family, str]
    subnets: tuple[str, ...] = ()
    pod_cidrs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    route: Route | None
    tunnel: Tunnel | None = None
    neighbor: str = ""


@dataclass
class BatchResult:
    """What one batch or one syncer run did."""

    replaced: int = 0
    deleted: int = 0
    tunnels_added: list[str] = field(default_factory=list)
    tunnels_deleted: list[str] = field(default_factory=list)
    failures: list[RouteFailure] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.errors
