"""What the routing controller computes, applied to a real gobgpd: its resulting state.

Settings, peers, paths and policies are computed by the pure routing modules from Nodes,
Services and flags, pushed through ``GrpcEngine`` into one gobgpd (no listener, API on a unix
socket in a temp dir) and read back as gobgpd lists them (ListPeer, ListPath, ListDefinedSet,
ListPolicy, ListPolicyAssignment). The fake engine must end up holding the same.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from routing_builders import make_config, make_node, make_service, make_settings, make_slice

from kube_router.bgp.canon import BgpState, canonical_peer
from kube_router.bgp.engine import BgpEngine
from kube_router.bgp.fake import FakeEngine
from kube_router.bgp.grpc_engine import GrpcEngine
from kube_router.bgp.model import (
    IPV4,
    IPV6,
    Action,
    DefinedType,
    GracefulRestart,
    PathSpec,
    PeerSpec,
    PolicyState,
)
from kube_router.controllers.routing.compile import advertise, peers, policies
from kube_router.controllers.routing.compile.settings import RoutingSettings
from kube_router.controllers.shared.services import Ranges
from kube_router.k8s.models import Node, Service

pytestmark = pytest.mark.skipif(shutil.which("gobgpd") is None, reason="gobgpd not installed")

RANGES = Ranges.parse(
    True, ["10.96.0.0/12", "fd00:96::/108"], ["203.0.113.0/24", "2001:db8:e::/64"], []
)
PASSWORD = base64.b64encode(b"s3cret").decode()


@dataclass(frozen=True)
class Desired:
    """Everything one node's controller would push to gobgpd."""

    settings: RoutingSettings
    peers: tuple[PeerSpec, ...]
    paths: frozenset[PathSpec]
    policies: PolicyState
    problems: tuple[str, ...]


def compute(
    local: Node, nodes: list[Node], services: list[Service], argv: tuple[str, ...]
) -> Desired:
    """What the controller does each sync, with the pure modules only."""
    config = make_config(*argv)
    settings = make_settings(local, *argv)
    passwords = [base64.b64decode(p).decode() for p in config.peer_router_passwords]
    external = peers.external_peers(config, settings, local, passwords)
    internal = peers.internal_peers(nodes, settings)
    table = advertise.VipTable()
    slices = [make_slice(("10.244.1.5", local.metadata.name))]
    for service in services:
        vips = advertise.service_vips(service, slices, settings, RANGES)
        table.update(f"{service.metadata.namespace}/{service.metadata.name}", vips.advertise)
    state = policies.policy_state(
        settings,
        ibgp_peer_ips=peers.node_primary_ips(nodes),
        external_peer_ips=[p.address for p in external.peers],
        vips=table.vips(),
    )
    return Desired(
        settings,
        internal.peers + external.peers,
        advertise.originated_paths(settings, table.vips()),
        state,
        tuple(str(p) for p in settings.problems + external.problems + internal.problems),
    )


async def push(engine: BgpEngine, desired: Desired) -> None:
    await engine.ensure_global(replace(desired.settings.global_spec(), listen_port=-1))
    await engine.sync_peers(desired.peers)
    await engine.sync_policies(desired.policies)
    await engine.sync_paths(desired.paths)


class RecordingEngine(GrpcEngine):
    """The gRPC engine, noting each request it makes to gobgpd that changes something."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.changes: list[str] = []

    async def call(self, request: str, method: str, message: Any) -> Any:
        if not method.startswith(("Get", "List")):
            self.changes.append(request)
        return await super().call(request, method, message)

    async def _stream_paths(self, paths: list[Any]) -> None:
        self.changes.append(f"AddPathStream ({len(paths)} paths)")
        await super()._stream_paths(paths)


@dataclass
class Engines:
    """gobgpd, and a fake engine that goes through the same calls."""

    real: RecordingEngine
    fake: FakeEngine

    async def apply(self, desired: Desired) -> BgpState:
        """Push to both; they must agree. gobgpd's state is returned."""
        await push(self.real, desired)
        await push(self.fake, desired)
        state = await self.real.read_state()
        assert state == await self.fake.read_state()
        return state

    async def stop(self) -> None:
        await self.real.stop_bgp()
        await self.fake.stop_bgp()


@pytest.fixture
async def gobgpd(gobgpd_target: str) -> AsyncIterator[Engines]:
    engine = RecordingEngine(gobgpd_target)
    await engine.wait_ready(10)
    if await engine.get_global() is not None:
        await engine.stop_bgp()
    try:
        yield Engines(engine, FakeEngine())
    finally:
        await engine.close()


def _statements(state: BgpState, which: str) -> list[tuple[str, Action]]:
    assigned = state.export if which == "export" else state.import_
    assert assigned is not None
    return [(s.name, s.action) for s in assigned.policy.statements]


def _members(state: BgpState, kind: DefinedType, name: str) -> tuple[str, ...]:
    defined = state.defined_sets[(kind, name)]
    if kind is DefinedType.PREFIX:
        return tuple(f"{p.prefix} {p.mask_min}..{p.mask_max}" for p in defined.prefixes)
    return defined.members


DUAL_ARGS = (
    "--enable-ipv6",
    "--advertise-cluster-ip",
    "--advertise-external-ip",
    "--override-nexthop",
    "--bgp-graceful-restart",
    "--bgp-holdtime=30s",
    "--peer-router-ips=10.0.0.254,2001:db8:a::254",
    "--peer-router-asns=65000,65001",
    f"--peer-router-passwords={PASSWORD},",
    "--peer-router-multihop-ttl=4",
)
DUAL_ANNOTATIONS = {
    "kube-router.io/node.bgp.communities": "64512:100,no-export,graceful-shutdown",
    "kube-router.io/path-prepend.as": "65100",
    "kube-router.io/path-prepend.repeat-n": "2",
    "kube-router.io/node.bgp.customimportreject": "192.168.0.0/16,2001:db8:dead::/48",
}


def _dual_cluster() -> tuple[Node, list[Node], list[Service]]:
    local = make_node(
        "n1",
        "10.0.0.1",
        "2001:db8:a::1",
        annotations=DUAL_ANNOTATIONS,
        pod_cidrs=["10.244.1.0/24", "2001:db8:244:1::/64"],
    )
    nodes = [
        local,
        make_node("n2", "10.0.0.2", "2001:db8:a::2"),
        make_node("n3", "10.0.0.3"),
    ]
    services = [
        make_service(
            {
                "clusterIPs": ["10.96.0.10", "fd00:96::10"],
                "externalIPs": ["203.0.113.5", "2001:db8:e::5"],
            }
        )
    ]
    return local, nodes, services


async def test_dual_stack_node_with_external_peers(gobgpd: Engines) -> None:
    local, nodes, services = _dual_cluster()
    desired = compute(local, nodes, services, DUAL_ARGS)
    assert len(desired.problems) == 1
    assert "peer 2001:db8:a::254 is ipv6 but the local address 10.0.0.1" in desired.problems[0]
    state = await gobgpd.apply(desired)

    assert state.global_ is not None
    assert (state.global_.asn, state.global_.router_id) == (64512, "10.0.0.1")
    assert state.global_.listen_addresses == ("10.0.0.1", "2001:db8:a::1")
    gr = GracefulRestart(True, 90, 360, True)
    assert state.peers == {
        p.address: canonical_peer(p)
        for p in (
            PeerSpec(
                "10.0.0.2",
                64512,
                "10.0.0.1",
                families=(IPV4, IPV6),
                graceful_restart=gr,
                internal=True,
            ),
            PeerSpec("10.0.0.3", 64512, "10.0.0.1", graceful_restart=gr, internal=True),
            PeerSpec(
                "10.0.0.254",
                65000,
                "10.0.0.1",
                password="s3cret",
                hold_time=30,
                families=(IPV4, IPV6),
                graceful_restart=gr,
                multihop_ttl=4,
            ),
        )
    }  # the IPv6 global peer cannot be reached from the IPv4 primary IP: skipped
    assert set(state.paths) == {
        "10.244.1.0/24",
        "2001:db8:244:1::/64",
        "10.96.0.10/32",
        "fd00:96::10/128",
        "203.0.113.5/32",
        "2001:db8:e::5/128",
    }
    assert state.paths["fd00:96::10/128"].next_hop == "2001:db8:a::1"

    assert state.export is not None and state.import_ is not None
    assert (state.export.name, state.export.default_action) == (
        "kube_router_export1",
        Action.REJECT,
    )
    assert (state.import_.name, state.import_.default_action) == (
        "kube_router_import1",
        Action.ACCEPT,
    )
    assert _statements(state, "export") == [
        ("podcidrdefinedsetiBGPpeerset", Action.ACCEPT),
        ("podcidrdefinedsetv6iBGPpeerset", Action.ACCEPT),
        ("servicevipsdefinedsetexternalpeerset", Action.ACCEPT),
        ("servicevipsdefinedsetv6externalpeerset", Action.ACCEPT),
        ("podcidrdefinedsetexternalpeerset", Action.ACCEPT),
        ("podcidrdefinedsetv6externalpeerset", Action.ACCEPT),
    ]
    to_router = state.export.policy.statements[2]
    assert to_router.add_communities == ("64512:100", "65535:0", "65535:65281")
    assert (to_router.prepend_asn, to_router.prepend_repeat) == (65100, 2)
    assert to_router.next_hop_self
    assert state.export.policy.statements[0].add_communities == ()
    assert _statements(state, "import") == [
        (name + "allpeerset", Action.REJECT)
        for name in (
            "servicevipsdefinedset",
            "servicevipsdefinedsetv6",
            "defaultroutedefinedset",
            "defaultroutedefinedsetv6",
            "customimportrejectdefinedset",
            "customimportrejectdefinedsetv6",
        )
    ]
    prefix, neighbor = DefinedType.PREFIX, DefinedType.NEIGHBOR
    assert _members(state, prefix, "podcidrdefinedsetv6") == ("2001:db8:244:1::/64 64..64",)
    assert _members(state, prefix, "servicevipsdefinedset") == (
        "10.96.0.10/32 32..32",
        "203.0.113.5/32 32..32",
    )
    assert _members(state, prefix, "customimportrejectdefinedsetv6") == (
        "2001:db8:dead::/48 48..128",
    )
    assert _members(state, prefix, "defaultroutedefinedsetv6") == ("::/0 0..0",)
    assert _members(state, neighbor, "iBGPpeerset") == ("10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32")
    assert _members(state, neighbor, "externalpeerset") == ("10.0.0.254/32",)
    assert _members(state, neighbor, "allpeerset") == (
        "10.0.0.1/32",
        "10.0.0.2/32",
        "10.0.0.254/32",
        "10.0.0.3/32",
    )


async def test_vip_changes_keep_the_policy_version(gobgpd: Engines) -> None:
    """A VIP added or withdrawn changes a set's members, not the policies' statements."""
    local, nodes, services = _dual_cluster()
    await gobgpd.apply(compute(local, nodes, services, DUAL_ARGS))
    more = [*services, make_service({"clusterIP": "10.96.0.77", "clusterIPs": ["10.96.0.77"]})]
    more[1].metadata.name = "api"
    state = await gobgpd.apply(compute(local, nodes, more, DUAL_ARGS))
    assert state.export is not None and state.export.name == "kube_router_export1"
    assert "10.96.0.77/32" in state.paths
    assert "10.96.0.77/32 32..32" in _members(state, DefinedType.PREFIX, "servicevipsdefinedset")

    # every service gone: the VIP statements go, so the policies get a new version
    state = await gobgpd.apply(compute(local, nodes, [], DUAL_ARGS))
    assert state.export is not None and state.export.name == "kube_router_export2"
    assert not any("servicevips" in name for name, _ in _statements(state, "export"))
    assert set(state.paths) == {"10.244.1.0/24", "2001:db8:244:1::/64"}
    assert state.policies == {"kube_router_export2", "kube_router_import2"}


async def test_route_reflector_server_and_clients(gobgpd: Engines) -> None:
    server = {"kube-router.io/rr.server": "42"}
    client = {"kube-router.io/rr.client": "42"}
    nodes = [
        make_node("s1", "10.0.0.1", annotations=server, pod_cidrs=["10.244.1.0/24"]),
        make_node("s2", "10.0.0.2", annotations=server),
        make_node("c1", "10.0.0.11", annotations=client),
        make_node("c2", "10.0.0.12", annotations=client),
    ]
    state = await gobgpd.apply(compute(nodes[0], nodes, [], ()))
    assert {a: (p.rr_client, p.rr_cluster_id) for a, p in state.peers.items()} == {
        "10.0.0.2": (False, ""),
        "10.0.0.11": (True, "0.0.0.42"),
        "10.0.0.12": (True, "0.0.0.42"),
    }
    assert (state.export, state.import_, state.defined_sets) == (None, None, {})
    assert set(state.paths) == {"10.244.1.0/24"}

    # the same cluster seen from a client: only the servers, and policies as usual
    await gobgpd.stop()
    state = await gobgpd.apply(compute(nodes[2], nodes, [], ()))
    assert set(state.peers) == {"10.0.0.1", "10.0.0.2"}
    assert not any(p.rr_client for p in state.peers.values())
    assert state.import_ is not None


async def test_ipv6_only_node_with_node_specific_peer(gobgpd: Engines) -> None:
    peers_yaml = f"- {{remoteip: 'fd00::254', remoteasn: 65000, password: {PASSWORD}}}"
    local = make_node(
        "n1",
        "fd00::1",
        annotations={"kube-router.io/peers": peers_yaml},
        pod_cidrs=["fd00:244:1::/64"],
    )
    nodes = [local, make_node("n2", "fd00::2"), make_node("n3", "10.0.0.3")]
    argv = ("--enable-ipv4=false", "--enable-ipv6", "--router-id=generate")
    desired = compute(local, nodes, [], argv)
    assert [p.split(":")[0] for p in desired.problems] == ["node n3"]  # an IPv4 primary IP
    state = await gobgpd.apply(desired)
    assert state.global_ is not None
    assert state.global_.router_id == "148.2.92.203"
    assert {a: (p.families, p.password) for a, p in state.peers.items()} == {
        "fd00::2": ((IPV6,), ""),
        "fd00::254": ((IPV6,), "s3cret"),
    }
    assert _statements(state, "export") == [
        ("podcidrdefinedsetv6iBGPpeerset", Action.ACCEPT),  # n3's IPv4 primary IP is in it
        ("podcidrdefinedsetv6iBGPpeersetv6", Action.ACCEPT),
        ("podcidrdefinedsetv6externalpeersetv6", Action.ACCEPT),
    ]
    assert state.paths == {"fd00:244:1::/64": PathSpec("fd00:244:1::/64", "fd00::1")}


async def test_a_second_sync_of_the_same_state_changes_nothing(gobgpd: Engines) -> None:
    """Computed specs are in the form gobgpd reports them in, so a resync is a no-op."""
    local, nodes, services = _dual_cluster()
    desired = compute(local, nodes, services, DUAL_ARGS)
    first = await gobgpd.apply(desired)
    requests, changes = len(gobgpd.fake.requests), len(gobgpd.real.changes)
    again = await gobgpd.apply(compute(local, nodes, services, DUAL_ARGS))
    assert gobgpd.fake.requests[requests:] == []
    assert gobgpd.real.changes[changes:] == []
    assert again == first

    rr_nodes = [
        make_node("s1", "10.0.0.1", annotations={"kube-router.io/rr.server": "7"}),
        make_node("c1", "10.0.0.11", annotations={"kube-router.io/rr.client": "7"}),
    ]
    await gobgpd.stop()
    await gobgpd.apply(compute(rr_nodes[0], rr_nodes, [], ()))
    requests, changes = len(gobgpd.fake.requests), len(gobgpd.real.changes)
    await gobgpd.apply(compute(rr_nodes[0], rr_nodes, [], ()))
    assert gobgpd.fake.requests[requests:] == []
    assert gobgpd.real.changes[changes:] == []  # the cluster ID is given as gobgpd reports it
