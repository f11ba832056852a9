"""Model ↔ gobgpd gRPC messages: round trips (hypothesis) and event decoding."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kube_router.bgp import canon, codec
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
    PolicySpec,
    PrefixMatch,
    RouteEvent,
    SessionState,
    StatementSpec,
)

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)
v4_prefix = st.builds(lambda a, n: f"{a}/{n}", v4, st.integers(0, 32))
v6_prefix = st.builds(lambda a, n: f"{a}/{n}", v6, st.integers(0, 128))
communities = st.lists(u32, max_size=4).map(tuple)
paths = st.one_of(
    st.builds(PathSpec, v4_prefix, v4, communities),
    st.builds(PathSpec, v6_prefix, v6, communities),
)
name = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)
community_text = st.one_of(
    st.builds(lambda a, b: f"{a}:{b}", u16, u16),
    u32.map(str),
    st.sampled_from(sorted(canon.WELL_KNOWN_COMMUNITIES)),
)


@given(paths)
def test_path_round_trip(spec: PathSpec) -> None:
    assert codec.path_from_pb(codec.path_to_pb(spec)) == canon.canonical_path(spec)


@given(paths, v4)
def test_learned_path_becomes_a_route_event(spec: PathSpec, neighbor: str) -> None:
    path = codec.path_to_pb(spec)
    path.neighbor_ip = neighbor
    want = canon.canonical_path(spec)
    assert codec.route_event(path) == RouteEvent(
        want.prefix, want.next_hop, False, neighbor, want.communities
    )


def test_route_event_skips_local_paths_and_other_families() -> None:
    path = codec.path_to_pb(PathSpec("10.244.1.0/24", "192.168.77.1"))
    path.neighbor_ip = codec.LOCAL_NEIGHBOR
    assert codec.route_event(path) is None
    path.neighbor_ip = "192.168.77.2"
    path.family.safi = api.Family.SAFI_MPLS_VPN
    assert codec.route_event(path) is None


def test_withdrawal_without_next_hop() -> None:
    nlri = codec.pack(attr.IPAddressPrefix(prefix="10.244.2.0", prefix_len=24))
    path = api.Path(
        nlri=nlri, family=codec.family_pb(IPV4), is_withdraw=True, neighbor_ip="192.168.77.2"
    )
    assert codec.route_event(path) == RouteEvent("10.244.2.0/24", "", True, "192.168.77.2")


def test_path_without_next_hop_is_refused() -> None:
    path = codec.path_to_pb(PathSpec("10.244.1.0/24", "192.168.77.1"))
    del path.pattrs[1]
    with pytest.raises(codec.CodecError, match="no next hop"):
        codec.path_from_pb(path)


def test_ipv6_uses_mp_reach() -> None:
    path = codec.path_to_pb(PathSpec("2001:db8::/64", "fd00::1"))
    assert [a.TypeName() for a in path.pattrs] == [
        "apipb.OriginAttribute",
        "apipb.MpReachNLRIAttribute",
    ]


@given(community_text)
def test_community_canonical_form(text: str) -> None:
    value = canon.parse_community(text)
    assert canon.parse_community(canon.format_community(value)) == value


@pytest.mark.parametrize("text", ["x:1", "65536:1", "1:65536", "4294967296", "", "no-such"])
def test_invalid_community(text: str) -> None:
    with pytest.raises(canon.InvalidSpec):
        canon.parse_community(text)


gr = st.one_of(
    st.just(GracefulRestart()),
    st.builds(GracefulRestart, st.just(True), u16, u16, st.booleans()),
)
peers = st.builds(
    PeerSpec,
    address=st.one_of(v4, v6),
    asn=st.integers(1, 0xFFFFFFFF),
    local_address=st.one_of(st.just(""), v4),
    port=st.integers(1, 0xFFFF),
    password=st.text(max_size=8),
    hold_time=st.integers(0, 600),
    keepalive=st.integers(0, 200),
    families=st.lists(st.sampled_from([IPV4, IPV6]), min_size=1, max_size=2).map(tuple),
    graceful_restart=gr,
    rr_client=st.booleans(),
    rr_cluster_id=st.one_of(st.just(""), v4),
    multihop_ttl=st.integers(0, 255),
)


@given(peers)
def test_peer_round_trip(spec: PeerSpec) -> None:
    assert codec.peer_from_pb(codec.peer_to_pb(spec)) == canon.canonical_peer(spec)


def test_peer_repr_hides_the_password() -> None:
    assert "hunter2" not in repr(PeerSpec("10.0.0.1", 1, password="hunter2"))


@given(st.builds(GlobalSpec, st.integers(1, 0xFFFFFFFF), v4, st.integers(-1, 65535)))
def test_global_round_trip(spec: GlobalSpec) -> None:
    assert codec.global_from_pb(codec.global_to_pb(spec)) == canon.canonical_global(spec)


def test_not_started_global() -> None:
    assert codec.global_from_pb(api.Global()) is None


statements = st.builds(
    StatementSpec,
    name=name,
    prefix_set=st.one_of(st.just(""), name),
    neighbor_set=st.one_of(st.just(""), name),
    action=st.sampled_from(Action),
    add_communities=st.lists(community_text, max_size=3).map(tuple),
    prepend_asn=st.integers(0, 0xFFFFFFFF),
    prepend_repeat=st.integers(0, 255),
    next_hop_self=st.booleans(),
)


@given(st.lists(statements, max_size=4).map(lambda s: PolicySpec(tuple(s))))
def test_policy_round_trip(spec: PolicySpec) -> None:
    pb = codec.policy_to_pb("kube_router_export3", spec)
    assert codec.policy_from_pb(pb) == canon.canonical_policy(spec)
    assert all(s.name.startswith("kube_router_export3_") for s in pb.statements)


prefix_sets = st.builds(
    lambda n, ps: DefinedSetSpec(n, DefinedType.PREFIX, prefixes=tuple(ps)),
    name,
    st.lists(st.builds(lambda p: PrefixMatch(p, 8, 32), v4_prefix), max_size=4),
)
neighbor_sets = st.builds(
    lambda n, ms: DefinedSetSpec(n, DefinedType.NEIGHBOR, members=tuple(ms)),
    name,
    st.lists(st.one_of(v4, v4_prefix, v6), max_size=4),
)
community_sets = st.builds(
    lambda n, ms: DefinedSetSpec(n, DefinedType.COMMUNITY, members=tuple(ms)),
    name,
    st.lists(community_text, max_size=4),
)


@given(st.one_of(prefix_sets, neighbor_sets, community_sets))
def test_defined_set_round_trip(spec: DefinedSetSpec) -> None:
    pb = codec.defined_set_to_pb(spec)
    if spec.type is DefinedType.COMMUNITY:  # gobgpd stores community members as regexes
        pb.list[:] = [f"^{m}$" for m in pb.list]
    assert codec.defined_set_from_pb(pb) == canon.canonical_defined_set(spec)


def test_neighbor_members_become_prefixes() -> None:
    spec = DefinedSetSpec("n", DefinedType.NEIGHBOR, members=("10.0.0.1", "fd00::1"))
    assert list(codec.defined_set_to_pb(spec).list) == ["10.0.0.1/32", "fd00::1/128"]


@pytest.mark.parametrize(
    ("value", "state"),
    [
        (api.PeerState.IDLE, SessionState.IDLE),
        (api.PeerState.ACTIVE, SessionState.ACTIVE),
        (api.PeerState.OPENCONFIRM, SessionState.OPENCONFIRM),
        (api.PeerState.ESTABLISHED, SessionState.ESTABLISHED),
        (42, SessionState.UNKNOWN),
    ],
)
def test_session_states(value: int, state: SessionState) -> None:
    assert codec.session_state(value) is state


def test_peer_events() -> None:
    event = api.WatchEventResponse.PeerEvent(type=api.WatchEventResponse.PeerEvent.STATE)
    event.peer.state.neighbor_address = "192.168.77.2"
    event.peer.state.session_state = api.PeerState.ESTABLISHED
    assert codec.peer_event(event) == PeerEvent("192.168.77.2", SessionState.ESTABLISHED)
    event.type = api.WatchEventResponse.PeerEvent.END_OF_INIT
    assert codec.peer_event(event) is None


def test_peer_status() -> None:
    peer = codec.peer_to_pb(PeerSpec("192.168.77.2", 64512))
    peer.conf.type = api.INTERNAL
    peer.state.session_state = api.PeerState.ESTABLISHED
    peer.timers.state.uptime.seconds = 1234
    peer.afi_safis[0].state.received = 7
    peer.afi_safis[0].state.accepted = 5
    status = codec.peer_status(peer)
    assert (status.address, status.state, status.internal, status.received, status.accepted) == (
        "192.168.77.2",
        SessionState.ESTABLISHED,
        True,
        7,
        5,
    )


@pytest.mark.parametrize(
    ("name", "prefix", "version"),
    [
        ("kube_router_export7", "kube_router_export", 7),
        ("kube_router_export", "kube_router_export", None),
        ("kube_router_exportx", "kube_router_export", None),
        ("other3", "kube_router_export", None),
    ],
)
def test_policy_version(name: str, prefix: str, version: int | None) -> None:
    assert canon.policy_version(name, prefix) == version


def test_canonical_prefix_clears_host_bits() -> None:
    assert canon.canonical_prefix("10.244.1.7/24") == "10.244.1.0/24"
    assert str(ipaddress.ip_network(canon.canonical_prefix("2001:DB8::1/64"))) == "2001:db8::/64"
