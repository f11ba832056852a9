"""The routes port against the kernel (in a namespace of the test's own): batches of thousands of
routes via a gateway, the proto-17 dump, replace and delete, rules; and the strict fake held to
the kernel by running the same steps on both. (Tunnels need ipip/fou, which this host kernel
lacks: tests/vm/test_overlay_tunnels.py covers them.)
"""

from __future__ import annotations

import errno
import ipaddress
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from kube_router.dataplane.routes import OVERLAY_TABLE, Route, RoutePort, Rule
from kube_router.dataplane.routes_fake import FakeRouteKernel, FakeRoutes, describe_routes
from kube_router.dataplane.routes_netlink import NetlinkRoutes

pytestmark = pytest.mark.privileged

NODE4, NODE6 = "192.168.1.10", "fd00:1::10"
GW4, GW6 = "192.168.1.20", "fd00:1::20"
BIG = 10_000


def ip(netns: str, *args: str) -> str:
    done = subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True, text=True)
    return done.stdout


def wire(netns: str) -> None:
    """eth0 (the node's link, both families) and eth1 (a second link), veths to nowhere."""
    for name, peer in (("eth0", "eth0p"), ("eth1", "eth1p")):
        ip(netns, "link", "add", name, "type", "veth", "peer", "name", peer)
        ip(netns, "link", "set", name, "up")
        ip(netns, "link", "set", peer, "up")
    ip(netns, "addr", "add", f"{NODE4}/24", "dev", "eth0")
    ip(netns, "addr", "add", f"{NODE6}/64", "dev", "eth0", "nodad")
    ip(netns, "addr", "add", "10.0.5.1/24", "dev", "eth1")


def fake() -> FakeRoutes:
    kernel = FakeRouteKernel()
    for name in ("eth0", "eth0p", "eth1", "eth1p"):
        kernel.add_link(name)
    kernel.add_address("eth0", NODE4, 24)
    kernel.add_address("eth0", NODE6, 64)
    kernel.add_address("eth1", "10.0.5.1", 24)
    return FakeRoutes(kernel)


@pytest.fixture
def real(netns: str) -> Iterator[NetlinkRoutes]:
    wire(netns)
    port = NetlinkRoutes(netns)
    yield port
    port.close()


# --- agreement ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Apply:
    replace: tuple[Route, ...] = ()
    delete: tuple[Route, ...] = ()


@dataclass(frozen=True)
class DelLink:
    """``ip link del`` from outside."""

    name: str


Step = Apply | DelLink

R4 = Route("10.244.2.0/24", gateway=GW4)
R6 = Route("2001:db8:2::/64", gateway=GW6)
SCENARIOS: dict[str, list[Step]] = {
    "via gateways on the node subnet": [Apply((R4, R6))],
    "gateway off every subnet": [
        Apply((Route("10.244.3.0/24", gateway="172.16.0.1"),)),
        Apply((Route("2001:db8:3::/64", gateway="fd00:9::1"),)),
    ],
    "device routes with a source": [
        Apply(
            (
                Route("10.244.4.0/24", dev="eth1", src=NODE4),
                Route("2001:db8:4::/64", dev="eth1", src=NODE6),
                Route("192.168.7.7/32", dev="eth1", table=OVERLAY_TABLE),
            )
        )
    ],
    "refusals: no device, foreign source, family mix": [
        Apply((Route("10.244.5.0/24", dev="nope"),)),
        Apply((Route("10.244.6.0/24", dev="eth1", src="10.9.9.9"),)),
        Apply((Route("10.244.7.0/24", gateway=GW6),)),
    ],
    "replace overwrites, delete takes ours": [
        Apply((R4,)),
        Apply((Route(R4.dst, dev="eth1", src=NODE4),)),
        Apply((), (R4, Route("10.244.99.0/24"))),
    ],
    "deleting a link takes its routes": [
        Apply((Route("10.244.8.0/24", gateway="10.0.5.9"), R4)),
        DelLink("eth1"),
    ],
}


async def run_steps(port: RoutePort, steps: list[Step], netns: str | None) -> list[object]:
    seen: list[object] = []
    for step in steps:
        if isinstance(step, Apply):
            failures = await port.apply_routes(step.replace, step.delete)
            seen.append(sorted((f.op, f.route.dst, f.errno) for f in failures))
        elif netns is not None:
            ip(netns, "link", "del", step.name)
        else:
            assert isinstance(port, FakeRoutes)
            port.kernel.delete_link(step.name)
        seen.append(describe_routes(await port.routes()))
    return seen


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_fake_and_kernel_agree(name: str, real: NetlinkRoutes, netns: str) -> None:
    steps = SCENARIOS[name]

    kernel_seen = await run_steps(real, steps, netns)
    fake_seen = await run_steps(fake(), steps, None)

    assert fake_seen == kernel_seen


async def test_refusals_carry_the_kernels_errnos(real: NetlinkRoutes) -> None:
    failures = await real.apply_routes(
        [
            Route("10.244.3.0/24", gateway="172.16.0.1"),
            Route("2001:db8:3::/64", gateway="fd00:9::1"),
            Route("10.244.6.0/24", dev="eth1", src="10.9.9.9"),
        ]
    )

    assert sorted(f.errno for f in failures) == sorted(
        [errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL]
    )


async def test_delete_leaves_another_protocols_route(real: NetlinkRoutes, netns: str) -> None:
    ip(netns, "route", "add", "10.244.9.0/24", "via", GW4)  # proto boot, not ours

    failures = await real.apply_routes([], [Route("10.244.9.0/24")])

    assert failures == []
    assert "10.244.9.0/24 via" in ip(netns, "route", "show")
    assert await real.routes() == []


async def test_dump_reads_back_what_was_written(real: NetlinkRoutes) -> None:
    wanted = [R4, R6, Route("10.244.4.0/24", dev="eth1", src=NODE4)]
    await real.apply_routes(wanted)

    got = sorted(await real.routes())

    assert got == sorted(
        [
            Route(R4.dst, gateway=GW4, dev="eth0"),
            Route(R6.dst, gateway=GW6, dev="eth0"),
            Route("10.244.4.0/24", dev="eth1", src=NODE4),
        ]
    )


def big_routes(count: int) -> list[Route]:
    base = int(ipaddress.IPv4Address("10.100.0.0"))
    return [
        Route(f"{ipaddress.IPv4Address(base + (i << 8))}/24", gateway=GW4) for i in range(count)
    ]


async def test_ten_thousand_routes_in_batches(real: NetlinkRoutes, netns: str) -> None:
    routes = big_routes(BIG)

    started = time.monotonic()
    failures = await real.apply_routes(routes)
    added = time.monotonic() - started
    dumped = await real.routes()
    started = time.monotonic()
    again = await real.apply_routes(routes)  # the syncer's replace of every route
    replaced = time.monotonic() - started
    started = time.monotonic()
    gone = await real.apply_routes([], routes)
    deleted = time.monotonic() - started

    assert failures == again == gone == []
    assert len(dumped) == BIG
    assert ip(netns, "route", "show", "proto", "17") == ""
    print(f"\n{BIG} routes: add {added:.2f}s, replace {replaced:.2f}s, delete {deleted:.2f}s")


async def test_rules_add_list_delete(real: NetlinkRoutes) -> None:
    v4, v6 = Rule("10.244.1.0/24"), Rule("2001:db8:1::/64")

    await real.add_rule(v4)
    await real.add_rule(v6)
    listed = await real.rules()
    await real.delete_rule(v4)
    await real.delete_rule(v6)
    await real.delete_rule(v6)  # gone already: fine

    assert v4 in listed and v6 in listed
    assert [r for r in await real.rules() if r.table == OVERLAY_TABLE] == []


async def test_a_rule_added_twice_is_there_twice(real: NetlinkRoutes) -> None:
    """What the kernel does (each gets a new priority), so the injector lists before adding."""
    rule = Rule("10.244.1.0/24")
    fake_port = fake()

    for port in (real, fake_port):
        await port.add_rule(rule)
        await port.add_rule(rule)

    assert (await real.rules()).count(rule) == (await fake_port.rules()).count(rule) == 2
