"""Per-Service IPVS syncing over the fake kernel: partial syncs touch one Service, full ones
repair, clashes hand over, refusals force a full sync."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from kube_router.controllers.proxy.compile import NodeAddresses, Settings
from kube_router.controllers.proxy.endpoints import EndpointInfo
from kube_router.controllers.proxy.ipvs_sync import IPVSSync
from kube_router.dataplane import ipvs
from kube_router.dataplane.ipvs import ServiceKey, Transaction
from kube_router.dataplane.ipvs_fake import FakeIPVS
from kube_router.k8s.models import Service

NODE = NodeAddresses({"ipv4": "192.168.1.10"})


def svc(name: str, vip: str, port: int = 80) -> Service:
    body: dict[str, Any] = {
        "metadata": {"name": name, "namespace": "x"},
        "spec": {"clusterIP": vip, "clusterIPs": [vip], "ports": [{"name": "http", "port": port}]},
    }
    return msgspec.convert(body, Service)


def eps(*ips: str) -> dict[str, list[EndpointInfo]]:
    return {"http": [EndpointInfo(ip, 8080, "ipv4", local=False) for ip in ips]}


async def kernel(fake: FakeIPVS) -> dict[str, set[str]]:
    return {str(k): {a for a, _ in s.dests} for k, s in (await fake.dump()).items()}


@pytest.fixture
def fake() -> FakeIPVS:
    return FakeIPVS()


async def test_an_endpoint_change_touches_only_its_service(fake: FakeIPVS) -> None:
    sync = IPVSSync(fake, Settings(), NODE)
    for i in range(50):
        sync.update(f"x/s{i}", svc(f"s{i}", f"10.96.0.{i + 1}"), eps("10.244.1.5", "10.244.1.6"))
    await sync.sync(full=True)
    sync.update("x/s7", svc("s7", "10.96.0.8"), eps("10.244.1.5", "10.244.1.7"))
    result = await sync.sync(full=False)
    assert [op.describe() for op in result.plan.tx.ops] == [
        "add-dest tcp/10.96.0.8:80 -> 10.244.1.7:8080",
        "del-dest tcp/10.96.0.8:80 -> 10.244.1.6:8080",
    ]
    assert (await kernel(fake))["tcp/10.96.0.8:80"] == {"10.244.1.5", "10.244.1.7"}
    assert len((await sync.sync(full=False)).plan.tx) == 0


async def test_a_deleted_service_goes_and_a_full_sync_repairs_outside_damage(
    fake: FakeIPVS,
) -> None:
    sync = IPVSSync(fake, Settings(), NODE)
    sync.update("x/a", svc("a", "10.96.0.1"), eps("10.244.1.5"))
    sync.update("x/b", svc("b", "10.96.0.2"), eps("10.244.1.6"))
    await sync.sync(full=True)
    sync.update("x/a", None, {})
    await sync.sync(full=False)
    assert await kernel(fake) == {"tcp/10.96.0.2:80": {"10.244.1.6"}}
    await fake.apply(
        Transaction().del_dest(ServiceKey.of("10.96.0.2", "tcp", 80), "10.244.1.6", 8080)
    )
    assert len((await sync.sync(full=False)).plan.tx) == 0  # a partial sync trusts its record
    await sync.sync(full=True)
    assert await kernel(fake) == {"tcp/10.96.0.2:80": {"10.244.1.6"}}


async def test_a_clash_goes_to_the_first_by_name_then_hands_over(fake: FakeIPVS) -> None:
    sync = IPVSSync(fake, Settings(), NODE)
    sync.update("x/b", svc("b", "10.96.0.1"), eps("10.244.1.6"))
    sync.update("x/a", svc("a", "10.96.0.1"), eps("10.244.1.5"))
    result = await sync.sync(full=True)
    assert await kernel(fake) == {"tcp/10.96.0.1:80": {"10.244.1.5"}}
    assert list(result.errors) == ["x/b"]
    sync.update("x/a", None, {})
    result = await sync.sync(full=False)
    assert await kernel(fake) == {"tcp/10.96.0.1:80": {"10.244.1.6"}}
    assert result.errors == {}


async def test_graceful_termination_keeps_draining_servers_in_the_record(fake: FakeIPVS) -> None:
    sync = IPVSSync(fake, Settings(), NODE, graceful=True)
    sync.update("x/a", svc("a", "10.96.0.1"), eps("10.244.1.5", "10.244.1.6"))
    await sync.sync(full=True)
    sync.update("x/a", svc("a", "10.96.0.1"), eps("10.244.1.5"))
    result = await sync.sync(full=False)
    assert [d.address for _, d in result.plan.drained] == ["10.244.1.6"]
    state = (await fake.dump())[ServiceKey.of("10.96.0.1", "tcp", 80)]
    assert state.dests[("10.244.1.6", 8080)].dest.weight == 0
    sync.update("x/a", svc("a", "10.96.0.1"), eps("10.244.1.5"))
    assert len((await sync.sync(full=False)).plan.tx) == 0


async def test_a_refusal_raises_and_forgets_the_record(fake: FakeIPVS) -> None:
    sync = IPVSSync(fake, Settings(), NODE)
    sync.update("x/a", svc("a", "10.96.0.1"), eps("10.244.1.5"))
    await fake.apply(Transaction().add_service(ipvs.Service(ServiceKey.of("10.96.0.1", "tcp", 80))))
    with pytest.raises(ipvs.IPVSOpError):
        await sync.sync(full=False)  # the service is there already: EEXIST
    assert sync.applied == {}
    await sync.sync(full=True)
    assert await kernel(fake) == {"tcp/10.96.0.1:80": {"10.244.1.5"}}


async def test_a_drained_server_deleted_outside_is_forgotten_and_one_back_is_wanted(
    fake: FakeIPVS,
) -> None:
    sync = IPVSSync(fake, Settings(), NODE, graceful=True)
    sync.update("x/a", svc("a", "10.96.0.1"), eps("10.244.1.5", "10.244.1.6"))
    await sync.sync(full=True)
    sync.update("x/a", svc("a", "10.96.0.1"), eps("10.244.1.5"))
    drained = (await sync.sync(full=False)).plan.drained
    key, dest = drained[0]
    assert not sync.wanted(key, dest)
    await fake.apply(Transaction().del_dest(key, dest.address, dest.port))
    sync.forget(drained)
    sync.update("x/a", svc("a", "10.96.0.1"), eps("10.244.1.5"))
    assert len((await sync.sync(full=False)).plan.tx) == 0  # nothing left to drain
    sync.update("x/a", svc("a", "10.96.0.1"), eps("10.244.1.5", "10.244.1.6"))
    assert sync.wanted(key, dest)
    await sync.sync(full=False)
    assert await kernel(fake) == {str(key): {"10.244.1.5", "10.244.1.6"}}
