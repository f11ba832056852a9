"""The routing controller's run() over fakes: learned routes from FakeEngine's streams into
FakeRoutes, a deleted Node's routes removed, the route syncer putting back a deleted route, a
gobgpd restart pushing everything again, the metrics in a scrape, the EC2 source/destination
check, and the one BFD warning. See routing_controller_rig.py for the rig.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from routing_controller_rig import (
    LOCAL,
    NODE_IP,
    POD_CIDR,
    Build,
    Rig,
    node_body,
    rigs,
)

from kube_router.bgp.canon import BgpState
from kube_router.bgp.model import PeerEvent, RouteEvent, SessionState
from kube_router.dataplane.routes import tunnel_name
from kube_router.k8s.client import KubeClient
from kube_router_lab.apiserver import LabServer

N2_IP, N2_CIDR = "192.168.50.2", "10.244.2.0/24"
FAR_IP, FAR_CIDR = "192.168.60.4", "10.244.4.0/24"  # beyond a router: through a tunnel
INJECTED_SYNC_S = 60.0
WATCH_RETRY_S = 1.0
N2_ROUTE = f"{N2_CIDR} via {N2_IP} dev eth0 table 254 proto 17"
FAR_TUNNEL = tunnel_name(FAR_IP)
FAR_ROUTES = {
    f"{FAR_CIDR} dev {FAR_TUNNEL} src {NODE_IP} table 254 proto 17",
    f"{FAR_IP}/32 dev {FAR_TUNNEL} table 77 proto 17",
}


@pytest.fixture
async def make(lab: LabServer, kube: KubeClient, tmp_path: Path) -> AsyncIterator[Build]:
    async with rigs(lab, kube, tmp_path) as factory:
        yield factory


def announce(prefix: str, node_ip: str, withdraw: bool = False) -> RouteEvent:
    return RouteEvent(prefix, node_ip, withdraw, node_ip)


async def running(make: Build, *argv: str) -> Rig:
    """Three nodes, the controller's run() as a task, its first (full) sync done."""
    rig = await make(
        *argv,
        others=[node_body("n2", N2_IP, N2_CIDR), node_body("n4", FAR_IP, FAR_CIDR)],
        start=False,
    )
    rig.run()
    await rig.until("the first sync", lambda: rig.ctrl.runner.stats.full_syncs >= 1)
    return rig


async def learn_both(rig: Rig) -> None:
    rig.engine.inject_peer(PeerEvent(N2_IP, SessionState.ESTABLISHED))
    rig.engine.inject_peer(PeerEvent(FAR_IP, SessionState.ESTABLISHED))
    rig.engine.inject_route(announce(N2_CIDR, N2_IP))
    rig.engine.inject_route(announce(FAR_CIDR, FAR_IP))
    await rig.until("learned routes", lambda: rig.routes() == {N2_ROUTE, *FAR_ROUTES})


async def test_learned_routes_reach_the_kernel_and_go_with_their_withdrawal(make: Build) -> None:
    rig = await running(make)
    await learn_both(rig)
    assert [t.remote for t in rig.kernel.tunnels()] == [FAR_IP]
    rig.engine.inject_route(announce(N2_CIDR, N2_IP, withdraw=True))
    await rig.until("the withdrawal", lambda: rig.routes() == FAR_ROUTES)


async def test_a_deleted_nodes_routes_are_removed(make: Build) -> None:
    rig = await running(make)
    await learn_both(rig)
    await rig.delete_node("n4")  # its peer has not withdrawn anything yet
    await rig.until("n4's routes gone", lambda: rig.routes() == {N2_ROUTE})
    assert set((await rig.state()).peers) == {N2_IP}


async def test_the_route_syncer_puts_back_a_deleted_route(make: Build) -> None:
    rig = await running(make)
    await learn_both(rig)
    del rig.kernel.routes[(254, N2_CIDR)]  # someone ran `ip route del`
    await rig.clock.advance(INJECTED_SYNC_S - 1)
    assert N2_ROUTE not in rig.routes()
    await rig.clock.advance(1)
    await rig.until("the route back", lambda: rig.routes() == {N2_ROUTE, *FAR_ROUTES})


def comparable(state: BgpState) -> tuple[object, ...]:
    """gobgpd's state without the policies' version numbers."""
    export = state.export.policy if state.export else None
    import_ = state.import_.policy if state.import_ else None
    return state.global_, state.peers, state.paths, state.defined_sets, export, import_


async def test_a_restarted_gobgpd_gets_everything_again(make: Build) -> None:
    rig = await running(make, "--advertise-cluster-ip")
    rig.lab.store.create(
        "services",
        {
            "metadata": {"name": "web", "namespace": "x"},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"]},
        },
    )
    await rig.until("the VIP", lambda: "10.96.0.10/32" in rig.engine.paths)
    before = await rig.state()
    assert before.peers and before.export is not None
    await learn_both(rig)
    syncs = rig.ctrl.runner.stats.full_syncs
    rig.engine.go_away()
    rig.engine.come_back()  # an empty gobgpd
    await rig.ctrl._gobgpd_restarted()  # what the daemon's supervisor calls
    await rig.until("a full sync", lambda: rig.ctrl.runner.stats.full_syncs > syncs)
    assert comparable(await rig.state()) == comparable(before)
    # The watches come back too: a route learned after the restart is injected.
    await rig.clock.advance(WATCH_RETRY_S)
    rig.engine.inject_route(announce(N2_CIDR, N2_IP, withdraw=True))
    await rig.until("the withdrawal after the restart", lambda: rig.routes() == FAR_ROUTES)


async def test_metrics_appear_in_a_scrape(make: Build) -> None:
    rig = await running(make)
    await learn_both(rig)
    rig.ctrl.runner.poke()
    syncs = rig.ctrl.runner.stats.syncs
    await rig.until("a sync", lambda: rig.ctrl.runner.stats.syncs > syncs)
    text = await rig.scrape()
    lines = set(text.splitlines())
    for address in (N2_IP, FAR_IP):
        assert (
            f'kube_router_bgp_peer_info{{address="{address}",asn="64512",state="established",'
            f'type="internal"}} 1.0'
        ) in lines
    assert "kube_router_host_routes_synced 2.0" in lines
    assert "kube_router_controller_bgp_advertisements_received 2" in lines
    assert 'kube_router_controller_bgp_advertisements_sent{type="pod-route"} 2' in lines
    assert "kube_router_host_routes_added 2" in lines
    assert "kube_router_controller_routes_sync_time_count" in text


async def test_learned_route_counters_do_not_wait_for_the_next_sync(make: Build) -> None:
    """Upstream counts a route when it is injected, not minutes later at the next sync."""
    rig = await running(make)
    await learn_both(rig)
    lines = set((await rig.scrape()).splitlines())
    assert "kube_router_controller_bgp_advertisements_received 2" in lines
    assert "kube_router_host_routes_added 2" in lines
    assert "kube_router_host_routes_synced 2.0" in lines
    rig.engine.inject_route(announce(N2_CIDR, N2_IP, withdraw=True))
    await rig.until("the withdrawal", lambda: rig.routes() == FAR_ROUTES)
    lines = set((await rig.scrape()).splitlines())
    assert "kube_router_host_routes_removed 1" in lines
    assert "kube_router_host_routes_synced 1.0" in lines


async def test_the_source_dest_check_is_disabled_on_aws_nodes(make: Build) -> None:
    local = node_body(LOCAL, NODE_IP, POD_CIDR, provider="aws:///eu-west-1a/i-123")
    rig = await make("--disable-source-dest-check", local=local)
    await rig.until("the EC2 call", lambda: rig.ec2.calls == ["i-123"])
    await rig.add_node(node_body("n2", N2_IP, N2_CIDR, provider="aws:///eu-west-1b/i-456"))
    await rig.ctrl.sync(full=False)
    await rig.until("the new node's EC2 call", lambda: rig.ec2.calls == ["i-123", "i-456"])


async def test_no_ec2_calls_without_the_flag(make: Build) -> None:
    local = node_body(LOCAL, NODE_IP, POD_CIDR, provider="aws:///eu-west-1a/i-123")
    rig = await make("--disable-source-dest-check=false", local=local)  # the default is true
    await rig.ctrl.sync(full=True)
    assert rig.ctrl.aws_task is None and rig.ec2.calls == []


BFD_PEERS = "- remoteip: 192.168.50.100\n  remoteasn: 65000\n  bfd:\n    enabled: true\n"


@pytest.mark.parametrize(
    ("argv", "annotations"),
    [
        (("--enable-bfd",), {}),
        ((), {"kube-router.io/peers": BFD_PEERS}),
        (("--enable-bfd",), {"kube-router.io/peers": BFD_PEERS}),
    ],
    ids=["flag", "annotation", "both"],
)
async def test_bfd_is_warned_about_once(
    make: Build,
    caplog: pytest.LogCaptureFixture,
    argv: tuple[str, ...],
    annotations: dict[str, str],
) -> None:
    caplog.set_level(logging.WARNING)
    rig = await make(*argv, local=node_body(LOCAL, NODE_IP, POD_CIDR, annotations))
    await rig.ctrl.sync(full=True)
    await rig.ctrl.sync(full=False)
    warnings = [r.getMessage() for r in caplog.records if "has no BFD" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert all(r.levelno == logging.WARNING for r in caplog.records if "BFD" in r.getMessage())
    if annotations:
        assert "192.168.50.100" in (await rig.state()).peers  # the peer is still configured
