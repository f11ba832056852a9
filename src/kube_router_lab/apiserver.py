"""An in-memory Kubernetes API server for tests, benchmarks and the demo.

It speaks the real REST and watch protocol (JSON over plain HTTP) for namespaces, nodes, pods,
services (+ status), discovery.k8s.io/v1 endpointslices, networking.k8s.io/v1 networkpolicies
and coordination.k8s.io/v1 leases, well enough for the official `kubernetes` client and our own
async client. `LabServer.store` gives tests direct access; its writes reach watches too.

Where it knowingly differs from the real server:

* JSON only: no protobuf/CBOR, no server-side apply (415), no dryRun, no managedFields,
  no admission; validation covers names, kind/apiVersion/namespace consistency and service IP
  and node port allocation only (see `defaults`).
* Namespaces need not exist for namespaced creates. Deleting a namespace deletes it and its
  contents at once (no finalizers, no Terminating phase); deletes are never graceful.
* Status sent on create is kept (the real server resets it), so tests can create ready objects;
  pods created without a status get `phase: Pending`. `LabStore.update` replaces status too;
  HTTP PUT/PATCH of a main resource ignore status, as the real server does.
* Lists always serve the latest state (`resourceVersion`/`resourceVersionMatch` are ignored).
  A continue token serves the rest of the first page's snapshot (see `pagination`).
* A watch from a resourceVersion newer than the current one is accepted (the real server waits
  and may answer 504). Bookmarks come every `bookmark_interval` seconds and carry the global
  resourceVersion. There is no server-side default watch timeout. Legacy `/watch/` paths are
  not served.
* uids are UUID-shaped but counter-based; timestamps have second precision.
* Authentication is an optional fixed bearer token; there is no authorization.

Run standalone with `python -m kube_router_lab.apiserver --port 6443 --kubeconfig kc.yaml`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

import msgspec
import yaml
from aiohttp import web

from kube_router_lab import discovery, errors
from kube_router_lab.resources import ResourceInfo, lookup
from kube_router_lab.store import PATCH_TYPES, LabStore
from kube_router_lab.watch import WatchRequest, serve_watch

__all__ = ["LabServer", "LabStore", "main", "serve"]

log = logging.getLogger(__name__)

_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})
_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/livez"})
_JSON_TYPES = ("application/json",)
_DELETE_RETURNS_OBJECT = frozenset({"pods", "services", "namespaces"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class _Target:
    """What a resource URL addresses."""

    info: ResourceInfo
    namespace: str | None  # None: all namespaces (or a cluster-scoped resource)
    name: str | None
    subresource: str | None


def _json(data: Any, status: int = 200) -> web.Response:
    return _raw(msgspec.json.encode(data), status)


def _raw(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


def _parse_target(group: str, version: str, parts: list[str]) -> _Target | None:
    """Map the path after /api/v1 or /apis/{group}/{version} to a resource target."""
    if len(parts) >= 3 and parts[0] == "namespaces":
        info = lookup(group, version, parts[2])
        if info is not None and info.namespaced and len(parts) <= 5:
            name = parts[3] if len(parts) > 3 else None
            sub = parts[4] if len(parts) > 4 else None
            return _Target(info, parts[1], name, sub)
    info = lookup(group, version, parts[0]) if parts else None
    if info is None or len(parts) > 3 or (info.namespaced and len(parts) > 1):
        return None
    name = parts[1] if len(parts) > 1 else None
    sub = parts[2] if len(parts) > 2 else None
    return _Target(info, None, name, sub)


def _int_param(request: web.Request, name: str) -> int | None:
    value = request.query.get(name, "")
    if value == "":
        return None
    try:
        return int(value)
    except ValueError as err:
        raise errors.bad_request(f"invalid {name} {value!r}: {err}") from err


def _bool_param(request: web.Request, name: str) -> bool | None:
    value = request.query.get(name)
    return None if value is None else value in _TRUE


async def _read_json(request: web.Request, accepted: Collection[str] = _JSON_TYPES) -> Any:
    """The decoded JSON body; 415 when its Content-Type is not among `accepted`."""
    media = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if media and media not in accepted:
        raise errors.unsupported_media_type(media, tuple(accepted))
    body = await request.read()
    if not body:
        raise errors.bad_request("the request body is empty")
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as err:
        raise errors.bad_request(f"the request body is not valid JSON: {err}") from err


class LabServer:
    """The lab API server: an aiohttp app over a `LabStore`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        bookmark_interval: float = 1.0,
        history_limit: int = 10000,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.bookmark_interval = bookmark_interval
        self.token = token
        self.ssl_context = ssl_context
        self.store = LabStore(history_limit=history_limit)
        self._runner: web.AppRunner | None = None
        self._watch_tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and serve; with port 0 a free port is picked (see `url`)."""
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024**2)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None
        )
        await runner.setup()
        site = web.TCPSite(
            runner, self.host, self.port, reuse_address=True, ssl_context=self.ssl_context
        )
        try:
            await site.start()
        except OSError as err:
            await runner.cleanup()
            raise OSError(
                f"lab API server cannot listen on {self.host}:{self.port}: {err}"
            ) from err
        self._runner = runner
        addresses = runner.addresses  # learns the port picked for port 0
        if addresses:
            self.port = int(addresses[0][1])
        log.info("lab API server listening on %s", self.url)

    async def stop(self) -> None:
        """End all watches cleanly and stop serving."""
        if self._runner is None:
            return
        self.store.end_watches("closed")
        await self._wait_watches()
        await self._runner.cleanup()
        self._runner = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def watch_count(self) -> int:
        """How many watch requests are being served right now."""
        return sum(1 for task in self._watch_tasks if not task.done())

    async def drop_watches(self) -> None:
        """Abruptly close every open watch connection (clients see a broken stream)."""
        self.store.end_watches("dropped")
        await self._wait_watches()

    def compact(self) -> None:
        """Forget all watch history: a watch from any older resourceVersion gets 410."""
        self.store.compact()

    async def _wait_watches(self) -> None:
        tasks = [t for t in self._watch_tasks if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    def write_kubeconfig(
        self,
        path: str | os.PathLike[str],
        token: str | None = None,
        ca_file: str | None = None,
    ) -> None:
        """Write a kubeconfig (context "lab", namespace "default") pointing at `url`.

        ``ca_file`` names the CA that signed the server's certificate when serving TLS.
        """
        cluster: dict[str, Any] = {"server": self.url}
        if ca_file:
            cluster["certificate-authority"] = ca_file
        user: dict[str, Any] = {}
        token = token if token is not None else self.token
        if token:
            user["token"] = token
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "lab", "cluster": cluster}],
            "users": [{"name": "lab", "user": user}],
            "contexts": [
                {
                    "name": "lab",
                    "context": {"cluster": "lab", "user": "lab", "namespace": "default"},
                }
            ],
            "current-context": "lab",
            "preferences": {},
        }
        with open(path, "w", encoding="utf-8") as fh:
            yaml.safe_dump(config, fh, sort_keys=False)

    # -- HTTP --------------------------------------------------------------------------------

    def _needs_auth(self, request: web.Request) -> bool:
        if self.token is None or request.path in _OPEN_PATHS:
            return False
        return request.headers.get("Authorization", "") != f"Bearer {self.token}"

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if self._needs_auth(request):
                raise errors.unauthorized()
            return await handler(request)
        except errors.ApiError as err:
            return _raw(err.encode(), err.code)
        except web.HTTPException:
            raise
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as err:
            log.exception("lab API server failed on %s %s", request.method, request.path_qs)
            failure = errors.ApiError(500, "InternalError", f"internal error: {err!r}")
            return _raw(failure.encode(), 500)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if len(parts) >= 2 and parts[0] == "api":
            if parts[1] != "v1":
                raise errors.path_not_found()
            return await self._api("", "v1", parts[2:], request)
        if parts and parts[0] == "apis" and len(parts) >= 3:
            return await self._api(parts[1], parts[2], parts[3:], request)
        return self._meta(parts, request)

    def _meta(self, parts: list[str], request: web.Request) -> web.Response:
        if request.method != "GET":
            raise errors.method_not_allowed()
        path = "/" + "/".join(parts)
        doc: dict[str, Any] | None = None
        if path in _OPEN_PATHS:
            return web.Response(text="ok", content_type="text/plain")
        if path == "/version":
            doc = dict(discovery.VERSION)
        elif path == "/api":
            doc = discovery.api_versions(f"{self.host}:{self.port}")
        elif path == "/apis":
            doc = discovery.api_group_list()
        elif len(parts) == 2 and parts[0] == "apis":
            doc = discovery.api_group(parts[1])
        if doc is None:
            raise errors.path_not_found()
        return _json(doc)

    async def _api(
        self, group: str, version: str, parts: list[str], request: web.Request
    ) -> web.StreamResponse:
        if not parts:
            if request.method != "GET":
                raise errors.method_not_allowed()
            doc = discovery.api_resource_list(group, version)
            if doc is None:
                raise errors.path_not_found()
            return _json(doc)
        target = _parse_target(group, version, parts)
        if target is None:
            raise errors.path_not_found()
        if target.subresource is not None and (
            target.subresource != "status" or not target.info.has_status
        ):
            raise errors.path_not_found()
        if target.name is None:
            return await self._collection(target, request)
        return await self._item(target, request)

    # -- collections -------------------------------------------------------------------------

    async def _collection(self, target: _Target, request: web.Request) -> web.StreamResponse:
        info = target.info
        if request.method == "GET":
            if _bool_param(request, "watch"):
                return await self._watch(target, request)
            return self._list(target, request)
        if request.method == "POST" and (target.namespace is not None or not info.namespaced):
            entry = self.store.create_object(
                info, target.namespace or "", await _read_json(request)
            )
            return _raw(entry.full(), 201)
        if request.method == "DELETE":
            matcher = self.store.matcher(
                info, request.query.get("labelSelector", ""), request.query.get("fieldSelector", "")
            )
            deleted = self.store.delete_collection(info, target.namespace, matcher)
            return _raw(
                self._list_body(info, [e.raw for e in deleted], self.store.resource_version)
            )
        raise errors.method_not_allowed()

    @staticmethod
    def _list_body(
        info: ResourceInfo,
        items: list[bytes],
        rv: int,
        token: str = "",
        remaining: int | None = None,
    ) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if token:
            meta["continue"] = token
        if remaining is not None:
            meta["remainingItemCount"] = remaining
        head = (
            f'{{"kind":"{info.list_kind}","apiVersion":"{info.api_version}","metadata":'.encode()
            + msgspec.json.encode(meta)
            + b',"items":['
        )
        return head + b",".join(items) + b"]}"

    def _list(self, target: _Target, request: web.Request) -> web.Response:
        info = target.info
        query = request.query
        matcher = self.store.matcher(
            info, query.get("labelSelector", ""), query.get("fieldSelector", "")
        )
        limit = _int_param(request, "limit") or 0
        page = self.store.list_page(
            info, target.namespace, matcher, limit, query.get("continue", "")
        )
        body = self._list_body(info, page.items, page.rv, page.continue_token, page.remaining)
        return _raw(body)

    async def _watch(self, target: _Target, request: web.Request) -> web.StreamResponse:
        query = request.query
        rv_text = query.get("resourceVersion", "")
        try:
            rv = int(rv_text) if rv_text else None
        except ValueError as err:
            raise errors.bad_request(f"invalid resourceVersion {rv_text!r}") from err
        send_initial = _bool_param(request, "sendInitialEvents")
        initial_state = rv in (None, 0) if send_initial is None else send_initial
        bookmarks = bool(_bool_param(request, "allowWatchBookmarks"))
        timeout = _int_param(request, "timeoutSeconds")
        params = WatchRequest(
            info=target.info,
            namespace=target.namespace,
            matcher=self.store.matcher(
                target.info, query.get("labelSelector", ""), query.get("fieldSelector", "")
            ),
            rv=rv,
            initial_state=initial_state,
            bookmarks=bookmarks,
            initial_end_bookmark=bool(send_initial) and bookmarks,
            timeout=float(timeout) if timeout and timeout > 0 else None,
        )
        task = asyncio.current_task()
        if task is not None:
            self._watch_tasks.add(task)
        try:
            return await serve_watch(request, self.store, params, self.bookmark_interval)
        finally:
            if task is not None:
                self._watch_tasks.discard(task)

    # -- items -------------------------------------------------------------------------------

    async def _item(self, target: _Target, request: web.Request) -> web.Response:
        info, name = target.info, target.name or ""
        ns = target.namespace or ""
        status = target.subresource == "status"
        method = request.method
        if method == "GET":
            entry = self.store.get_entry(info, ns, name)
        elif method == "PUT":
            body = await _read_json(request)
            entry = self.store.replace_object(info, ns, name, body, "status" if status else "main")
        elif method == "PATCH":
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            body = await _read_json(request, PATCH_TYPES)
            entry = self.store.patch_object(info, ns, name, content_type, body, status)
        elif method == "DELETE" and not status:
            return await self._delete(target, request)
        else:
            raise errors.method_not_allowed()
        return _raw(entry.full())

    async def _delete(self, target: _Target, request: web.Request) -> web.Response:
        info, name = target.info, target.name or ""
        options: Any = {}
        if request.can_read_body:
            raw = await request.read()
            if raw.strip():
                try:
                    options = msgspec.json.decode(raw)
                except msgspec.DecodeError as err:
                    raise errors.bad_request(f"invalid DeleteOptions: {err}") from err
        preconditions = options.get("preconditions") if isinstance(options, dict) else None
        entry = self.store.delete_object(
            info,
            target.namespace or "",
            name,
            preconditions if isinstance(preconditions, dict) else None,
        )
        if info.name in _DELETE_RETURNS_OBJECT:
            return _raw(entry.full())
        uid = str(entry.decode()["metadata"].get("uid", ""))
        return _json(errors.status_success(info, name, uid))


# -- standalone ------------------------------------------------------------------------------


async def serve(
    host: str,
    port: int,
    kubeconfig: str | None,
    *,
    token: str | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (or `stop` is set); writes `kubeconfig`, prints the URL.

    The default, kube-system, kube-public and kube-node-lease namespaces are created first.
    """
    server = LabServer(host, port, token=token)
    for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
        server.store.create("namespaces", {"metadata": {"name": ns}})
    await server.start()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            log.debug("cannot install a handler for %s", sig)
    try:
        if kubeconfig:
            server.write_kubeconfig(kubeconfig)
        print(server.url, flush=True)
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m kube_router_lab.apiserver", description="in-memory Kubernetes API server"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=6443, help="port to listen on (0: any)")
    parser.add_argument("--kubeconfig", default=None, help="write a kubeconfig for it here")
    parser.add_argument("--token", default=None, help="require this bearer token")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(args.host, args.port, args.kubeconfig, token=args.token))


if __name__ == "__main__":
    main()
