"""The route injector over the strict fake: upstream's decision table, withdrawals, peers,
coalescing, the route syncer's repairs, overlay and encap switches, the overlay set-up."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from kube_router.bgp.model import PeerEvent, RouteEvent, SessionState
from kube_router.controllers.routing.injector import (
    OVERLAY_FULL,
    InjectorSettings,
    NodeInfo,
    RouteInjector,
)
from kube_router.dataplane.routes import (
    OVERLAY_TABLE,
    Encap,
    Route,
    Rule,
    Tunnel,
    tunnel_name,
)
from kube_router.dataplane.routes_fake import FakeRouteKernel, FakeRoutes

NODE4, NODE6 = "192.168.1.10", "fd00:1::10"
NEAR4, FAR4 = "192.168.1.20", "192.168.2.20"  # on the node's subnet / beyond a router
NEAR6, FAR6 = "fd00:1::20", "fd00:2::20"
NODE = NodeInfo(
    {"ipv4": NODE4, "ipv6": NODE6},
    subnets=("192.168.1.0/24", "fd00:1::/64"),
    pod_cidrs=("10.244.1.0/24", "2001:db8:1::/64"),
)
SUBNET = InjectorSettings()
FULL = InjectorSettings(overlay_type=OVERLAY_FULL)
OFF = InjectorSettings(enable_overlay=False)
FOU = InjectorSettings(encap=Encap.FOU)
OVERRIDE = InjectorSettings(override_next_hop=True)
ESTABLISHED, IDLE = SessionState.ESTABLISHED, SessionState.IDLE


def announce(prefix: str, next_hop: str, neighbor: str = "") -> RouteEvent:
    return RouteEvent(prefix, next_hop, False, neighbor or next_hop)


def withdraw(prefix: str, next_hop: str, neighbor: str = "") -> RouteEvent:
    return RouteEvent(prefix, next_hop, True, neighbor or next_hop)


def make(settings: InjectorSettings = SUBNET, tmp: Path | None = None) -> RouteInjector:
    kernel = FakeRouteKernel()
    kernel.add_link("eth0")
    kernel.add_address("eth0", NODE4, 24)
    kernel.add_address("eth0", NODE6, 64)
    rt_tables = [tmp / "rt_tables"] if tmp else []
    return RouteInjector(FakeRoutes(kernel, rt_tables), settings, NODE)


def fake(injector: RouteInjector) -> FakeRoutes:
    assert isinstance(injector.port, FakeRoutes)
    return injector.port


def via(dst: str, gw: str) -> Route:
    return Route(dst, gateway=gw, dev="eth0")


def tun(dst: str, nh: str, src: str) -> Route:
    return Route(dst, dev=tunnel_name(nh), src=src)


def table77(nh: str) -> Route:
    bits = 128 if ":" in nh else 32
    return Route(f"{nh}/{bits}", dev=tunnel_name(nh), table=OVERLAY_TABLE)


P4, P6 = "10.244.2.0/24", "2001:db8:2::/64"
DECISIONS = [
    # (case, settings, event, kernel routes, tunnel (kind, encap) or None)
    ("same subnet", SUBNET, announce(P4, NEAR4), [via(P4, NEAR4)], None),
    ("other subnet", SUBNET, announce(P4, FAR4), [tun(P4, FAR4, NODE4), table77(FAR4)], "ipip"),
    ("full, near", FULL, announce(P4, NEAR4), [tun(P4, NEAR4, NODE4), table77(NEAR4)], "ipip"),
    ("off, same subnet", OFF, announce(P4, NEAR4), [via(P4, NEAR4)], None),
    ("off, other subnet", OFF, announce(P4, FAR4), [], None),
    ("override next hop", OVERRIDE, announce(P4, FAR4), [], None),
    ("ipv6 near", SUBNET, announce(P6, NEAR6), [via(P6, NEAR6)], None),
    ("ipv6 far", SUBNET, announce(P6, FAR6), [tun(P6, FAR6, NODE6), table77(FAR6)], "ip6tnl"),
    ("fou", FOU, announce(P4, FAR4), [tun(P4, FAR4, NODE4), table77(FAR4)], "ipip"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "event", "routes", "kind"),
    [case[1:] for case in DECISIONS],
    ids=[case[0] for case in DECISIONS],
)
async def test_decision_table(
    settings: InjectorSettings, event: RouteEvent, routes: list[Route], kind: str | None
) -> None:
    injector = make(settings)
    await injector.setup_overlay()  # FoU: modules and ports first

    result = await injector.handle([event])

    assert result.ok, result
    assert await fake(injector).routes() == sorted(routes)
    tunnels = await fake(injector).tunnels()
    if kind is None:
        assert tunnels == []
    else:
        (tunnel,) = tunnels
        port = settings.encap_port if settings.encap is Encap.FOU else 0
        local = NODE6 if kind == "ip6tnl" else NODE4
        expected = Tunnel(tunnel_name(event.next_hop), local, event.next_hop, settings.encap, port)
        assert (tunnel, tunnel.kind) == (expected, kind)


async def test_withdraw_deletes_the_route_and_an_unused_tunnel() -> None:
    injector = make()
    await injector.handle([announce(P4, FAR4), announce("10.244.3.0/24", NEAR4)])

    await injector.handle([withdraw(P4, FAR4), withdraw("10.244.3.0/24", NEAR4)])

    assert await fake(injector).routes() == []
    assert await fake(injector).tunnels() == []
    assert (injector.routes_added, injector.routes_removed, injector.routes_synced) == (2, 2, 0)


async def test_a_tunnel_outlives_its_routes_while_its_peer_is_established() -> None:
    injector = make()
    await injector.handle([PeerEvent(FAR4, ESTABLISHED), announce(P4, FAR4)])

    await injector.handle([withdraw(P4, FAR4)])
    kept = await fake(injector).tunnels()
    await injector.handle([PeerEvent(FAR4, IDLE)])

    assert [t.name for t in kept] == [tunnel_name(FAR4)]
    assert await fake(injector).tunnels() == []
    assert await fake(injector).routes() == []


async def test_a_peer_going_down_keeps_its_routes() -> None:
    """Graceful restart: routes go only when gobgpd withdraws them."""
    injector = make()
    await injector.handle([PeerEvent(FAR4, ESTABLISHED), announce(P4, FAR4)])

    await injector.handle([PeerEvent(FAR4, IDLE)])

    assert await fake(injector).routes() == sorted([tun(P4, FAR4, NODE4), table77(FAR4)])


async def test_a_tunnel_shared_by_two_prefixes_stays_until_both_go() -> None:
    injector = make()
    await injector.handle([announce(P4, FAR4), announce("10.244.3.0/24", FAR4)])

    await injector.handle([withdraw(P4, FAR4)])

    assert [t.remote for t in await fake(injector).tunnels()] == [FAR4]
    assert tun("10.244.3.0/24", FAR4, NODE4) in await fake(injector).routes()


async def test_a_burst_is_coalesced_into_one_batch_last_event_wins() -> None:
    injector = make()
    events: list[RouteEvent | PeerEvent] = []
    for i in range(200):
        prefix = f"10.{100 + i // 250}.{i % 250}.0/24"
        events += [announce(prefix, NEAR4), withdraw(prefix, NEAR4)]
        if i % 2:
            events.append(announce(prefix, "192.168.1.30"))

    await injector.handle(events)

    routes = await fake(injector).routes()
    assert fake(injector).batches == 1
    assert len(routes) == 100 and {r.gateway for r in routes} == {"192.168.1.30"}
    assert fake(injector).kernel.route_ops == 100  # withdrawn-before-written never reached it
    assert injector.events_received == 500


async def test_run_drains_the_queue() -> None:
    injector = make()
    queue: asyncio.Queue[RouteEvent | PeerEvent] = asyncio.Queue()
    for i in range(50):
        queue.put_nowait(announce(f"10.200.{i}.0/24", NEAR4))
    task = asyncio.create_task(injector.run(queue))
    try:
        for _ in range(100):
            if injector.routes_synced == 50:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()

    assert injector.routes_synced == 50
    assert fake(injector).batches == 1


async def test_the_syncer_repairs_and_removes_strangers() -> None:
    injector = make()
    seen: list[float] = []
    injector.on_sync_time = seen.append
    await injector.handle([announce(P4, NEAR4), announce("10.244.3.0/24", FAR4)])
    kernel = fake(injector).kernel
    del kernel.routes[(254, P4)]  # ip route del by hand
    kernel.delete_link(tunnel_name(FAR4))  # the tunnel too, and its routes with it
    kernel.replace_route(Route("10.99.0.0/24", gateway=NEAR4))  # a stale proto-17 route
    kernel.replace_route(Route("10.98.0.0/24", gateway=NEAR4, protocol=4))  # not ours
    kernel.add_tunnel(Tunnel("tun-stale", NODE4, "192.168.9.9"))

    result = await injector.sync_routes()

    assert result.ok, result
    assert await fake(injector).routes() == sorted(
        [via(P4, NEAR4), tun("10.244.3.0/24", FAR4, NODE4), table77(FAR4)]
    )
    assert (254, "10.98.0.0/24") in kernel.routes
    assert [t.name for t in await fake(injector).tunnels()] == [tunnel_name(FAR4)]
    assert result.tunnels_deleted == ["tun-stale"] and len(seen) == 1


@pytest.mark.parametrize(("before", "after"), [(SUBNET, FOU), (FOU, SUBNET)])
async def test_an_encap_switch_recreates_the_tunnels(
    before: InjectorSettings, after: InjectorSettings
) -> None:
    injector = make(before)
    await injector.setup_overlay()
    await injector.handle([announce(P4, FAR4), announce(P6, FAR6)])

    result = await injector.update(after)

    assert result.ok, result
    tunnels = await fake(injector).tunnels()
    assert {t.encap for t in tunnels} == {after.encap}
    assert len(tunnels) == 2
    assert len(await fake(injector).routes()) == 4  # both routes and both table-77 routes back
    fou_ports = await fake(injector).fou_ports()
    assert fou_ports == ({(5555, "ipv4"), (5555, "ipv6")} if after.encap is Encap.FOU else set())


async def test_overlay_off_turns_tunnels_into_routes_via_or_nothing() -> None:
    injector = make(FULL)
    await injector.handle(
        [PeerEvent(NEAR4, ESTABLISHED), announce(P4, NEAR4), announce("10.244.3.0/24", FAR4)]
    )

    await injector.update(OFF)

    assert await fake(injector).routes() == [via(P4, NEAR4)]
    assert await fake(injector).tunnels() == []


async def test_remove_peer_takes_its_routes_and_tunnel() -> None:
    injector = make()
    await injector.handle(
        [PeerEvent(FAR4, ESTABLISHED), announce(P4, FAR4), announce("10.244.3.0/24", NEAR4)]
    )

    await injector.remove_peer(FAR4)

    assert await fake(injector).routes() == [via("10.244.3.0/24", NEAR4)]
    assert await fake(injector).tunnels() == []


async def test_a_refused_route_is_reported_and_retried_by_the_syncer() -> None:
    injector = make()
    node = replace(NODE, subnets=(*NODE.subnets, "10.7.0.0/24"))  # a subnet eth0 lacks
    await injector.update(OFF, node)

    result = await injector.handle([announce(P4, "10.7.0.1")])
    kernel = fake(injector).kernel
    kernel.add_address("eth0", "10.7.0.2", 24)
    repaired = await injector.sync_routes()

    assert [f.errno for f in result.failures] == [101]
    assert repaired.ok and await fake(injector).routes() == [via(P4, "10.7.0.1")]


async def test_setup_overlay_rules_table_name_and_fou(tmp_path: Path) -> None:
    (tmp_path / "rt_tables").write_text("255\tlocal\n")
    injector = make(FOU, tmp_path)

    await injector.setup_overlay()
    await injector.setup_overlay()  # idempotent
    on_rules = await fake(injector).rules()
    await injector.update(OFF)

    assert sorted(on_rules) == [Rule("10.244.1.0/24"), Rule("2001:db8:1::/64")]
    assert (tmp_path / "rt_tables").read_text() == "255\tlocal\n77 kube-router\n"
    assert fake(injector).kernel.modules == {"fou", "fou6"}
    assert await fake(injector).rules() == []
    assert await fake(injector).fou_ports() == set()


async def test_setup_overlay_without_rt_tables_still_adds_rules() -> None:
    injector = make()  # no rt_tables file anywhere: logged, not fatal

    await injector.setup_overlay()

    assert len(await fake(injector).rules()) == 2


@pytest.mark.parametrize(
    "event",
    [
        announce("10.244.2.0/33", NEAR4),
        announce(P4, "not-an-ip"),
        announce(P4, NEAR6),  # another family
        announce(P4, NODE4),  # ourselves
    ],
)
async def test_bad_events_inject_nothing(event: RouteEvent) -> None:
    injector = make()

    result = await injector.handle([event])

    assert result.ok and await fake(injector).routes() == []
