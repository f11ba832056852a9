"""Stored objects, change events and watch subscriptions of the lab store."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import msgspec

from kube_router_lab import errors
from kube_router_lab.resources import ResourceInfo
from kube_router_lab.selectors import field_value

__all__ = ["Entry", "Event", "Watcher"]

Key = tuple[str, str]
_TYPE_META = frozenset({"kind", "apiVersion"})


@functools.cache
def _split_fields(info: ResourceInfo) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return info.split_field_labels


@dataclass(slots=True)
class Entry:
    """One stored object, kept as its JSON encoding only (no dict: millions of live dicts
    would make every garbage collection crawl), plus what selectors look at.

    `raw` is the list-item encoding, without kind/apiVersion, as the real server sends items in
    lists; `full()` prepends them for GET and watch events; `decode()` gives a fresh dict.
    """

    info: ResourceInfo
    key: Key
    raw: bytes
    rv: int
    labels: dict[str, str]
    fields: dict[str, str]

    @classmethod
    def build(cls, info: ResourceInfo, obj: dict[str, Any], rv: int) -> Entry:
        """Encode `obj` (with metadata.resourceVersion already set to `rv`)."""
        meta = obj["metadata"]
        item = {k: v for k, v in obj.items() if k not in _TYPE_META}
        try:
            raw = msgspec.json.encode(item)
        except (msgspec.EncodeError, TypeError, ValueError) as err:
            raise errors.bad_request(f"the object is not valid JSON data: {err}") from err
        labels = meta.get("labels")
        labels = {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}
        namespace = meta.get("namespace") or ""
        fields = {"metadata.name": meta["name"], "metadata.namespace": namespace}
        for path, parts in _split_fields(info):
            fields[path] = field_value(obj, parts)
        return cls(info, (namespace, meta["name"]), raw, rv, labels, fields)

    @property
    def namespace(self) -> str:
        return self.key[0]

    @property
    def name(self) -> str:
        return self.key[1]

    def full(self) -> bytes:
        return self.info.item_prefix + self.raw[1:]

    def decode(self) -> dict[str, Any]:
        """A fresh dict of the full object (with kind and apiVersion)."""
        out: dict[str, Any] = msgspec.json.decode(self.full())
        return out


@dataclass(slots=True)
class Event:
    """A change at global resourceVersion `rv`; `prev` is the state before a MODIFIED."""

    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    entry: Entry
    prev: Entry | None = None


class Watcher:
    """One open watch: events are appended by the store (under its lock, from any thread)
    and consumed by the HTTP handler on the event loop it was created on."""

    def __init__(self, info: ResourceInfo, namespace: str | None) -> None:
        self.info = info
        self.namespace = namespace
        self.events: deque[Event] = deque()
        self.wake = asyncio.Event()
        self.state = "open"  # open, closed (end the stream cleanly), dropped (cut the connection)
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()

    def wants(self, entry: Entry) -> bool:
        return self.namespace is None or entry.namespace == self.namespace

    def push(self, event: Event) -> None:
        self.events.append(event)
        self._notify()

    def end(self, state: str) -> None:
        """Ask the handler to stop: "closed" ends the response, "dropped" cuts the connection."""
        if self.state == "open":
            self.state = state
        self._notify()

    def _notify(self) -> None:
        if threading.get_ident() == self._thread:
            self.wake.set()
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.wake.set)
