"""The strict routes fake: the kernel's refusals and rules (the privileged and VM tiers hold it
to the kernel), tunnel names, rt_tables."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from kube_router.dataplane.routes import (
    OVERLAY_TABLE,
    Encap,
    Route,
    RtTablesError,
    Rule,
    Tunnel,
    TunnelError,
    ensure_rt_tables_line,
    tunnel_name,
)
from kube_router.dataplane.routes_fake import FakeRouteKernel, FakeRoutes

NODE4, NODE6 = "192.168.1.10", "fd00:1::10"


@pytest.fixture
def port() -> FakeRoutes:
    kernel = FakeRouteKernel()
    kernel.add_link("eth0")
    kernel.add_address("eth0", NODE4, 24)
    kernel.add_address("eth0", NODE6, 64)
    kernel.add_link("down", up=False)
    return FakeRoutes(kernel)


@pytest.mark.parametrize(
    ("route", "code"),
    [
        (Route("10.244.2.0/24", gateway="192.168.1.20"), 0),
        (Route("2001:db8::/64", gateway="fd00:1::20"), 0),
        (Route("10.244.2.0/24", gateway="192.168.2.20"), errno.ENETUNREACH),
        (Route("2001:db8::/64", gateway="fd00:2::20"), errno.EHOSTUNREACH),
        (Route("10.244.2.0/24", gateway="fd00:1::20"), errno.ENETUNREACH),
        (Route("10.244.2.0/24", dev="eth0", src=NODE4), 0),
        (Route("10.244.2.0/24", dev="eth0", src="10.1.1.1"), errno.EINVAL),
        (Route("10.244.2.0/24", dev="nope"), errno.ENODEV),
        (Route("10.244.2.0/24", dev="down"), errno.ENETDOWN),
        (Route("10.244.2.0/24"), errno.EINVAL),
    ],
)
async def test_replace_refuses_as_the_kernel(port: FakeRoutes, route: Route, code: int) -> None:
    failures = await port.apply_routes([route])

    assert [f.errno for f in failures] == ([code] if code else [])


async def test_a_route_via_a_gateway_takes_the_gateways_link(port: FakeRoutes) -> None:
    await port.apply_routes([Route("10.244.2.0/24", gateway="192.168.1.20")])

    assert await port.routes() == [Route("10.244.2.0/24", gateway="192.168.1.20", dev="eth0")]


async def test_a_device_route_makes_its_subnet_a_gateways_home(port: FakeRoutes) -> None:
    """Our own device routes count as connected, as the kernel's lookup finds them."""
    failures = await port.apply_routes(
        [Route("10.50.0.0/24", dev="eth0"), Route("10.244.9.0/24", gateway="10.50.0.7")]
    )

    assert failures == []


async def test_delete_matches_protocol_and_a_missing_route_is_no_failure(port: FakeRoutes) -> None:
    port.kernel.replace_route(Route("10.244.9.0/24", gateway="192.168.1.1", protocol=3))

    failures = await port.apply_routes([], [Route("10.244.9.0/24"), Route("10.244.8.0/24")])

    assert failures == []
    assert (OVERLAY_TABLE, "10.244.9.0/24") not in port.kernel.routes
    assert port.kernel.routes[(254, "10.244.9.0/24")].protocol == 3


async def test_deleting_a_link_takes_its_routes(port: FakeRoutes) -> None:
    await port.apply_routes([Route("10.244.2.0/24", gateway="192.168.1.20")])

    port.kernel.delete_link("eth0")

    assert await port.routes() == []


@pytest.mark.parametrize(
    ("second", "code"),
    [
        (Tunnel("tun-a", NODE4, "10.0.0.2"), errno.EEXIST),  # the name
        (Tunnel("tun-b", NODE4, "10.0.0.2"), errno.EEXIST),  # the same ends
        (Tunnel("tun-b", NODE4, "10.0.0.3"), 0),
        (Tunnel("tun-b", NODE4, "10.0.0.3", Encap.FOU, 5555), errno.EINVAL),  # no fou module
    ],
)
async def test_tunnel_clashes(port: FakeRoutes, second: Tunnel, code: int) -> None:
    await port.add_tunnel(Tunnel("tun-a", NODE4, "10.0.0.2"))

    if code:
        with pytest.raises(TunnelError) as caught:
            await port.add_tunnel(second)
        assert caught.value.errno == code
    else:
        await port.add_tunnel(second)
        assert second in await port.tunnels()


async def test_fou_needs_its_modules(port: FakeRoutes) -> None:
    with pytest.raises(TunnelError):
        await port.add_fou_port(5555, "ipv4")
    await port.load_modules(["fou", "fou6"])

    await port.add_fou_port(5555, "ipv4")
    await port.add_fou_port(5555, "ipv6")
    await port.add_tunnel(Tunnel("tun-6", NODE6, "fd00:2::1", Encap.FOU, 5555))

    assert await port.fou_ports() == {(5555, "ipv4"), (5555, "ipv6")}
    with pytest.raises(TunnelError):
        await port.add_fou_port(5555, "ipv4")


async def test_deleting_a_tunnel_takes_its_routes_in_every_table(port: FakeRoutes) -> None:
    await port.add_tunnel(Tunnel("tun-a", NODE4, "10.0.0.2"))
    await port.apply_routes(
        [
            Route("10.244.2.0/24", dev="tun-a", src=NODE4),
            Route("10.0.0.2/32", dev="tun-a", table=OVERLAY_TABLE),
        ]
    )

    await port.delete_tunnel("tun-a")
    await port.delete_tunnel("tun-a")  # absent: fine

    assert await port.routes() == []


async def test_rules_add_twice_and_delete(port: FakeRoutes) -> None:
    rule = Rule("10.244.1.0/24")
    await port.add_rule(rule)
    await port.add_rule(rule)
    await port.delete_rule(rule)

    assert await port.rules() == [rule]


@pytest.mark.parametrize(
    ("ip", "name"),
    [  # upstream's own test vectors (pkg/tunnels/linux_tunnels_test.go)
        ("10.0.0.1", "tun-e443169117a"),
        ("100.200.300.400", "tun-9033d7906c7"),
        ("2001:db8:42:2::/64", "tun-ba56986ef05"),
    ],
)
def test_tunnel_name_as_upstream(ip: str, name: str) -> None:
    assert tunnel_name(ip) == name


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("255\tlocal\n254\tmain\n", "255\tlocal\n254\tmain\n77 kube-router\n"),
        ("255 local", "255 local\n77 kube-router\n"),
        ("77 kube-router\n", "77 kube-router\n"),
        ("#77 kube-router\n", "#77 kube-router\n77 kube-router\n"),
        ("", "77 kube-router\n"),
    ],
)
def test_rt_tables_line(tmp_path: Path, before: str, after: str) -> None:
    first, second = tmp_path / "missing", tmp_path / "rt_tables"
    second.write_text(before)

    assert ensure_rt_tables_line(77, "kube-router", [first, second]) == second
    ensure_rt_tables_line(77, "kube-router", [first, second])

    assert second.read_text() == after


def test_rt_tables_nowhere(tmp_path: Path) -> None:
    with pytest.raises(RtTablesError, match="no rt_tables"):
        ensure_rt_tables_line(77, "kube-router", [tmp_path / "a"])
