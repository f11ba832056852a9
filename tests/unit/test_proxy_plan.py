"""The IPVS planner, judged by the fake kernel's state after the plan is applied."""

from __future__ import annotations

import ipaddress
import random

import pytest

from kube_router.controllers.proxy.compile import VirtualService
from kube_router.controllers.proxy.plan import plan_ipvs
from kube_router.dataplane import ipvs
from kube_router.dataplane.ipvs import Dest, Service, ServiceKey
from kube_router.dataplane.ipvs_fake import FakeIPVS

VIP = ServiceKey.of("10.96.0.10", "tcp", 80)
DNS = ServiceKey.of("10.96.0.53", "udp", 53)


def vs(key: ServiceKey, *dests: Dest, scheduler: str = "rr") -> VirtualService:
    return VirtualService(Service(key, scheduler), {d.key: d for d in dests}, "x/svc:p", "cluster")


async def kernel_state(
    fake: FakeIPVS,
) -> dict[ServiceKey, tuple[Service, dict[tuple[str, int], Dest]]]:
    return ipvs.plain(await fake.dump())


async def converge(fake: FakeIPVS, desired: dict[ServiceKey, VirtualService], **kw: object) -> None:
    plan = plan_ipvs(desired, await kernel_state(fake), **kw)  # type: ignore[arg-type]
    await fake.apply(plan.tx)


def expected(
    desired: dict[ServiceKey, VirtualService],
) -> dict[ServiceKey, tuple[Service, dict[tuple[str, int], Dest]]]:
    return {
        k: (
            Service(v.service.key, v.service.scheduler, netmask=32 if k.family == "ipv4" else 128),
            v.dests,
        )
        for k, v in desired.items()
    }


@pytest.mark.parametrize("seed", range(20))
async def test_random_changes_converge_and_a_second_plan_is_empty(seed: int) -> None:
    rnd = random.Random(seed)
    fake = FakeIPVS()
    for _ in range(8):
        desired = {}
        for i in rnd.sample(range(12), rnd.randint(0, 12)):
            key = ServiceKey.of(f"10.96.0.{i}", rnd.choice(["tcp", "udp"]), 80)
            dests = [
                Dest(f"10.244.{j}.{i}", 8080, weight=rnd.choice([1, 1, 2]))
                for j in rnd.sample(range(6), rnd.randint(0, 6))
            ]
            desired[key] = vs(key, *dests, scheduler=rnd.choice(["rr", "lc", "sh"]))
        await converge(fake, desired)
        assert await kernel_state(fake) == expected(desired)
        again = plan_ipvs(desired, await kernel_state(fake))
        assert len(again.tx) == 0


async def test_only_the_named_keys_are_touched() -> None:
    fake = FakeIPVS()
    a, b = Dest("10.244.1.5", 8080), Dest("10.244.2.7", 8080)
    await converge(fake, {VIP: vs(VIP, a), DNS: vs(DNS, a)})
    plan = plan_ipvs({VIP: vs(VIP, b)}, await kernel_state(fake), keys=[VIP])
    assert [op.kind for op in plan.tx.ops] == ["add-dest", "del-dest"]
    assert plan.removed == [(VIP, a)]


async def test_graceful_termination_drains_instead_of_deleting() -> None:
    fake = FakeIPVS()
    a, b = Dest("10.244.1.5", 53), Dest("10.244.2.7", 53)
    await converge(fake, {DNS: vs(DNS, a, b)})
    plan = plan_ipvs({DNS: vs(DNS, a)}, await kernel_state(fake), graceful=True)
    await fake.apply(plan.tx)
    assert plan.drained == [(DNS, b)] and plan.removed == []
    assert (await kernel_state(fake))[DNS][1][b.key].weight == 0
    again = plan_ipvs({DNS: vs(DNS, a)}, await kernel_state(fake), graceful=True)
    assert len(again.tx) == 0 and again.drained == [(DNS, Dest("10.244.2.7", 53, weight=0))]


async def test_excluded_cidrs_keep_foreign_services() -> None:
    fake = FakeIPVS()
    other = ServiceKey.of("172.30.0.1", "tcp", 443)
    await fake.apply(ipvs.Transaction().add_service(Service(other)).add_service(Service(VIP)))
    plan = plan_ipvs(
        {}, await kernel_state(fake), excluded_cidrs=[ipaddress.ip_network("172.30.0.0/16")]
    )
    await fake.apply(plan.tx)
    assert list(await kernel_state(fake)) == [other]


def test_a_local_real_server_reported_as_localnode_is_not_edited() -> None:
    want = Dest("10.244.1.5", 8080)
    have = Dest("10.244.1.5", 8080, forward=ipvs.FWD_LOCAL)
    plan = plan_ipvs({VIP: vs(VIP, want)}, {VIP: (Service(VIP), {want.key: have})})
    assert len(plan.tx) == 0


async def test_a_changed_scheduler_edits_the_service_in_place() -> None:
    fake = FakeIPVS()
    await converge(fake, {VIP: vs(VIP, Dest("10.244.1.5", 8080))})
    plan = plan_ipvs(
        {VIP: vs(VIP, Dest("10.244.1.5", 8080), scheduler="mh")}, await kernel_state(fake)
    )
    assert [op.kind for op in plan.tx.ops] == ["edit-service"]
