"""Graceful termination: drained real servers deleted when idle or when their period passed."""

from __future__ import annotations

import dataclasses

import pytest

from kube_router.controllers.proxy import graceful
from kube_router.controllers.proxy.compile import VirtualService
from kube_router.controllers.proxy.graceful import GracefulQueue, grace_period
from kube_router.controllers.proxy.plan import plan_ipvs
from kube_router.controllers.sync import FakeClock
from kube_router.dataplane import ipvs
from kube_router.dataplane.ipvs import Dest, Service, ServiceKey, Transaction
from kube_router.dataplane.ipvs_fake import FakeIPVS
from kube_router.k8s.models import ObjectMeta, Pod, PodIP, PodSpec, PodStatus

KEY = ServiceKey.of("10.96.0.10", "tcp", 80)
OTHER = ServiceKey.of("10.96.0.11", "udp", 53)
EP = Dest("10.244.1.5", 8080, weight=0)
EP2 = Dest("10.244.1.6", 8080, weight=0)
PERIOD = 30.0


async def kernel(*dests: Dest, key: ServiceKey = KEY) -> FakeIPVS:
    fake = FakeIPVS()
    tx = Transaction().add_service(Service(key))
    for d in dests:
        tx.add_dest(key, d)
    await fake.apply(tx)
    return fake


def set_conns(
    fake: FakeIPVS, dest: Dest, active: int, inactive: int, key: ServiceKey = KEY
) -> None:
    state = fake.services[key].dests[dest.key]
    fake.services[key].dests[dest.key] = dataclasses.replace(
        state, active_conns=active, inactive_conns=inactive
    )


def deleted(tx: Transaction) -> list[tuple[ServiceKey, str, int]]:
    out = []
    for op in tx.ops:
        assert op.kind == "del-dest" and op.dest is not None
        out.append((op.service.key, op.dest.address, op.dest.port))
    return out


@pytest.mark.parametrize(
    ("active", "inactive", "elapsed", "gone"),
    [
        (0, 0, 0.0, True),  # idle: no need to wait
        (1, 0, 0.0, False),
        (0, 1, 0.0, False),  # inactive (TIME_WAIT...) connections count too
        (3, 2, PERIOD - 1, False),
        (3, 2, PERIOD, False),  # upstream deletes once the period is strictly exceeded
        (3, 2, PERIOD + 0.5, True),
        (0, 0, PERIOD + 100, True),
    ],
)
async def test_deleted_when_idle_or_expired(
    active: int, inactive: int, elapsed: float, gone: bool
) -> None:
    fake = await kernel(EP, EP2)
    set_conns(fake, EP, active, inactive)
    set_conns(fake, EP2, 1, 0)  # a neighbour that never qualifies before the deadline
    clock = FakeClock()
    q = GracefulQueue(clock, PERIOD)
    q.add(KEY, EP)
    q.add(KEY, EP2, PERIOD * 10)
    await clock.advance(elapsed)
    tx = q.due(await fake.dump())
    assert deleted(tx) == ([(KEY, EP.address, EP.port)] if gone else [])
    assert ((KEY, EP) in q) is not gone
    assert (KEY, EP2) in q
    await fake.apply(tx)
    assert (EP.key in fake.services[KEY].dests) is not gone


async def test_a_duplicate_keeps_the_first_deadline() -> None:
    fake = await kernel(EP)
    set_conns(fake, EP, 1, 0)
    clock = FakeClock()
    q = GracefulQueue(clock, PERIOD)
    assert q.add(KEY, EP)
    await clock.advance(PERIOD / 2)
    assert not q.add(KEY, EP, PERIOD * 10)  # a full sync reports the drained server again
    assert len(q) == 1
    await clock.advance(PERIOD / 2 + 1)
    assert deleted(q.due(await fake.dump())) == [(KEY, EP.address, EP.port)]
    assert len(q) == 0


@pytest.mark.parametrize(("period", "expected"), [(None, PERIOD), (5.0, 5.0), (0.0, 0.0)])
async def test_period_defaults_to_the_flag(period: float | None, expected: float) -> None:
    clock = FakeClock()
    q = GracefulQueue(clock, PERIOD)
    q.add(KEY, EP, period)
    (item,) = list(q)
    assert (item.period, item.deadline) == (expected, clock.now + expected)


async def test_a_returning_endpoint_is_discarded() -> None:
    fake = await kernel(EP)
    set_conns(fake, EP, 0, 0)
    q = GracefulQueue(FakeClock(), PERIOD)
    q.add(KEY, EP)
    q.discard(KEY, Dest(EP.address, EP.port))  # matched by address and port, not weight
    q.discard(OTHER, EP)  # unknown: nothing happens
    assert len(q) == 0
    assert deleted(q.due(await fake.dump())) == []


@pytest.mark.parametrize(
    "change",
    ["service-gone", "server-gone", "weight-back"],
)
async def test_entries_that_need_nothing_are_dropped(change: str) -> None:
    fake = await kernel(EP)
    set_conns(fake, EP, 0, 0)
    if change == "service-gone":
        await fake.apply(Transaction().del_service(KEY))
    elif change == "server-gone":
        await fake.apply(Transaction().del_dest(KEY, *EP.key))
    else:  # the endpoint came back and a sync restored its weight
        await fake.apply(Transaction().edit_dest(KEY, dataclasses.replace(EP, weight=1)))
    clock = FakeClock()
    q = GracefulQueue(clock, PERIOD)
    q.add(KEY, EP)
    await clock.advance(PERIOD * 2)
    assert deleted(q.due(await fake.dump())) == []
    assert len(q) == 0


async def test_same_server_on_two_services_is_two_entries() -> None:
    fake = await kernel(EP)
    await fake.apply(Transaction().add_service(Service(OTHER)).add_dest(OTHER, EP))
    set_conns(fake, EP, 0, 0)
    set_conns(fake, EP, 2, 0, key=OTHER)
    q = GracefulQueue(FakeClock(), PERIOD)
    q.add(KEY, EP)
    q.add(OTHER, EP)
    assert deleted(q.due(await fake.dump())) == [(KEY, EP.address, EP.port)]
    assert (OTHER, EP) in q


async def test_drained_by_the_planner_then_deleted() -> None:
    """The whole path: plan drains a server, the queue deletes it when its connections end."""
    live = Dest("10.244.1.5", 8080)
    fake = await kernel(live)
    want = VirtualService(Service(KEY), {}, "default/web:http", "cluster")
    plan = plan_ipvs({KEY: want}, ipvs.plain(await fake.dump()), graceful=True)
    await fake.apply(plan.tx)
    assert fake.services[KEY].dests[live.key].dest.weight == 0
    clock = FakeClock()
    q = GracefulQueue(clock, PERIOD)
    for key, dest in plan.drained:
        q.add(key, dest)
    set_conns(fake, live, 1, 0)
    await clock.advance(graceful.GRACEFUL_SCAN_S)
    assert len(q.due(await fake.dump())) == 0
    set_conns(fake, live, 0, 0)
    await clock.advance(graceful.GRACEFUL_SCAN_S)
    await fake.apply(q.due(await fake.dump()))
    assert fake.services[KEY].dests == {}


def pod(
    name: str, ips: list[str], period: int | None, phase: str = "Running", pod_ip: str = ""
) -> Pod:
    return Pod(
        metadata=ObjectMeta(name=name, namespace="default"),
        spec=PodSpec(termination_grace_period_seconds=period),
        status=PodStatus(phase=phase, pod_ip=pod_ip, pod_ips=[PodIP(ip=i) for i in ips]),
    )


PODS = [
    pod("a", ["10.244.1.5"], 60),
    pod("dual", ["10.244.1.7", "fd00::7"], 45),
    pod("old", ["10.244.1.8"], 600, phase="Succeeded"),
    pod("new", ["10.244.1.8"], 20),
    pod("unset", ["10.244.1.9"], None),
    pod("legacy", [], 15, pod_ip="10.244.1.10"),
]


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("10.244.1.5", 60.0),
        ("10.244.1.7", 45.0),
        ("fd00:0::7", 45.0),  # compared as addresses, not strings
        ("10.244.1.8", 20.0),  # the live pod, not the finished one with the same address
        ("10.244.1.9", 7.0),  # no period on the pod
        ("10.244.1.10", 15.0),  # only status.podIP
        ("10.244.9.9", 7.0),  # no such pod
        ("not-an-ip", 7.0),
    ],
)
def test_grace_period_by_endpoint_ip(ip: str, expected: float) -> None:
    assert grace_period(PODS, ip, 7.0) == expected


async def test_scan_applies_what_is_due() -> None:
    fake = await kernel(EP, EP2)
    set_conns(fake, EP, 0, 0)
    set_conns(fake, EP2, 0, 4)
    q = GracefulQueue(FakeClock(), PERIOD)
    q.add(KEY, EP)
    q.add(KEY, EP2)
    writes = fake.applied
    assert deleted(await q.scan(fake)) == [(KEY, EP.address, EP.port)]
    assert set(fake.services[KEY].dests) == {EP2.key}
    assert deleted(await q.scan(fake)) == []
    assert fake.applied == writes + 1  # nothing due: no write at all
    await fake.apply(Transaction().del_service(KEY))
    await q.scan(fake)
    assert len(q) == 0
    assert len(await GracefulQueue(FakeClock(), PERIOD).scan(FailingDump())) == 0


class FailingDump(FakeIPVS):
    async def dump(self) -> dict[ServiceKey, ipvs.ServiceState]:
        raise AssertionError("an empty queue dumped IPVS")
