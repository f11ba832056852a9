"""Informers against the lab API server over real HTTP: list, watch, relist, reconnect."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from kube_router.k8s import models, resources
from kube_router.k8s.client import KubeClient
from kube_router.k8s.informer import FuncHandler, Informer
from kube_router.k8s.informers import SERVICE_NAME_INDEX, Informers
from kube_router_lab.apiserver import LabServer


def pod(
    name: str,
    ns: str = "default",
    labels: dict[str, str] | None = None,
    node: str = "n1",
    ip: str = "10.0.0.1",
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {"nodeName": node, "containers": [{"name": "c"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.changed = asyncio.Event()

    def handler(self) -> FuncHandler[models.Pod]:
        return FuncHandler(
            add=lambda o: self._rec("add", o),
            update=lambda _o, n: self._rec("update", n),
            delete=lambda o: self._rec("delete", o),
        )

    def _rec(self, kind: str, obj: models.Pod) -> None:
        self.events.append((kind, obj.metadata.name))
        self.changed.set()

    async def wait_for(self, pred: Callable[[], bool], timeout: float = 5.0) -> None:
        async def loop() -> None:
            while not pred():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), timeout)


@pytest.fixture
async def pods(kube: KubeClient) -> AsyncIterator[Informer[models.Pod]]:
    inf: Informer[models.Pod] = Informer(
        kube, resources.PODS, page_size=3, watch_timeout_range=(30, 30)
    )
    task = asyncio.create_task(inf.run())
    try:
        yield inf
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_paginated_list_fills_store(lab: LabServer, kube: KubeClient) -> None:
    lab.store.load("pods", [pod(f"p{i}", ip=f"10.0.0.{i}") for i in range(10)])
    inf: Informer[models.Pod] = Informer(kube, resources.PODS, page_size=3)
    task = asyncio.create_task(inf.run())
    try:
        assert await inf.wait_synced(5)
        assert sorted(p.metadata.name for p in inf.store.list()) == sorted(
            f"p{i}" for i in range(10)
        )
        assert inf.store.get("default/p3").status.pod_ip == "10.0.0.3"  # type: ignore[union-attr]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_watch_delivers_add_update_delete(lab: LabServer, pods: Informer[models.Pod]) -> None:
    rec = Recorder()
    pods.add_handler(rec.handler())
    assert await pods.wait_synced(5)
    lab.store.create("pods", pod("a"))
    await rec.wait_for(lambda: ("add", "a") in rec.events)
    obj = lab.store.get("pods", "default", "a")
    obj["metadata"]["labels"] = {"app": "x"}
    lab.store.update("pods", obj)
    await rec.wait_for(lambda: ("update", "a") in rec.events)
    assert pods.store.get("default/a").metadata.labels == {"app": "x"}  # type: ignore[union-attr]
    lab.store.delete("pods", "default", "a")
    await rec.wait_for(lambda: ("delete", "a") in rec.events)
    assert pods.store.get("default/a") is None


async def test_bookmarks_advance_resource_version(
    lab: LabServer, pods: Informer[models.Pod]
) -> None:
    assert await pods.wait_synced(5)
    lab.store.create("namespaces", {"metadata": {"name": "elsewhere"}})
    target = str(lab.store.resource_version)
    for _ in range(50):
        if pods.resource_version == target:
            break
        await asyncio.sleep(0.1)
    assert pods.resource_version == target


async def test_410_gone_relists_and_diffs(lab: LabServer, pods: Informer[models.Pod]) -> None:
    lab.store.create("pods", pod("keep"))
    lab.store.create("pods", pod("gone"))
    rec = Recorder()
    pods.add_handler(rec.handler())
    assert await pods.wait_synced(5)
    await rec.wait_for(lambda: len(pods.store) == 2)
    relists = pods.relists
    # Changes the informer cannot see through its watch, then history lost and watch cut.
    await lab.drop_watches()
    lab.store.delete("pods", "default", "gone")
    lab.store.create("pods", pod("new"))
    lab.compact()
    await rec.wait_for(lambda: ("delete", "gone") in rec.events and ("add", "new") in rec.events)
    assert pods.relists > relists
    assert sorted(pods.store.key_list()) == ["default/keep", "default/new"]


async def test_dropped_watch_reconnects_without_relist(
    lab: LabServer, pods: Informer[models.Pod]
) -> None:
    rec = Recorder()
    pods.add_handler(rec.handler())
    assert await pods.wait_synced(5)
    relists = pods.relists
    await lab.drop_watches()
    lab.store.create("pods", pod("after-drop"))
    await rec.wait_for(lambda: ("add", "after-drop") in rec.events)
    assert pods.relists == relists


async def test_selectors_filter(lab: LabServer, kube: KubeClient) -> None:
    lab.store.create("pods", pod("on-n1", node="n1", labels={"app": "a"}))
    lab.store.create("pods", pod("on-n2", node="n2", labels={"app": "a"}))
    lab.store.create("pods", pod("other", node="n1", labels={"app": "b"}))
    inf: Informer[models.Pod] = Informer(
        kube, resources.PODS, label_selector="app=a", field_selector="spec.nodeName=n1"
    )
    task = asyncio.create_task(inf.run())
    try:
        assert await inf.wait_synced(5)
        assert inf.store.key_list() == ["default/on-n1"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_informer_set_indexes_endpointslices(lab: LabServer, kube: KubeClient) -> None:
    lab.store.create(
        "endpointslices",
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "web-abc",
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": "web"},
            },
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.5"], "conditions": {"ready": True}, "nodeName": "n1"}
            ],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        },
    )
    infs = Informers(kube)
    infs.start()
    try:
        await infs.wait_for_cache_sync(5)
        (es,) = infs.endpointslices.store.by_index(SERVICE_NAME_INDEX, "default/web")
        assert es.endpoints[0].addresses == ["10.0.0.5"] and es.ports[0].port == 8080
    finally:
        await infs.stop()


async def test_cache_sync_timeout_names_the_laggards(kube: KubeClient) -> None:
    from kube_router.k8s.informers import CacheSyncTimeoutError

    infs = Informers(kube)  # never started
    with pytest.raises(CacheSyncTimeoutError, match="nodes"):
        await infs.wait_for_cache_sync(0.05)


async def test_unreachable_server_retries_until_cancelled(tmp_path: Any) -> None:
    from kube_router.k8s import client as kclient

    cfg = await kclient.load_configuration("", "http://127.0.0.1:9")
    kc = KubeClient(kclient.k8s_client.ApiClient(configuration=cfg))
    inf: Informer[models.Pod] = Informer(kc, resources.PODS)
    task = asyncio.create_task(inf.run())
    assert not await inf.wait_synced(0.5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await kc.close()


async def test_undecodable_watch_line_relists_instead_of_dying(
    lab: LabServer, kube: KubeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab.store.create("pods", pod("a"))
    inf: Informer[models.Pod] = Informer(kube, resources.PODS)
    real = kube.stream_lines
    calls = 0

    async def flaky(path: str, params: Any, read_timeout: float) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            yield b'{"type": "ADDED", "object": {not json'
            return
        async for line in real(path, params, read_timeout):
            yield line

    monkeypatch.setattr(kube, "stream_lines", flaky)
    task = asyncio.create_task(inf.run())
    try:
        assert await inf.wait_synced(5)
        for _ in range(100):
            if inf.relists >= 2:
                break
            await asyncio.sleep(0.05)
        assert inf.relists >= 2 and not task.done()
        lab.store.create("pods", pod("b"))
        for _ in range(100):
            if inf.store.get("default/b") is not None:
                break
            await asyncio.sleep(0.05)
        assert inf.store.get("default/b") is not None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_list_that_keeps_failing_backs_off(
    kube: KubeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kube_router.k8s import informer as informer_mod
    from kube_router.k8s.client import GoneError

    attempts = 0

    async def gone(*_args: Any, **_kw: Any) -> bytes:
        nonlocal attempts
        attempts += 1
        raise GoneError("GET", "/api/v1/pods", 410, "Expired", "continue token expired")

    monkeypatch.setattr(kube, "request", gone)
    monkeypatch.setattr(informer_mod, "BACKOFF_INITIAL_S", 0.1)
    inf: Informer[models.Pod] = Informer(kube, resources.PODS)
    task = asyncio.create_task(inf.run())
    await asyncio.sleep(0.5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert 2 <= attempts <= 5  # 0.1, 0.2, 0.4 s backoff, not a hot loop
