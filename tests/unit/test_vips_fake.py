"""The VIP manager over the strict fake namespace (tests/vm/test_vips.py holds it to the kernel)."""

from __future__ import annotations

import errno

import pytest

from kube_router.dataplane.ipvs import Family
from kube_router.dataplane.vips import (
    DUMMY_IF,
    IP6_RT_PRIO_USER,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_LOCAL,
    Addr,
    Op,
    Route,
    VipDelta,
    VipError,
    VipOpError,
    vip_addr,
    vip_route,
)
from kube_router.dataplane.vips_fake import FakeNetns, FakeVipLinks, KernelRefused

NODE4, NODE6 = "192.168.1.10", "fd00:1::10"
SRC: dict[Family, str] = {"ipv4": NODE4, "ipv6": NODE6}
A, B, C = "10.96.0.1", "10.96.0.2", "10.96.0.3"
A6, B6 = "fd00::a", "fd00::b"


def wanted(*vips: str) -> dict[Family, list[str]]:
    out: dict[Family, list[str]] = {"ipv4": [], "ipv6": []}
    for vip in vips:
        out["ipv6" if ":" in vip else "ipv4"].append(vip)
    return out


@pytest.fixture
def links() -> FakeVipLinks:
    netns = FakeNetns()
    netns.add_link("eth0")
    netns.add_address("eth0", NODE4, 24)
    netns.add_address("eth0", NODE6, 64)
    return FakeVipLinks(netns)


def dummy(links: FakeVipLinks) -> int:
    return links.netns.index_of(DUMMY_IF)


def vip_routes(links: FakeVipLinks, vip: str) -> list[Route]:
    return [r for r in links.netns.routes if r.dst == vip]


async def test_first_sync_creates_the_link_up_with_vips_and_sourced_routes(
    links: FakeVipLinks,
) -> None:
    delta = await links.sync(wanted(A, A6), SRC, full=True)
    assert delta == VipDelta(added=frozenset({A, A6}))
    index = dummy(links)
    assert links.netns.links[index].up
    state = await links.state()
    assert state is not None and state.addresses == {A, A6}
    assert vip_routes(links, A) == [vip_route(index, A, NODE4)]
    assert vip_routes(links, A6) == [vip_route(index, A6, NODE6)]  # the kernel's own is gone
    assert vip_routes(links, A6)[0].metric == IP6_RT_PRIO_USER
    assert vip_routes(links, A)[0].table == RT_TABLE_LOCAL


@pytest.mark.parametrize("full", [True, False])
async def test_stale_vips_go_with_their_routes(links: FakeVipLinks, full: bool) -> None:
    await links.sync(wanted(A, B, A6, B6), SRC, full=True)
    delta = await links.sync(wanted(A, C, A6), SRC, full=full)
    assert (delta.added, delta.removed) == ({C}, {B, B6})
    assert vip_routes(links, B) == [] and vip_routes(links, B6) == []
    state = await links.state()
    assert state is not None and state.addresses == {A, C, A6}


@pytest.mark.parametrize(
    ("outside", "vip"),
    [("addr", A), ("addr", A6), ("route", A), ("route", A6)],
)
async def test_a_full_sync_repairs_what_was_changed_outside(
    links: FakeVipLinks, outside: str, vip: str
) -> None:
    await links.sync(wanted(A, A6), SRC, full=True)
    before = await links.state()
    if outside == "addr":
        links.netns.del_address(DUMMY_IF, vip)
    else:
        (route,) = vip_routes(links, vip)
        links.netns.del_route(route)
    assert await links.sync(wanted(A, A6), SRC, full=False) == VipDelta()  # unseen
    delta = await links.sync(wanted(A, A6), SRC, full=True)
    assert delta.added | delta.repaired == {vip}
    assert await links.state() == before


async def test_an_address_deleted_under_its_surviving_route_comes_back_clean(
    links: FakeVipLinks,
) -> None:
    """IPv4: deleting one of several addresses leaves our route (the kernel deletes only its
    own); re-adding the address makes the kernel append its own again, which goes."""
    await links.sync(wanted(A, B), SRC, full=True)
    before = await links.state()
    links.netns.del_address(DUMMY_IF, A)
    assert [r.prefsrc for r in vip_routes(links, A)] == [NODE4]
    assert (await links.sync(wanted(A, B), SRC, full=True)).added == {A}
    assert await links.state() == before


async def test_the_last_ipv4_address_takes_every_ipv4_route_of_the_link(
    links: FakeVipLinks,
) -> None:
    await links.sync(wanted(A, A6), SRC, full=True)
    links.netns.del_address(DUMMY_IF, A)
    assert vip_routes(links, A) == [] and len(vip_routes(links, A6)) == 1


async def test_a_foreign_address_on_the_link_is_removed(links: FakeVipLinks) -> None:
    await links.sync(wanted(A), SRC, full=True)
    links.netns.add_address(DUMMY_IF, C)
    links.netns.add_address(DUMMY_IF, B6)
    delta = await links.sync(wanted(A), SRC, full=True)
    assert delta.removed == {C, B6}
    assert vip_routes(links, C) == [] and vip_routes(links, B6) == []


async def test_an_address_already_there_gets_its_route(links: FakeVipLinks) -> None:
    await links.sync(wanted(), SRC, full=True)
    links.netns.add_address(DUMMY_IF, A)
    links.netns.add_address(DUMMY_IF, A6)
    delta = await links.sync(wanted(A, A6), SRC, full=True)
    assert delta == VipDelta(repaired=frozenset({A, A6}))
    assert [r.prefsrc for r in vip_routes(links, A) + vip_routes(links, A6)] == [NODE4, NODE6]


async def test_incremental_sync_applies_only_the_difference(links: FakeVipLinks) -> None:
    vips = [f"10.96.1.{i}" for i in range(1, 101)]
    await links.sync({"ipv4": vips}, SRC, full=True)
    before = links.netns.ops_applied
    await links.sync({"ipv4": [*vips, C]}, SRC, full=False)
    assert links.netns.ops_applied - before == 2  # the address and its route


@pytest.mark.parametrize("full", [True, False])
async def test_a_new_node_ip_moves_every_route(links: FakeVipLinks, full: bool) -> None:
    links.netns.add_address("eth0", "192.168.1.11", 24)
    await links.sync(wanted(A, B, A6), SRC, full=True)
    delta = await links.sync(wanted(A, B, A6), {**SRC, "ipv4": "192.168.1.11"}, full=full)
    assert delta == VipDelta(repaired=frozenset({A, B}))
    assert [r.prefsrc for r in vip_routes(links, A)] == ["192.168.1.11"]


async def test_a_source_that_is_not_local_is_refused(links: FakeVipLinks) -> None:
    with pytest.raises(VipOpError) as caught:
        await links.sync(wanted(A), {"ipv4": "192.168.1.99"}, full=True)
    assert caught.value.errnos() == [errno.EINVAL]
    assert "replace-route" in str(caught.value)
    # Nothing is assumed after a failure: the next sync, even incremental, reads the kernel.
    delta = await links.sync(wanted(A), SRC, full=False)
    assert delta == VipDelta(repaired=frozenset({A}))


@pytest.mark.parametrize(
    ("vips", "src", "match"),
    [
        ({"ipv4": [A6]}, SRC, "listed under ipv4"),
        ({"ipv6": [A]}, SRC, "listed under ipv6"),
        ({"ipv6": [A6]}, {"ipv4": NODE4}, "no ipv6 node IP"),
        ({"ipv4": [A]}, {"ipv4": NODE6}, "given for ipv4"),
        ({"ipv4": ["10.96.0.300"]}, SRC, "not an IP address"),
    ],
)
async def test_bad_input_is_refused_before_any_change(
    links: FakeVipLinks, vips: dict[Family, list[str]], src: dict[Family, str], match: str
) -> None:
    with pytest.raises((VipError, ValueError), match=match):
        await links.sync(vips, src, full=True)
    assert await links.state() is None


async def test_a_vanished_link_sends_an_incremental_sync_to_a_full_one(
    links: FakeVipLinks,
) -> None:
    await links.sync(wanted(A), SRC, full=True)
    links.netns.del_link(dummy(links))
    delta = await links.sync(wanted(A, B), SRC, full=False)
    assert delta.added == {A, B}
    assert vip_routes(links, B) == [vip_route(dummy(links), B, NODE4)]


async def test_a_link_found_down_is_brought_up(links: FakeVipLinks) -> None:
    links.netns.add_link(DUMMY_IF, up=False)
    await links.sync(wanted(A6), SRC, full=True)
    assert links.netns.links[dummy(links)].up


async def test_delete_removes_the_link_and_all_it_held(links: FakeVipLinks) -> None:
    await links.sync(wanted(A, A6), SRC, full=True)
    await links.delete()
    assert await links.state() is None
    assert vip_routes(links, A) == [] and vip_routes(links, A6) == []
    await links.delete()  # nothing left: fine
    assert (await links.sync(wanted(A), SRC, full=False)).added == {A}


async def test_local_addresses_skip_dummy_kube_and_docker_links(links: FakeVipLinks) -> None:
    for name, address in (("docker0", "172.17.0.1"), ("kube-bridge", "10.244.0.1")):
        links.netns.add_link(name)
        links.netns.add_address(name, address, 24)
    links.netns.add_address("eth0", "fe80::1", 64)
    await links.sync(wanted(A, A6), SRC, full=True)
    assert await links.local_addresses() == {
        "ipv4": {"127.0.0.1", NODE4},
        "ipv6": {"::1", NODE6, "fe80::1"},
    }


# --- the fake namespace's own rules ---------------------------------------------------------


def _refusal(netns: FakeNetns, op: Op) -> int:
    with pytest.raises(KernelRefused) as caught:
        netns.apply(op)
    return caught.value.code


def test_the_fake_refuses_as_the_kernel_does() -> None:
    netns = FakeNetns()
    index = netns.add_link(DUMMY_IF)
    down = netns.add_link("down0", up=False)
    netns.add_address(DUMMY_IF, A)
    cases = [
        (Op("add-link", name=DUMMY_IF), errno.EEXIST),
        (Op("add-addr", addr=vip_addr(index, A)), errno.EEXIST),
        (Op("add-addr", addr=vip_addr(99, B)), errno.ENODEV),
        (Op("del-addr", addr=vip_addr(index, B)), errno.EADDRNOTAVAIL),
        (Op("del-route", route=vip_route(index, B, "127.0.0.1")), errno.ESRCH),
        (Op("replace-route", route=vip_route(99, A, "127.0.0.1")), errno.ENODEV),
        (Op("replace-route", route=vip_route(index, A, "10.0.0.9")), errno.EINVAL),
        (Op("replace-route", route=vip_route(down, A6, "::1")), errno.ENETDOWN),
        (Op("set-up", index=99), errno.ENODEV),
        (Op("del-link", index=99), errno.ENODEV),
    ]
    for op, code in cases:
        assert _refusal(netns, op) == code, op.describe()


def test_kernel_routes_of_addresses() -> None:
    """IPv4: a local route sourced from the address; IPv6: metric 0 without a source, which
    stays beside a user route at 1024 and is the one a metric-less delete picks."""
    netns = FakeNetns()
    index = netns.add_link(DUMMY_IF)
    netns.apply(Op("add-addr", addr=Addr(index, A, 32)))
    netns.apply(Op("add-addr", addr=Addr(index, A6, 128)))
    assert [r.prefsrc for r in netns.routes if r.dst == A] == [A]
    netns.apply(Op("replace-route", route=vip_route(index, A, A)))
    netns.apply(Op("replace-route", route=vip_route(index, A6, "::1")))
    v6 = sorted((r.metric, r.prefsrc) for r in netns.routes if r.dst == A6)
    assert v6 == [(0, ""), (IP6_RT_PRIO_USER, "::1")]
    netns.apply(Op("del-route", route=Route(A6, 128, index, scope=RT_SCOPE_UNIVERSE)))
    assert [(r.metric, r.prefsrc) for r in netns.routes if r.dst == A6] == v6[1:]
    netns.del_address(DUMMY_IF, A6)  # the user route stays; the IPv4 one goes with its address
    netns.del_address(DUMMY_IF, A)
    assert [r.dst for r in netns.routes if r.oif == index] == [A6]
