"""The lab API server over raw HTTP (aiohttp client): REST semantics, errors and watches."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from kube_router_lab.apiserver import LabServer

PODS = "/api/v1/namespaces/default/pods"
SVCS = "/api/v1/namespaces/default/services"
MERGE = {"Content-Type": "application/merge-patch+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}
SMP = {"Content-Type": "application/strategic-merge-patch+json"}


@pytest.fixture
async def server() -> AsyncIterator[LabServer]:
    srv = LabServer(bookmark_interval=0.1)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def http(server: LabServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=server.url) as session:
        yield session


async def call(
    http: aiohttp.ClientSession, method: str, path: str, body: Any = None, **kw: Any
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body)
    headers = kw.pop("headers", {})
    if data is not None:
        headers = {"Content-Type": "application/json", **headers}
    async with http.request(method, path, data=data, headers=headers, **kw) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except json.JSONDecodeError:
            return resp.status, text


def pod(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}, "spec": {"nodeName": "n1"}}


class WatchStream:
    """Reads watch events line by line from an open response."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp

    async def next(self, timeout: float = 3.0) -> dict[str, Any]:
        line = await asyncio.wait_for(self.resp.content.readline(), timeout)
        assert line, "watch stream ended"
        event: dict[str, Any] = json.loads(line)
        return event

    async def next_non_bookmark(self, timeout: float = 3.0) -> dict[str, Any]:
        while True:
            event = await self.next(timeout)
            if event["type"] != "BOOKMARK":
                return event


async def open_watch(http: aiohttp.ClientSession, path: str, **params: str) -> WatchStream:
    query = {"watch": "true", **params}
    resp = await http.get(path, params=query)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    return WatchStream(resp)


# -- discovery and health ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/api", "APIVersions"),
        ("/api/v1", "APIResourceList"),
        ("/apis", "APIGroupList"),
        ("/apis/discovery.k8s.io", "APIGroup"),
        ("/apis/discovery.k8s.io/v1", "APIResourceList"),
        ("/apis/networking.k8s.io/v1", "APIResourceList"),
        ("/apis/coordination.k8s.io/v1", "APIResourceList"),
    ],
)
async def test_discovery(http: aiohttp.ClientSession, path: str, kind: str) -> None:
    status, doc = await call(http, "GET", path)
    assert status == 200
    assert doc["kind"] == kind


async def test_core_resource_list(http: aiohttp.ClientSession) -> None:
    _, doc = await call(http, "GET", "/api/v1")
    by_name = {r["name"]: r for r in doc["resources"]}
    assert by_name["pods"]["namespaced"] is True
    assert by_name["nodes"]["namespaced"] is False
    assert by_name["services"]["kind"] == "Service"
    assert "watch" in by_name["services"]["verbs"]
    assert by_name["services/status"]["verbs"] == ["get", "patch", "update"]
    _, groups = await call(http, "GET", "/apis")
    names = {g["name"] for g in groups["groups"]}
    assert names == {"discovery.k8s.io", "networking.k8s.io", "coordination.k8s.io"}


async def test_version_and_health(http: aiohttp.ClientSession) -> None:
    status, version = await call(http, "GET", "/version")
    assert status == 200
    assert version["gitVersion"].startswith("v1.")
    for path in ("/healthz", "/readyz", "/livez"):
        assert await call(http, "GET", path) == (200, "ok")


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "code", "reason"),
    [
        ("GET", "/api/v1/nope", None, {}, 404, "NotFound"),
        ("GET", "/api/v2/pods", None, {}, 404, "NotFound"),
        ("GET", "/apis/apps/v1/deployments", None, {}, 404, "NotFound"),
        ("GET", "/api/v1/pods/x", None, {}, 404, "NotFound"),
        ("GET", f"{PODS}/missing", None, {}, 404, "NotFound"),
        ("GET", "/api/v1/namespaces/default/leases/x/status", None, {}, 404, "NotFound"),
        ("PUT", PODS, {}, {}, 405, "MethodNotAllowed"),
        ("POST", f"{PODS}/x", {}, {}, 405, "MethodNotAllowed"),
        ("POST", "/api/v1/pods", pod("a"), {}, 405, "MethodNotAllowed"),
        ("DELETE", f"{SVCS}/x/status", None, {}, 405, "MethodNotAllowed"),
        ("POST", "/version", None, {}, 405, "MethodNotAllowed"),
        ("POST", PODS, {"metadata": {}}, {}, 422, "Invalid"),
        ("POST", PODS, [1], {}, 400, "BadRequest"),
        ("GET", f"{PODS}?labelSelector=a%3D%3D%3Db", None, {}, 400, "BadRequest"),
        ("GET", f"{PODS}?fieldSelector=spec.bogus%3D1", None, {}, 400, "BadRequest"),
        ("GET", f"{PODS}?limit=x", None, {}, 400, "BadRequest"),
        ("GET", f"{PODS}?limit=1&continue=garbage", None, {}, 400, "BadRequest"),
    ],
)
async def test_error_status(
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
    code: int,
    reason: str,
) -> None:
    status, doc = await call(http, method, path, body, headers=headers)
    assert status == code
    assert doc["kind"] == "Status"
    assert doc["apiVersion"] == "v1"
    assert doc["status"] == "Failure"
    assert doc["reason"] == reason
    assert doc["code"] == code


async def test_bad_json_body(http: aiohttp.ClientSession) -> None:
    headers = {"Content-Type": "application/json"}
    async with http.post(PODS, data=b"{not json", headers=headers) as resp:
        assert resp.status == 400
        assert (await resp.json())["reason"] == "BadRequest"


async def test_not_found_message(http: aiohttp.ClientSession) -> None:
    _, doc = await call(http, "GET", f"{PODS}/x")
    assert doc["message"] == 'pods "x" not found'
    assert doc["details"] == {"name": "x", "kind": "pods"}


async def test_conflict_and_already_exists(http: aiohttp.ClientSession) -> None:
    status, created = await call(http, "POST", PODS, pod("a"))
    assert status == 201
    status, doc = await call(http, "POST", PODS, pod("a"))
    assert (status, doc["reason"]) == (409, "AlreadyExists")
    created["metadata"]["labels"] = {"x": "1"}
    assert (await call(http, "PUT", f"{PODS}/a", created))[0] == 200
    status, doc = await call(http, "PUT", f"{PODS}/a", created)
    assert (status, doc["reason"]) == (409, "Conflict")
    assert doc["message"] == (
        'Operation cannot be fulfilled on pods "a": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )


async def test_namespace_mismatch_and_name_mismatch(http: aiohttp.ClientSession) -> None:
    body = {"metadata": {"name": "a", "namespace": "other"}}
    assert (await call(http, "POST", PODS, body))[0] == 400
    await call(http, "POST", PODS, pod("a"))
    assert (await call(http, "PUT", f"{PODS}/a", pod("b")))[0] == 400


@pytest.mark.parametrize(
    ("method", "path", "content_type", "body"),
    [
        ("PATCH", f"{PODS}/a", "application/apply-patch+yaml", b"metadata:\n  name: a\n"),
        ("POST", PODS, "text/plain", b"{}"),
        ("PUT", f"{PODS}/a", "application/yaml", b"metadata: {}"),
    ],
)
async def test_unsupported_media_type(
    http: aiohttp.ClientSession, method: str, path: str, content_type: str, body: bytes
) -> None:
    await call(http, "POST", PODS, pod("a"))
    headers = {"Content-Type": content_type}
    async with http.request(method, path, data=body, headers=headers) as resp:
        assert resp.status == 415
        assert (await resp.json())["reason"] == "UnsupportedMediaType"


# -- list -----------------------------------------------------------------------------------------


async def test_list_shape(http: aiohttp.ClientSession) -> None:
    await call(http, "POST", PODS, pod("a"))
    status, doc = await call(http, "GET", PODS)
    assert status == 200
    assert doc["kind"] == "PodList"
    assert doc["apiVersion"] == "v1"
    assert doc["metadata"] == {"resourceVersion": "1"}
    (item,) = doc["items"]
    assert "kind" not in item
    assert "apiVersion" not in item
    assert item["metadata"]["name"] == "a"
    _, slices = await call(http, "GET", "/apis/discovery.k8s.io/v1/endpointslices")
    assert (slices["kind"], slices["apiVersion"]) == ("EndpointSliceList", "discovery.k8s.io/v1")


async def test_list_selectors_and_scopes(server: LabServer, http: aiohttp.ClientSession) -> None:
    server.store.create("pods", {"metadata": {"name": "a", "labels": {"app": "web"}}})
    server.store.create(
        "pods", {"metadata": {"name": "b", "namespace": "x", "labels": {"app": "db"}}}
    )
    server.store.create(
        "pods",
        {
            "metadata": {"name": "c", "namespace": "x", "labels": {"app": "web"}},
            "spec": {"nodeName": "n2"},
        },
    )

    async def names(path: str, **params: str) -> list[str]:
        async with http.get(path, params=params) as resp:
            assert resp.status == 200
            doc = await resp.json()
        return [i["metadata"]["name"] for i in doc["items"]]

    assert await names("/api/v1/pods") == ["a", "b", "c"]
    assert await names("/api/v1/namespaces/x/pods") == ["b", "c"]
    assert await names("/api/v1/pods", labelSelector="app in (web)") == ["a", "c"]
    assert await names("/api/v1/pods", labelSelector="app,app!=web") == ["b"]
    assert await names("/api/v1/pods", fieldSelector="spec.nodeName=n2") == ["c"]
    assert await names("/api/v1/pods", fieldSelector="metadata.namespace!=x") == ["a"]


async def test_list_pagination(server: LabServer, http: aiohttp.ClientSession) -> None:
    server.store.load("pods", ({"metadata": {"name": f"p{i:02d}"}} for i in range(7)))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        params = {"limit": "3", **({"continue": token} if token else {})}
        async with http.get(PODS, params=params) as resp:
            doc = await resp.json()
        pages += 1
        seen += [i["metadata"]["name"] for i in doc["items"]]
        assert doc["metadata"]["resourceVersion"] == "7"
        token = doc["metadata"].get("continue", "")
        if not token:
            assert "remainingItemCount" not in doc["metadata"]
            break
        assert doc["metadata"]["remainingItemCount"] == 7 - len(seen)
    assert pages == 3
    assert seen == [f"p{i:02d}" for i in range(7)]


async def test_no_remaining_count_with_selectors(
    server: LabServer, http: aiohttp.ClientSession
) -> None:
    server.store.load(
        "pods", ({"metadata": {"name": f"p{i}", "labels": {"a": "b"}}} for i in range(3))
    )
    _, doc = await call(http, "GET", f"{PODS}?limit=1&labelSelector=a")
    assert doc["metadata"]["continue"]
    assert "remainingItemCount" not in doc["metadata"]
    token = doc["metadata"]["continue"]
    _, doc = await call(http, "GET", f"{PODS}?limit=1&labelSelector=a&continue={token}")
    assert "remainingItemCount" not in doc["metadata"]
    assert len(doc["items"]) == 1


async def test_continue_expired_after_compact(
    server: LabServer, http: aiohttp.ClientSession
) -> None:
    server.store.load("pods", ({"metadata": {"name": f"p{i}"}} for i in range(3)))
    _, doc = await call(http, "GET", f"{PODS}?limit=1")
    server.compact()
    async with http.get(PODS, params={"limit": "1", "continue": doc["metadata"]["continue"]}) as r:
        assert r.status == 410
        assert (await r.json())["reason"] == "Expired"


# -- writes ---------------------------------------------------------------------------------


async def test_create_get_delete(http: aiohttp.ClientSession) -> None:
    status, created = await call(http, "POST", PODS, pod("a"))
    assert status == 201
    assert created["kind"] == "Pod"
    assert created["metadata"]["resourceVersion"] == "1"
    status, got = await call(http, "GET", f"{PODS}/a")
    assert (status, got) == (200, created)
    status, deleted = await call(http, "DELETE", f"{PODS}/a")
    assert status == 200
    assert deleted["kind"] == "Pod"
    assert deleted["metadata"]["resourceVersion"] == "2"
    assert (await call(http, "GET", f"{PODS}/a"))[0] == 404


async def test_delete_returns_status_for_leases(http: aiohttp.ClientSession) -> None:
    leases = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"
    _, lease = await call(http, "POST", leases, {"metadata": {"name": "l"}, "spec": {}})
    status, doc = await call(http, "DELETE", f"{leases}/l")
    assert status == 200
    assert doc["kind"] == "Status"
    assert doc["status"] == "Success"
    assert doc["details"]["uid"] == lease["metadata"]["uid"]


async def test_delete_with_preconditions(http: aiohttp.ClientSession) -> None:
    await call(http, "POST", PODS, pod("a"))
    body = {"kind": "DeleteOptions", "preconditions": {"resourceVersion": "99"}}
    status, doc = await call(http, "DELETE", f"{PODS}/a", body)
    assert (status, doc["reason"]) == (409, "Conflict")


async def test_delete_collection(server: LabServer, http: aiohttp.ClientSession) -> None:
    server.store.create("pods", pod("a", app="web"))
    server.store.create("pods", pod("b", app="db"))
    status, doc = await call(http, "DELETE", f"{PODS}?labelSelector=app%3Dweb")
    assert status == 200
    assert [i["metadata"]["name"] for i in doc["items"]] == ["a"]
    assert [p["metadata"]["name"] for p in server.store.list_objects("pods")] == ["b"]


async def test_service_status_subresource(http: aiohttp.ClientSession) -> None:
    svc = {"metadata": {"name": "s"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}
    _, created = await call(http, "POST", SVCS, svc)
    lb = {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}
    # PUT of the main resource ignores status
    created["status"] = lb
    _, after_main = await call(http, "PUT", f"{SVCS}/s", created)
    assert after_main["status"] == {"loadBalancer": {}}
    # PUT of the status subresource changes only status
    after_main["status"] = lb
    after_main["spec"]["ports"][0]["port"] = 8080
    status, after_status = await call(http, "PUT", f"{SVCS}/s/status", after_main)
    assert status == 200
    assert after_status["status"] == lb
    assert after_status["spec"]["ports"][0]["port"] == 80
    assert after_status["metadata"]["generation"] == 1
    # status subresource GET and PATCH
    status, got = await call(http, "GET", f"{SVCS}/s/status")
    assert got["status"] == lb
    patch = {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.2"}]}}}
    _, patched = await call(http, "PATCH", f"{SVCS}/s/status", patch, headers=SMP)
    ips = [i["ip"] for i in patched["status"]["loadBalancer"]["ingress"]]
    assert ips == ["192.0.2.1", "192.0.2.2"]


async def test_patch_types(http: aiohttp.ClientSession) -> None:
    await call(http, "POST", PODS, pod("a", app="web"))
    _, out = await call(
        http, "PATCH", f"{PODS}/a", {"metadata": {"labels": {"app": None, "v": "1"}}}, headers=MERGE
    )
    assert out["metadata"]["labels"] == {"v": "1"}
    ops = [
        {"op": "test", "path": "/metadata/labels/v", "value": "1"},
        {"op": "add", "path": "/metadata/annotations", "value": {"a/b": "c"}},
        {"op": "replace", "path": "/spec/nodeName", "value": "n2"},
    ]
    _, out = await call(http, "PATCH", f"{PODS}/a", ops, headers=JSON_PATCH)
    assert out["metadata"]["annotations"] == {"a/b": "c"}
    assert out["spec"]["nodeName"] == "n2"
    assert out["metadata"]["generation"] == 2
    containers = {"spec": {"containers": [{"name": "c1", "image": "x"}, {"name": "c2"}]}}
    await call(http, "PATCH", f"{PODS}/a", containers, headers=SMP)
    update = {"spec": {"containers": [{"name": "c2", "image": "y"}]}}
    _, out = await call(http, "PATCH", f"{PODS}/a", update, headers=SMP)
    assert out["spec"]["containers"] == [{"name": "c1", "image": "x"}, {"name": "c2", "image": "y"}]


@pytest.mark.parametrize(
    ("ops", "code"),
    [
        ([{"op": "test", "path": "/spec/nodeName", "value": "other"}], 422),
        ([{"op": "remove", "path": "/spec/missing"}], 422),
        ([{"op": "jump", "path": "/spec"}], 400),
        ({"op": "add"}, 400),
    ],
)
async def test_json_patch_failures(http: aiohttp.ClientSession, ops: Any, code: int) -> None:
    await call(http, "POST", PODS, pod("a"))
    status, doc = await call(http, "PATCH", f"{PODS}/a", ops, headers=JSON_PATCH)
    assert status == code, doc
    assert (await call(http, "GET", f"{PODS}/a"))[1]["metadata"]["resourceVersion"] == "1"


async def test_patch_with_stale_resource_version_conflicts(http: aiohttp.ClientSession) -> None:
    await call(http, "POST", PODS, pod("a"))
    await call(http, "PATCH", f"{PODS}/a", {"metadata": {"labels": {"x": "1"}}}, headers=MERGE)
    stale = {"metadata": {"resourceVersion": "1", "labels": {"x": "2"}}}
    status, doc = await call(http, "PATCH", f"{PODS}/a", stale, headers=MERGE)
    assert (status, doc["reason"]) == (409, "Conflict")


# -- watch -----------------------------------------------------------------------------------------


async def test_watch_initial_state_then_changes(
    server: LabServer, http: aiohttp.ClientSession
) -> None:
    server.store.create("pods", pod("a"))
    for rv in ("", "0"):
        params = {"resourceVersion": rv} if rv else {}
        stream = await open_watch(http, PODS, **params)
        first = await stream.next()
        assert first["type"] == "ADDED"
        assert first["object"]["kind"] == "Pod"
        assert first["object"]["metadata"]["name"] == "a"
        stream.resp.close()
    stream = await open_watch(http, PODS)
    await stream.next()
    await call(http, "POST", PODS, pod("b"))
    server.store.patch("pods", "default", "b", {"metadata": {"labels": {"x": "y"}}})
    await call(http, "DELETE", f"{PODS}/b")
    events = [await stream.next() for _ in range(3)]
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]
    assert [e["object"]["metadata"]["resourceVersion"] for e in events] == ["2", "3", "4"]
    stream.resp.close()


async def test_watch_from_resource_version_replays_history(
    server: LabServer, http: aiohttp.ClientSession
) -> None:
    server.store.create("pods", pod("a"))
    server.store.create("services", {"metadata": {"name": "s"}})
    server.store.create("pods", pod("b"))
    stream = await open_watch(http, PODS, resourceVersion="1")
    event = await stream.next()
    assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "b")
    stream.resp.close()


async def test_watch_only_sees_its_namespace(
    server: LabServer, http: aiohttp.ClientSession
) -> None:
    stream = await open_watch(http, "/api/v1/namespaces/x/pods")
    server.store.create("pods", pod("a"))
    server.store.create("pods", {"metadata": {"name": "b", "namespace": "x"}})
    event = await stream.next()
    assert event["object"]["metadata"]["name"] == "b"
    stream.resp.close()


async def test_watch_bookmarks(server: LabServer, http: aiohttp.ClientSession) -> None:
    server.store.create("services", {"metadata": {"name": "s"}})
    stream = await open_watch(http, PODS, resourceVersion="1", allowWatchBookmarks="true")
    event = await stream.next()
    assert event == {
        "type": "BOOKMARK",
        "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}},
    }
    server.store.create("services", {"metadata": {"name": "t"}})
    event = await stream.next()
    assert event["type"] == "BOOKMARK"
    assert event["object"]["metadata"]["resourceVersion"] == "2"
    stream.resp.close()


async def test_watch_without_bookmarks_sends_none(
    server: LabServer, http: aiohttp.ClientSession
) -> None:
    stream = await open_watch(http, PODS, resourceVersion="0", timeoutSeconds="1")
    assert await stream.resp.content.read() == b""


async def test_watch_send_initial_events_end_bookmark(
    server: LabServer, http: aiohttp.ClientSession
) -> None:
    server.store.create("pods", pod("a"))
    stream = await open_watch(
        http,
        PODS,
        sendInitialEvents="true",
        allowWatchBookmarks="true",
        resourceVersionMatch="NotOlderThan",
    )
    assert (await stream.next())["type"] == "ADDED"
    end = await stream.next()
    assert end["type"] == "BOOKMARK"
    assert end["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    stream.resp.close()


async def test_watch_timeout_closes_stream(server: LabServer, http: aiohttp.ClientSession) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    stream = await open_watch(http, PODS, timeoutSeconds="1")
    body = await asyncio.wait_for(stream.resp.content.read(), 5)
    assert body == b""
    assert 0.9 <= loop.time() - start < 4


async def test_watch_selector_transitions(server: LabServer, http: aiohttp.ClientSession) -> None:
    server.store.create("pods", pod("a", app="web"))
    stream = await open_watch(http, PODS, resourceVersion="1", labelSelector="app=web")
    server.store.patch("pods", "default", "a", {"metadata": {"labels": {"app": "db"}}})
    server.store.patch("pods", "default", "a", {"metadata": {"labels": {"other": "x"}}})
    server.store.patch("pods", "default", "a", {"metadata": {"labels": {"app": "web"}}})
    server.store.create("pods", pod("b", app="db"))
    server.store.patch("pods", "default", "a", {"spec": {"nodeName": "n9"}})
    left = await stream.next()
    assert left["type"] == "DELETED"
    assert left["object"]["metadata"]["labels"] == {"app": "web"}  # previous content...
    assert left["object"]["metadata"]["resourceVersion"] == "2"  # ...at the new version
    back = await stream.next()
    assert (back["type"], back["object"]["metadata"]["resourceVersion"]) == ("ADDED", "4")
    modified = await stream.next()
    assert (modified["type"], modified["object"]["metadata"]["resourceVersion"]) == (
        "MODIFIED",
        "6",
    )
    stream.resp.close()


async def test_watch_field_selector(server: LabServer, http: aiohttp.ClientSession) -> None:
    stream = await open_watch(http, "/api/v1/pods", fieldSelector="metadata.name=b")
    server.store.create("pods", pod("a"))
    server.store.create("pods", pod("b"))
    event = await stream.next()
    assert event["object"]["metadata"]["name"] == "b"
    stream.resp.close()


async def test_watch_too_old_resource_version(
    server: LabServer, http: aiohttp.ClientSession
) -> None:
    server.store.create("pods", pod("a"))
    server.store.create("pods", pod("b"))
    server.compact()
    async with http.get(PODS, params={"watch": "1", "resourceVersion": "1"}) as resp:
        assert resp.status == 200
        lines = (await asyncio.wait_for(resp.content.read(), 3)).splitlines()
    assert [json.loads(line) for line in lines] == [
        {
            "type": "ERROR",
            "object": {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "too old resource version: 1 (2)",
                "reason": "Expired",
                "code": 410,
            },
        }
    ]
    # the current resourceVersion is still fine
    stream = await open_watch(http, PODS, resourceVersion="2")
    server.store.create("pods", pod("c"))
    assert (await stream.next())["object"]["metadata"]["name"] == "c"
    stream.resp.close()


async def test_history_limit_expires_old_versions(http: aiohttp.ClientSession) -> None:
    srv = LabServer(history_limit=2)
    await srv.start()
    try:
        for name in "abcd":
            srv.store.create("pods", pod(name))
        async with http.get(f"{srv.url}{PODS}", params={"watch": "1", "resourceVersion": "1"}) as r:
            event = json.loads(await asyncio.wait_for(r.content.readline(), 3))
        assert event["type"] == "ERROR"
        assert event["object"]["code"] == 410
        async with http.get(
            f"{srv.url}{PODS}", params={"watch": "1", "resourceVersion": "2", "timeoutSeconds": "1"}
        ) as r:
            names = [
                json.loads(line)["object"]["metadata"]["name"]
                for line in (await r.read()).splitlines()
            ]
        assert names == ["c", "d"]
    finally:
        await srv.stop()


async def test_drop_watches_breaks_connections(
    server: LabServer, http: aiohttp.ClientSession
) -> None:
    stream = await open_watch(http, PODS, resourceVersion="0")
    server.store.create("pods", pod("a"))
    await stream.next()
    await server.drop_watches()
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(stream.resp.content.read(), 3)
    # the server keeps serving new watches
    stream = await open_watch(http, PODS, resourceVersion="1")
    server.store.create("pods", pod("b"))
    assert (await stream.next())["object"]["metadata"]["name"] == "b"
    stream.resp.close()


async def test_stop_ends_watches_cleanly(http: aiohttp.ClientSession) -> None:
    srv = LabServer()
    await srv.start()
    resp = await http.get(f"{srv.url}{PODS}", params={"watch": "true"})
    await asyncio.sleep(0.05)
    await asyncio.wait_for(srv.stop(), 5)
    assert await asyncio.wait_for(resp.content.read(), 3) == b""
    resp.close()


async def test_client_disconnect_unregisters_watch(
    server: LabServer, http: aiohttp.ClientSession
) -> None:
    stream = await open_watch(http, PODS)
    stream.resp.close()
    for _ in range(100):
        await asyncio.sleep(0.02)
        if not server._watch_tasks:
            break
    assert not server._watch_tasks


async def test_store_writes_from_another_thread_reach_watches(
    server: LabServer, http: aiohttp.ClientSession
) -> None:
    stream = await open_watch(http, PODS, resourceVersion="0")
    await asyncio.to_thread(server.store.create, "pods", pod("threaded"))
    event = await stream.next()
    assert event["object"]["metadata"]["name"] == "threaded"
    stream.resp.close()


# -- authentication ------------------------------------------------------------------------------


async def test_token_required() -> None:
    srv = LabServer(token="s3cret")
    await srv.start()
    try:
        async with aiohttp.ClientSession(base_url=srv.url) as http:
            status, doc = await call(http, "GET", PODS)
            assert (status, doc["reason"], doc["code"]) == (401, "Unauthorized", 401)
            wrong = {"Authorization": "Bearer nope"}
            assert (await call(http, "GET", PODS, headers=wrong))[0] == 401
            good = {"Authorization": "Bearer s3cret"}
            assert (await call(http, "GET", PODS, headers=good))[0] == 200
            assert (await call(http, "GET", "/healthz"))[0] == 200
    finally:
        await srv.stop()


async def test_any_token_accepted_by_default(http: aiohttp.ClientSession) -> None:
    headers = {"Authorization": "Bearer whatever"}
    assert (await call(http, "GET", PODS, headers=headers))[0] == 200


async def test_client_leaving_mid_stream_is_quiet(
    server: LabServer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    stream = await open_watch(http, PODS, resourceVersion="0")
    server.store.load("pods", ({"metadata": {"name": f"p{i}"}} for i in range(2000)))
    await stream.next()
    stream.resp.close()
    server.store.load("pods", ({"metadata": {"name": f"q{i}"}} for i in range(2000)))
    for _ in range(200):
        if server.watch_count == 0:
            break
        await asyncio.sleep(0.01)
    assert server.watch_count == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert (await call(http, "GET", "/healthz"))[0] == 200
