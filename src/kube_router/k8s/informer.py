"""List+watch informer decoding bytes straight into slim models.

One informer per resource: a paginated list fills the store (a relist diffs against it and emits
the adds, updates and deletes it finds), then a watch from the list's resourceVersion with
bookmarks keeps it current. 410 Gone (an HTTP status or an ERROR event) means relist; a dropped
connection means re-watch from the last seen resourceVersion after a backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol

import msgspec

from kube_router.k8s import models
from kube_router.k8s.client import ApiError, GoneError, KubeClient, Params
from kube_router.k8s.resources import Resource
from kube_router.k8s.store import IndexFunc, Store, T

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 500
WATCH_TIMEOUT_RANGE_S = (300, 600)
READ_TIMEOUT_SLACK_S = 30.0
BACKOFF_INITIAL_S = 0.2
BACKOFF_MAX_S = 30.0
HTTP_GONE = 410


class EventHandler(Protocol[T]):  # type: ignore[misc]
    """Receives store changes. Called on the event loop; must be quick and must not block."""

    def on_add(self, obj: T) -> None: ...

    def on_update(self, old: T, new: T) -> None: ...

    def on_delete(self, obj: T) -> None: ...


@dataclass
class FuncHandler(Generic[T]):
    """An EventHandler from optional callables."""

    add: Callable[[T], None] | None = None
    update: Callable[[T, T], None] | None = None
    delete: Callable[[T], None] | None = None

    def on_add(self, obj: T) -> None:
        if self.add:
            self.add(obj)

    def on_update(self, old: T, new: T) -> None:
        if self.update:
            self.update(old, new)

    def on_delete(self, obj: T) -> None:
        if self.delete:
            self.delete(obj)


class _RawEvent(msgspec.Struct):
    type: str
    object: msgspec.Raw


class _Relist(Exception):
    """Internal: the watch must be abandoned for a relist."""


class Informer(Generic[T]):
    """Keeps a Store of one resource in sync with the API server."""

    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str = "",
        field_selector: str = "",
        page_size: int = DEFAULT_PAGE_SIZE,
        indexers: Mapping[str, IndexFunc[T]] | None = None,
        watch_timeout_range: tuple[int, int] = WATCH_TIMEOUT_RANGE_S,
    ) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.page_size = page_size
        self.watch_timeout_range = watch_timeout_range
        self.store: Store[T] = Store(indexers)
        self.resource_version = ""
        self.relists = 0
        self._handlers: list[EventHandler[T]] = []
        self._synced = asyncio.Event()
        self._obj_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(resource.model)
        self._list_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(
            _list_type(resource.model)
        )
        self._event_decoder = msgspec.json.Decoder(_RawEvent)

    @property
    def name(self) -> str:
        return self.resource.plural

    def add_handler(self, handler: EventHandler[T]) -> None:
        """Register a handler; objects already in the store are replayed to it as adds."""
        self._handlers.append(handler)
        for obj in self.store.list():
            self._call(handler.on_add, obj)

    def has_synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._synced.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        """List, then watch, forever. Cancel the task to stop."""
        backoff = BACKOFF_INITIAL_S
        need_list = True
        while True:
            listing = need_list
            try:
                if need_list:
                    await self._list()
                    need_list = False
                await self._watch()
                backoff = BACKOFF_INITIAL_S
                continue
            except (_Relist, GoneError) as err:
                log.info("%s: relisting: %s", self.name, err)
                need_list = True
                if not listing:
                    continue  # a watch expired: relist at once, as client-go does
            except msgspec.DecodeError as err:
                # A response we cannot parse: do not trust the cache's position, start over.
                log.error("%s: undecodable response, relisting: %s", self.name, err)
                need_list = True
            except ApiError as err:
                log.warning("%s: %s; retrying in %.1fs", self.name, err, backoff)
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _selectors(self) -> list[tuple[str, str]]:
        params = []
        if self.label_selector:
            params.append(("labelSelector", self.label_selector))
        if self.field_selector:
            params.append(("fieldSelector", self.field_selector))
        return params

    async def _list(self) -> None:
        path = self.resource.collection_path(self.namespace)
        items: dict[str, T] = {}
        cont = ""
        while True:
            params: Params = [*self._selectors(), ("limit", str(self.page_size))]
            if cont:
                params = [*params, ("continue", cont)]
            page = self._list_decoder.decode(await self.client.request("GET", path, params))
            for obj in page.items:
                items[models.object_key(obj.metadata)] = obj
            cont = page.metadata.continue_
            if not cont:
                break
        self.resource_version = page.metadata.resource_version
        self.relists += 1
        self._replace(items)
        self._synced.set()
        log.debug("%s: listed %d objects at rv %s", self.name, len(items), self.resource_version)

    def _replace(self, items: dict[str, T]) -> None:
        for key in self.store.key_list():
            if key not in items:
                old = self.store.remove(key)
                if old is not None:
                    self._dispatch_delete(old)
        for obj in items.values():
            old = self.store.get(models.object_key(obj.metadata))
            if old is not None and old.metadata.resource_version == obj.metadata.resource_version:
                continue
            self.store.upsert(obj)
            self._dispatch_upsert(old, obj)

    async def _watch(self) -> None:
        timeout = random.randint(*self.watch_timeout_range)
        params = [
            *self._selectors(),
            ("watch", "1"),
            ("resourceVersion", self.resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout)),
        ]
        path = self.resource.collection_path(self.namespace)
        async for line in self.client.stream_lines(path, params, timeout + READ_TIMEOUT_SLACK_S):
            self._handle_event(line)

    def _handle_event(self, line: bytes) -> None:
        ev = self._event_decoder.decode(line)
        if ev.type == "ERROR":
            status = msgspec.json.decode(ev.object, type=models.Status)
            if status.code == HTTP_GONE:
                raise _Relist(f"watch expired: {status.message}")
            raise ApiError("WATCH", self.name, status.code, status.reason, status.message)
        obj = self._obj_decoder.decode(ev.object)
        self.resource_version = obj.metadata.resource_version or self.resource_version
        if ev.type == "BOOKMARK":
            return
        key = models.object_key(obj.metadata)
        if ev.type == "DELETED":
            old = self.store.remove(key)
            self._dispatch_delete(old if old is not None else obj)
        elif ev.type in ("ADDED", "MODIFIED"):
            self._dispatch_upsert(self.store.upsert(obj), obj)
        else:
            log.warning("%s: unknown watch event type %r", self.name, ev.type)

    def _dispatch_upsert(self, old: T | None, new: T) -> None:
        for h in self._handlers:
            if old is None:
                self._call(h.on_add, new)
            else:
                self._call(h.on_update, old, new)

    def _dispatch_delete(self, obj: T) -> None:
        for h in self._handlers:
            self._call(h.on_delete, obj)

    def _call(self, func: Callable[..., None], *args: T) -> None:
        try:
            func(*args)
        except Exception:
            # A broken handler must not stop the cache for every other consumer.
            log.exception("%s: event handler %s failed", self.name, func)


def _list_type(model: type[Any]) -> type[Any]:
    return msgspec.defstruct(
        f"{model.__name__}List",
        [
            ("metadata", models.ListMeta, msgspec.field(default_factory=models.ListMeta)),
            ("items", list[model], msgspec.field(default_factory=list)),  # type: ignore[valid-type]
        ],
    )
