"""The watch stream: one JSON event per line over a chunked HTTP response.

Selectors on a watch follow the real server's watch cache: an object that starts matching
arrives as ADDED, one that stops matching as DELETED (its previous content at the new
resourceVersion), and events of objects that match neither before nor after are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from kube_router_lab import errors
from kube_router_lab.events import Entry, Event, Watcher
from kube_router_lab.resources import ResourceInfo
from kube_router_lab.selectors import Matcher
from kube_router_lab.store import LabStore

__all__ = ["WatchRequest", "serve_watch"]

log = logging.getLogger(__name__)

_INITIAL_EVENTS_END = "k8s.io/initial-events-end"


@dataclass(slots=True)
class WatchRequest:
    """The parsed parameters of one watch."""

    info: ResourceInfo
    namespace: str | None
    matcher: Matcher | None
    rv: int | None
    initial_state: bool
    bookmarks: bool
    initial_end_bookmark: bool
    timeout: float | None


def _line(kind: bytes, obj: bytes) -> bytes:
    return b'{"type":"' + kind + b'","object":' + obj + b"}\n"


def _with_rv(entry: Entry, rv: int) -> bytes:
    """`entry`'s content at resourceVersion `rv` (for a DELETED made up by a selector)."""
    obj = entry.decode()
    obj["metadata"]["resourceVersion"] = str(rv)
    return msgspec.json.encode(obj)


def encode_event(event: Event, matcher: Matcher | None) -> bytes | None:
    """The wire line for `event` as this watch's selectors see it, or None to skip it."""
    if matcher is None:
        return _line(event.type.encode(), event.entry.full())
    now = matcher(event.entry.labels, event.entry.fields)
    if event.type == "ADDED":
        return _line(b"ADDED", event.entry.full()) if now else None
    if event.type == "DELETED":
        return _line(b"DELETED", event.entry.full()) if now else None
    before = event.prev is not None and matcher(event.prev.labels, event.prev.fields)
    if now:
        return _line(b"MODIFIED" if before else b"ADDED", event.entry.full())
    if before and event.prev is not None:
        return _line(b"DELETED", _with_rv(event.prev, event.rv))
    return None


def bookmark(info: ResourceInfo, rv: int, initial_end: bool = False) -> bytes:
    meta: dict[str, Any] = {"resourceVersion": str(rv)}
    if initial_end:
        meta["annotations"] = {_INITIAL_EVENTS_END: "true"}
    obj = {"kind": info.kind, "apiVersion": info.api_version, "metadata": meta}
    return _line(b"BOOKMARK", msgspec.json.encode(obj))


def _encode_all(events: list[Event], matcher: Matcher | None) -> bytes:
    lines = [encode_event(ev, matcher) for ev in events]
    return b"".join(line for line in lines if line is not None)


async def _start(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    return resp


async def serve_watch(
    request: web.Request, store: LabStore, params: WatchRequest, bookmark_interval: float
) -> web.StreamResponse:
    """Stream events until the timeout, the client leaves, or the server ends the watch."""
    try:
        initial, watcher = store.open_watch(
            params.info, params.namespace, params.rv, params.initial_state
        )
    except errors.ApiError as err:
        # Like the real server: 200 OK, then one ERROR event carrying the Status.
        resp = await _start(request)
        await resp.write(_line(b"ERROR", err.encode()))
        await resp.write_eof()
        return resp
    transport = request.transport
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    try:
        await resp.prepare(request)
        first = _encode_all(initial, params.matcher)
        if params.initial_end_bookmark:
            first += bookmark(params.info, store.resource_version, initial_end=True)
        if first:
            await resp.write(first)
        return await _stream(resp, store, watcher, params, bookmark_interval, transport)
    except ConnectionResetError:
        log.debug("watch client of %s went away", params.info.name)
        return resp
    finally:
        store.close_watch(watcher)


async def _stream(
    resp: web.StreamResponse,
    store: LabStore,
    watcher: Watcher,
    params: WatchRequest,
    interval: float,
    transport: asyncio.BaseTransport | None,
) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    deadline = None if params.timeout is None else loop.time() + params.timeout
    next_bookmark = loop.time() + interval
    while True:
        now = loop.time()
        if deadline is not None and now >= deadline:
            break
        wait_until = min(next_bookmark, deadline) if deadline is not None else next_bookmark
        if not params.bookmarks and deadline is None:
            wait_until = now + 3600.0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(watcher.wake.wait(), max(0.0, wait_until - now))
        if watcher.state == "dropped":
            if isinstance(transport, asyncio.WriteTransport):
                transport.abort()
            return resp
        events, rv = store.drain(watcher)
        data = _encode_all(events, params.matcher)
        if params.bookmarks and loop.time() >= next_bookmark:
            data += bookmark(params.info, rv)
            next_bookmark = loop.time() + interval
        if data:
            await resp.write(data)
        if watcher.state == "closed":
            break
    await resp.write_eof()
    return resp
