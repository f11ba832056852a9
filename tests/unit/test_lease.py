"""Leader election over Leases and Service status writes, against the lab API server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kube_router.k8s import resources
from kube_router.k8s.client import ConflictError, KubeClient, NotFoundError
from kube_router.k8s.lease import LeaderElectionConfig, LeaderElector, update_service_status
from kube_router_lab.apiserver import LabServer


def _cfg(identity: str) -> LeaderElectionConfig:
    return LeaderElectionConfig(
        "kube-system",
        "kube-router-lballoc",
        identity,
        lease_duration=1.0,
        renew_deadline=0.8,
        retry_period=0.1,
    )


async def _until(pred: Any, timeout: float = 5.0) -> None:
    async def loop() -> None:
        while not pred():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(loop(), timeout)


async def test_one_leader_and_handover_on_release(lab: LabServer, kube: KubeClient) -> None:
    a, b = LeaderElector(kube, _cfg("a")), LeaderElector(kube, _cfg("b"))
    ta = asyncio.create_task(a.run())
    await _until(lambda: a.is_leader)
    tb = asyncio.create_task(b.run())
    await asyncio.sleep(0.5)
    assert a.is_leader and not b.is_leader
    lease = lab.store.get("leases", "kube-system", "kube-router-lballoc")
    assert lease["spec"]["holderIdentity"] == "a"
    ta.cancel()
    await asyncio.gather(ta, return_exceptions=True)
    await _until(lambda: b.is_leader)
    lease = lab.store.get("leases", "kube-system", "kube-router-lballoc")
    assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] >= 1
    tb.cancel()
    await asyncio.gather(tb, return_exceptions=True)


async def test_expired_lease_is_taken_over(lab: LabServer, kube: KubeClient) -> None:
    lab.store.create(
        "leases",
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "kube-router-lballoc", "namespace": "kube-system"},
            "spec": {
                "holderIdentity": "dead",
                "leaseDurationSeconds": 1,
                "renewTime": "2020-01-01T00:00:00.000000Z",
            },
        },
    )
    e = LeaderElector(kube, _cfg("me"))
    task = asyncio.create_task(e.run())
    try:
        await _until(lambda: e.is_leader)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _svc() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "lb", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
    }


async def test_status_update_retries_on_conflict(lab: LabServer, kube: KubeClient) -> None:
    lab.store.create("services", _svc())
    calls = 0

    def mutate(obj: dict[str, Any]) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:  # someone else writes between our read and our write
            other = lab.store.get("services", "default", "lb")
            other["metadata"]["labels"] = {"touched": "yes"}
            lab.store.update("services", other)
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}
        return True

    assert await update_service_status(kube, "default", "lb", mutate)
    assert calls == 2
    svc = await kube.get(resources.SERVICES, "default", "lb")
    assert svc.status.load_balancer.ingress[0].ip == "192.0.2.10"
    assert svc.metadata.labels == {"touched": "yes"}


async def test_status_update_gives_up(lab: LabServer, kube: KubeClient) -> None:
    lab.store.create("services", _svc())

    def always_conflict(obj: dict[str, Any]) -> bool:
        other = lab.store.get("services", "default", "lb")
        other["metadata"]["labels"] = {"n": str(lab.store.resource_version)}
        lab.store.update("services", other)
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.11"}]}}
        return True

    with pytest.raises(ConflictError):
        await update_service_status(kube, "default", "lb", always_conflict, retries=3)


async def test_no_write_when_mutate_declines(lab: LabServer, kube: KubeClient) -> None:
    lab.store.create("services", _svc())
    rv = lab.store.resource_version
    assert not await update_service_status(kube, "default", "lb", lambda _o: False)
    assert lab.store.resource_version == rv


async def test_errors_map_to_sentinels(kube: KubeClient) -> None:
    with pytest.raises(NotFoundError) as err:
        await kube.get(resources.SERVICES, "default", "missing")
    assert err.value.status == 404 and err.value.reason == "NotFound"
