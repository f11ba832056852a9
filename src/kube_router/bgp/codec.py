"""Model values ↔ gobgpd 3.10 gRPC messages (package ``apipb``, stubs in ``bgp/api``).

- ``path_to_pb`` / ``path_from_pb``: a ``PathSpec`` as a ``Path`` (origin IGP; IPv4 next hop in
  a ``NextHopAttribute``, IPv6 in an ``MpReachNLRIAttribute``; communities attribute).
- ``route_event``: a ``Path`` of the WatchEvent BEST table stream → ``RouteEvent`` (None for our
  own paths, whose ``neighbor_ip`` is ``"<nil>"``, and for families other than unicast v4/v6).
- ``peer_event``, ``session_state``, ``peer_status``: peer state.
- ``peer_to_pb`` / ``peer_from_pb``, ``global_to_pb`` / ``global_from_pb``,
  ``defined_set_to_pb`` / ``defined_set_from_pb``, ``policy_to_pb`` / ``policy_from_pb``.

Values read back are canonical (``bgp/canon.py``), so they compare equal to canonical specs.
Statements are named ``<policy>_<statement>`` in gobgpd, because gobgpd's statement names are
global and the versioned replacement of a policy has both versions installed for a moment.
"""

from __future__ import annotations

from typing import Final

from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.message import Message

from kube_router.bgp import canon
from kube_router.bgp.api import attribute_pb2 as attr
from kube_router.bgp.api import gobgp_pb2 as api
from kube_router.bgp.model import (
    IPV4,
    IPV6,
    Action,
    DefinedSetSpec,
    DefinedType,
    GlobalSpec,
    GracefulRestart,
    PathSpec,
    PeerEvent,
    PeerSpec,
    PeerStatus,
    PolicySpec,
    PrefixMatch,
    RouteEvent,
    SessionState,
    StatementSpec,
)

#: ``neighbor_ip`` of a locally originated path.
LOCAL_NEIGHBOR: Final = "<nil>"
ORIGIN_IGP: Final = 0

_AFI: Final = {IPV4: api.Family.AFI_IP, IPV6: api.Family.AFI_IP6}
_FAMILY_OF_AFI: Final = {v: k for k, v in _AFI.items()}
_SESSION: Final[dict[int, SessionState]] = {
    api.PeerState.UNKNOWN: SessionState.UNKNOWN,
    api.PeerState.IDLE: SessionState.IDLE,
    api.PeerState.CONNECT: SessionState.CONNECT,
    api.PeerState.ACTIVE: SessionState.ACTIVE,
    api.PeerState.OPENSENT: SessionState.OPENSENT,
    api.PeerState.OPENCONFIRM: SessionState.OPENCONFIRM,
    api.PeerState.ESTABLISHED: SessionState.ESTABLISHED,
}
_ACTION: Final[dict[Action, api.RouteAction]] = {
    Action.ACCEPT: api.ACCEPT,
    Action.REJECT: api.REJECT,
    Action.NONE: api.NONE,
}
_ACTION_OF: Final[dict[int, Action]] = {v: k for k, v in _ACTION.items()}
_DEFINED: Final[dict[DefinedType, api.DefinedType]] = {
    DefinedType.PREFIX: api.PREFIX,
    DefinedType.NEIGHBOR: api.NEIGHBOR,
    DefinedType.COMMUNITY: api.COMMUNITY,
}
_DEFINED_OF: Final[dict[int, DefinedType]] = {v: k for k, v in _DEFINED.items()}


class CodecError(ValueError):
    """A gRPC message that does not fit the model (unknown NLRI type, missing next hop)."""


def pack(msg: Message) -> AnyPb:
    packed = AnyPb()
    packed.Pack(msg)
    return packed


def _is(packed: AnyPb, msg_type: type[Message]) -> bool:
    return packed.TypeName() == msg_type.DESCRIPTOR.full_name


def family_pb(family: str) -> api.Family:
    return api.Family(afi=_AFI[family], safi=api.Family.SAFI_UNICAST)


def family_of(pb: api.Family) -> str | None:
    """``ipv4``/``ipv6`` for unicast families, None for every other."""
    if pb.safi != api.Family.SAFI_UNICAST:
        return None
    return _FAMILY_OF_AFI.get(pb.afi)


def action_pb(action: Action) -> api.RouteAction:
    return _ACTION[action]


def action_of(value: int) -> Action:
    return _ACTION_OF.get(value, Action.NONE)


def defined_type_pb(kind: DefinedType) -> api.DefinedType:
    return _DEFINED[kind]


# --- paths -----------------------------------------------------------------------------------


def path_to_pb(spec: PathSpec) -> api.Path:
    prefix = canon.canonical_prefix(spec.prefix)
    address, length = prefix.split("/")
    next_hop = canon.canonical_address(spec.next_hop)
    family = family_pb(spec.family)
    nlri = pack(attr.IPAddressPrefix(prefix=address, prefix_len=int(length)))
    pattrs = [pack(attr.OriginAttribute(origin=ORIGIN_IGP))]
    if spec.family == IPV4:
        pattrs.append(pack(attr.NextHopAttribute(next_hop=next_hop)))
    else:
        reach = attr.MpReachNLRIAttribute(family=family, next_hops=[next_hop], nlris=[nlri])
        pattrs.append(pack(reach))
    if spec.communities:
        pattrs.append(pack(attr.CommunitiesAttribute(communities=list(spec.communities))))
    return api.Path(family=family, nlri=nlri, pattrs=pattrs)


def _prefix_of(path: api.Path) -> str:
    if not _is(path.nlri, attr.IPAddressPrefix):
        raise CodecError(f"unsupported NLRI {path.nlri.type_url}")
    nlri = attr.IPAddressPrefix()
    path.nlri.Unpack(nlri)
    return canon.canonical_prefix(f"{nlri.prefix}/{nlri.prefix_len}")


def _next_hop_and_communities(path: api.Path) -> tuple[str, tuple[int, ...]]:
    next_hop = ""
    communities: tuple[int, ...] = ()
    for packed in path.pattrs:
        if _is(packed, attr.NextHopAttribute):
            hop = attr.NextHopAttribute()
            packed.Unpack(hop)
            next_hop = hop.next_hop
        elif _is(packed, attr.MpReachNLRIAttribute):
            reach = attr.MpReachNLRIAttribute()
            packed.Unpack(reach)
            next_hop = reach.next_hops[0] if reach.next_hops else next_hop
        elif _is(packed, attr.CommunitiesAttribute):
            comms = attr.CommunitiesAttribute()
            packed.Unpack(comms)
            communities = tuple(comms.communities)
    return next_hop, communities


def path_from_pb(path: api.Path) -> PathSpec:
    """A path as the model sees it (canonical); a withdrawal may have no next hop ("")."""
    prefix = _prefix_of(path)
    next_hop, communities = _next_hop_and_communities(path)
    if not next_hop and not path.is_withdraw:
        raise CodecError(f"path {prefix} has no next hop")
    hop = canon.canonical_address(next_hop) if next_hop else ""
    return PathSpec(prefix=prefix, next_hop=hop, communities=tuple(sorted(set(communities))))


def is_local(path: api.Path) -> bool:
    return path.neighbor_ip in (LOCAL_NEIGHBOR, "")


def route_event(path: api.Path) -> RouteEvent | None:
    """A learned best path (or its withdrawal); None for our own paths and other families."""
    if is_local(path) or family_of(path.family) is None:
        return None
    spec = path_from_pb(path)
    return RouteEvent(
        prefix=spec.prefix,
        next_hop=spec.next_hop,
        withdraw=path.is_withdraw,
        neighbor=path.neighbor_ip,
        communities=spec.communities,
    )


# --- peers -----------------------------------------------------------------------------------


def session_state(value: int) -> SessionState:
    return _SESSION.get(value, SessionState.UNKNOWN)


def peer_event(event: api.WatchEventResponse.PeerEvent) -> PeerEvent | None:
    """A session state change; None for the stream's INIT / END_OF_INIT markers."""
    if event.type != api.WatchEventResponse.PeerEvent.STATE:
        return None
    state = event.peer.state
    return PeerEvent(address=state.neighbor_address, state=session_state(state.session_state))


def _afi_safi(family: str, gr: bool) -> api.AfiSafi:
    afi_safi = api.AfiSafi(config=api.AfiSafiConfig(family=family_pb(family), enabled=True))
    if gr:
        afi_safi.mp_graceful_restart.config.enabled = True
    return afi_safi


def peer_to_pb(spec: PeerSpec) -> api.Peer:
    gr = spec.graceful_restart
    peer = api.Peer(
        conf=api.PeerConf(
            neighbor_address=spec.address, peer_asn=spec.asn, auth_password=spec.password
        ),
        transport=api.Transport(local_address=spec.local_address, remote_port=spec.port),
        timers=api.Timers(
            config=api.TimersConfig(hold_time=spec.hold_time, keepalive_interval=spec.keepalive)
        ),
        afi_safis=[_afi_safi(f, gr.enabled) for f in spec.families],
    )
    if gr.enabled:
        peer.graceful_restart.CopyFrom(
            api.GracefulRestart(
                enabled=True,
                restart_time=gr.restart_time,
                deferral_time=gr.deferral_time,
                local_restarting=gr.local_restarting,
            )
        )
    if spec.rr_client:
        peer.route_reflector.route_reflector_client = True
        peer.route_reflector.route_reflector_cluster_id = spec.rr_cluster_id
    if spec.multihop_ttl > 1:
        peer.ebgp_multihop.enabled = True
        peer.ebgp_multihop.multihop_ttl = spec.multihop_ttl
    return peer


def peer_from_pb(peer: api.Peer) -> PeerSpec:
    """A neighbour's configuration as ListPeer reports it, canonical."""
    gr = peer.graceful_restart
    families = {family_of(a.config.family) for a in peer.afi_safis if a.config.enabled}
    multihop = peer.ebgp_multihop.multihop_ttl if peer.ebgp_multihop.enabled else 0
    spec = PeerSpec(
        address=peer.conf.neighbor_address,
        asn=peer.conf.peer_asn,
        local_address=peer.transport.local_address,
        port=peer.transport.remote_port,
        password=peer.conf.auth_password,
        hold_time=peer.timers.config.hold_time,
        keepalive=peer.timers.config.keepalive_interval,
        families=tuple(sorted(f for f in families if f is not None)),
        graceful_restart=GracefulRestart(
            enabled=gr.enabled,
            restart_time=gr.restart_time,
            deferral_time=gr.deferral_time,
            local_restarting=gr.local_restarting,
        ),
        rr_client=peer.route_reflector.route_reflector_client,
        rr_cluster_id=peer.route_reflector.route_reflector_cluster_id,
        multihop_ttl=multihop,
    )
    return canon.canonical_peer(spec)


def peer_status(peer: api.Peer) -> PeerStatus:
    state = peer.state
    uptime = 0.0
    if state.session_state == api.PeerState.ESTABLISHED and peer.timers.state.HasField("uptime"):
        uptime = float(peer.timers.state.uptime.seconds)
    return PeerStatus(
        address=peer.conf.neighbor_address or state.neighbor_address,
        asn=peer.conf.peer_asn,
        state=session_state(state.session_state),
        internal=peer.conf.type == api.INTERNAL,
        uptime_s=uptime,
        received=sum(a.state.received for a in peer.afi_safis),
        accepted=sum(a.state.accepted for a in peer.afi_safis),
    )


# --- global ----------------------------------------------------------------------------------


def global_to_pb(spec: GlobalSpec) -> api.Global:
    g = api.Global(
        asn=spec.asn,
        router_id=spec.router_id,
        listen_port=spec.listen_port,
        listen_addresses=list(spec.listen_addresses),
    )
    gr = spec.graceful_restart
    if gr.enabled:
        g.graceful_restart.CopyFrom(
            api.GracefulRestart(
                enabled=True,
                restart_time=gr.restart_time,
                deferral_time=gr.deferral_time,
                local_restarting=gr.local_restarting,
            )
        )
    return g


def global_from_pb(g: api.Global) -> GlobalSpec | None:
    """None when BGP is not started (asn 0)."""
    if g.asn == 0:
        return None
    return canon.canonical_global(
        GlobalSpec(
            asn=g.asn,
            router_id=g.router_id,
            listen_port=g.listen_port,
            listen_addresses=tuple(g.listen_addresses),
        )
    )


# --- policies --------------------------------------------------------------------------------


def defined_set_to_pb(spec: DefinedSetSpec) -> api.DefinedSet:
    return api.DefinedSet(
        defined_type=_DEFINED[spec.type],
        name=spec.name,
        list=list(canon.canonical_defined_set(spec).members),
        prefixes=[
            api.Prefix(ip_prefix=p.prefix, mask_length_min=p.mask_min, mask_length_max=p.mask_max)
            for p in spec.prefixes
        ],
    )


def defined_set_from_pb(pb: api.DefinedSet) -> DefinedSetSpec | None:
    """None for kinds the model does not have (AS path, tag, ...)."""
    kind = _DEFINED_OF.get(pb.defined_type)
    if kind is None:
        return None
    prefixes = tuple(
        PrefixMatch(p.ip_prefix, p.mask_length_min, p.mask_length_max) for p in pb.prefixes
    )
    spec = DefinedSetSpec(name=pb.name, type=kind, prefixes=prefixes, members=tuple(pb.list))
    return canon.canonical_defined_set(spec)


def statement_name(policy: str, statement: str) -> str:
    return f"{policy}_{statement}"


def _statement_to_pb(policy: str, spec: StatementSpec) -> api.Statement:
    stmt = api.Statement(name=statement_name(policy, spec.name))
    if spec.prefix_set:
        stmt.conditions.prefix_set.CopyFrom(
            api.MatchSet(type=api.MatchSet.ANY, name=spec.prefix_set)
        )
    if spec.neighbor_set:
        stmt.conditions.neighbor_set.type = api.MatchSet.ANY
        stmt.conditions.neighbor_set.name = spec.neighbor_set
    stmt.actions.route_action = _ACTION[spec.action]
    if spec.add_communities:
        stmt.actions.community.type = api.CommunityAction.ADD
        stmt.actions.community.communities.extend(
            canon.canonical_community(c) for c in spec.add_communities
        )
    if spec.prepend_asn and spec.prepend_repeat:
        stmt.actions.as_prepend.asn = spec.prepend_asn
        stmt.actions.as_prepend.repeat = spec.prepend_repeat
    if spec.next_hop_self:
        stmt.actions.nexthop.self = True
    return stmt


def policy_to_pb(name: str, spec: PolicySpec) -> api.Policy:
    return api.Policy(name=name, statements=[_statement_to_pb(name, s) for s in spec.statements])


def _statement_from_pb(policy: str, stmt: api.Statement) -> StatementSpec:
    actions = stmt.actions
    return canon.canonical_statement(
        StatementSpec(
            name=stmt.name.removeprefix(f"{policy}_"),
            prefix_set=stmt.conditions.prefix_set.name,
            neighbor_set=stmt.conditions.neighbor_set.name,
            action=action_of(actions.route_action),
            add_communities=tuple(actions.community.communities),
            prepend_asn=actions.as_prepend.asn,
            prepend_repeat=actions.as_prepend.repeat,
            next_hop_self=actions.nexthop.self,
        )
    )


def policy_from_pb(pb: api.Policy) -> PolicySpec:
    return PolicySpec(statements=tuple(_statement_from_pb(pb.name, s) for s in pb.statements))
