"""The in-memory object store of the lab API server.

Like etcd behind the real server, every write bumps one global resourceVersion and is appended
to a bounded event history that watches replay from. Objects are kept per resource in a dict
keyed by (namespace, name), each both as a dict and as its JSON encoding (re-encoded on write
only), so lists are built by joining bytes.

The store is thread-safe (one re-entrant lock); watches are notified on their own event loop.
"""

from __future__ import annotations

import bisect
import gc
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from kube_router_lab import errors
from kube_router_lab.defaults import Defaulter
from kube_router_lab.events import Entry, Event, Watcher
from kube_router_lab.objects import (
    check_name,
    generate_name,
    namespace_of,
    new_uid,
    normalize,
    now,
    spec_part,
)
from kube_router_lab.pagination import Page, Paginator
from kube_router_lab.patch import (
    PatchError,
    apply_json_patch,
    apply_merge_patch,
    apply_strategic_merge_patch,
)
from kube_router_lab.resources import RESOURCES, ResourceInfo, resource_info
from kube_router_lab.selectors import (
    Matcher,
    SelectorError,
    object_matcher,
    parse_field_selector,
    parse_label_selector,
)

__all__ = ["PATCH_TYPES", "LabStore", "Page"]

log = logging.getLogger(__name__)

Key = tuple[str, str]

PATCH_TYPES: dict[str, Callable[[Any, Any], Any]] = {
    "application/json-patch+json": apply_json_patch,
    "application/merge-patch+json": apply_merge_patch,
    "application/strategic-merge-patch+json": apply_strategic_merge_patch,
}


class LabStore:
    """All objects of the lab API server, with history and watch fan-out."""

    def __init__(
        self,
        *,
        history_limit: int = 10000,
        defaulter: Defaulter | None = None,
        max_snapshots: int = 64,
    ) -> None:
        self._lock = threading.RLock()
        self._rv = 0
        self._objects: dict[str, dict[Key, Entry]] = {info.name: {} for info in RESOURCES}
        self._sorted: dict[str, list[Key] | None] = {}
        self._history: deque[Event] = deque()
        self._history_limit = history_limit
        self._compacted_rv = 0
        self._watchers: dict[str, set[Watcher]] = {info.name: set() for info in RESOURCES}
        self._pages = Paginator(max_snapshots)
        self._defaults = defaulter or Defaulter()

    @property
    def resource_version(self) -> int:
        """The global resourceVersion of the last write."""
        return self._rv

    # -- dict API for tests, benchmarks and the demo ----------------------------------------

    def create(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create `obj` (namespace from its metadata, "default" when unset); returns a copy."""
        info = resource_info(resource)
        return self.create_object(info, namespace_of(info, obj), obj).decode()

    def update(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Replace the whole object, status included (unlike an HTTP PUT); 409 on stale rv."""
        info = resource_info(resource)
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        name = str(meta.get("name") or "") if isinstance(meta, dict) else ""
        ns = namespace_of(info, obj)
        return self.replace_object(info, ns, name, obj, mode="full").decode()

    def patch(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        patch: Any,
        patch_type: str = "application/merge-patch+json",
        *,
        status: bool = False,
    ) -> dict[str, Any]:
        """Patch like an HTTP PATCH (of the status subresource when `status`)."""
        info = resource_info(resource)
        return self.patch_object(info, namespace or "", name, patch_type, patch, status).decode()

    def delete(self, resource: str, namespace: str | None, name: str) -> dict[str, Any]:
        """Delete an object; returns its last state with the deletion's resourceVersion."""
        return self.delete_object(resource_info(resource), namespace or "", name).decode()

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any]:
        return self.get_entry(resource_info(resource), namespace or "", name).decode()

    def list_objects(
        self,
        resource: str,
        namespace: str | None = None,
        *,
        label_selector: str = "",
        field_selector: str = "",
    ) -> list[dict[str, Any]]:
        """Matching objects (full, with kind/apiVersion), sorted by namespace and name."""
        info = resource_info(resource)
        matcher = self.matcher(info, label_selector, field_selector)
        with self._lock:
            entries = self._scan(info, namespace, matcher)
        return [entry.decode() for entry in entries]

    def load(self, resource: str, objs: Iterable[dict[str, Any]]) -> None:
        """Bulk insert or overwrite objects without HTTP, keeping uid/creationTimestamp when set.

        Each object still gets its own resourceVersion and watch event.
        """
        info = resource_info(resource)
        # The cyclic GC would rescan the growing heap many times over; nothing here makes cycles.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            with self._lock:
                for body in objs:
                    self._load_one(info, body)
        finally:
            if gc_was_enabled:
                gc.enable()

    def compact(self) -> None:
        """Forget all watch history and continue tokens: older resourceVersions get 410."""
        with self._lock:
            self._history.clear()
            self._compacted_rv = self._rv
            self._pages.clear()

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def matcher(info: ResourceInfo, label_selector: str, field_selector: str) -> Matcher | None:
        """Compile selectors (400 BadRequest when malformed); None when both are empty."""
        try:
            labels = parse_label_selector(label_selector)
            fields = parse_field_selector(field_selector, info.field_paths)
        except SelectorError as err:
            raise errors.bad_request(str(err)) from err
        if labels.empty and fields.empty:
            return None
        return object_matcher(labels, fields)

    def _entry(self, info: ResourceInfo, namespace: str, name: str) -> Entry:
        entry = self._objects[info.name].get((namespace if info.namespaced else "", name))
        if entry is None:
            raise errors.not_found(info, name)
        return entry

    # -- operations used by the HTTP layer --------------------------------------------------

    def get_entry(self, info: ResourceInfo, namespace: str, name: str) -> Entry:
        with self._lock:
            return self._entry(info, namespace, name)

    def create_object(self, info: ResourceInfo, namespace: str, body: Any) -> Entry:
        obj = normalize(info, body, namespace)
        meta = obj["metadata"]
        with self._lock:
            generate_name(meta, self._objects[info.name])
            name = str(meta.get("name") or "")
            check_name(info, name)
            if (namespace, name) in self._objects[info.name]:
                raise errors.already_exists(info, name)
            meta.pop("resourceVersion", None)
            meta.update(uid=new_uid(), creationTimestamp=now(), generation=1)
            try:
                self._defaults.prepare(info, obj, None)
            except errors.ApiError:
                self._defaults.release(info, obj)
                raise
            return self._commit(info, "ADDED", obj, None)

    def replace_object(
        self, info: ResourceInfo, namespace: str, name: str, body: Any, mode: str = "main"
    ) -> Entry:
        """PUT: `mode` "main" keeps the stored status (if a subresource), "status" changes only
        the status, "full" replaces everything (direct store writes)."""
        obj = normalize(info, body, namespace)
        meta = obj["metadata"]
        if not name or (meta.get("name") and meta["name"] != name):
            raise errors.bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the "
                f"URL ({name})"
            )
        meta["name"] = name
        with self._lock:
            old = self._entry(info, namespace, name)
            given_rv = meta.get("resourceVersion")
            if given_rv not in (None, "") and str(given_rv) != str(old.rv):
                raise errors.conflict(info, name)
            return self._apply_update(info, old, self._merge_mode(info, old, obj, mode))

    @staticmethod
    def _merge_mode(
        info: ResourceInfo, old: Entry, obj: dict[str, Any], mode: str
    ) -> dict[str, Any]:
        if mode == "status":
            new = old.decode()
            new["status"] = obj.get("status")
            if new["status"] is None:
                del new["status"]
            return new
        if mode == "main" and info.has_status:
            current = old.decode()
            obj.pop("status", None)
            if "status" in current:
                obj["status"] = current["status"]
        return obj

    def _apply_update(self, info: ResourceInfo, old: Entry, obj: dict[str, Any]) -> Entry:
        meta = obj["metadata"]
        old_obj = old.decode()
        old_meta = old_obj["metadata"]
        for field in ("uid", "creationTimestamp"):
            meta[field] = old_meta.get(field)
        generation = int(old_meta.get("generation") or 1)
        if spec_part(info, obj) != spec_part(info, old_obj):
            generation += 1
        meta["generation"] = generation
        meta["resourceVersion"] = str(old.rv)
        try:
            self._defaults.prepare(info, obj, old_obj)
        except errors.ApiError:
            self._defaults.restore(info, old_obj)
            raise
        if obj == old_obj:
            return old  # a no-op update does not bump the resourceVersion
        return self._commit(info, "MODIFIED", obj, old)

    def patch_object(
        self,
        info: ResourceInfo,
        namespace: str,
        name: str,
        patch_type: str,
        patch: Any,
        status: bool = False,
    ) -> Entry:
        apply = PATCH_TYPES.get(patch_type)
        if apply is None:
            raise errors.unsupported_media_type(patch_type, tuple(PATCH_TYPES))
        with self._lock:
            old = self._entry(info, namespace, name)
            current = old.decode()
            try:
                patched = apply(current, patch)
            except PatchError as err:
                if err.bad_request:
                    raise errors.bad_request(str(err)) from err
                raise errors.invalid(info, name, "", "FieldValueInvalid", str(err)) from err
            if not isinstance(patched, dict):
                raise errors.bad_request("the patch must produce a JSON object")
            mode = "status" if status else "main"
            return self.replace_object(info, namespace, name, patched, mode)

    def delete_object(
        self,
        info: ResourceInfo,
        namespace: str,
        name: str,
        preconditions: dict[str, Any] | None = None,
    ) -> Entry:
        with self._lock:
            old = self._entry(info, namespace, name)
            self._check_preconditions(info, old, preconditions or {})
            if info.name == "namespaces":
                self._delete_namespace_contents(name)
            return self._delete_entry(old)

    def _check_preconditions(
        self, info: ResourceInfo, old: Entry, preconditions: dict[str, Any]
    ) -> None:
        meta = old.decode()["metadata"]
        for field, current in (("uid", meta.get("uid")), ("resourceVersion", str(old.rv))):
            wanted = preconditions.get(field)
            if wanted and wanted != current:
                why = (
                    f"Precondition failed: {field} in precondition: {wanted}, "
                    f"{field} in object meta: {current}"
                )
                raise errors.conflict(info, meta["name"], why)

    def _delete_entry(self, old: Entry) -> Entry:
        obj = old.decode()
        self._defaults.release(old.info, obj)
        return self._commit(old.info, "DELETED", obj, old)

    def _delete_namespace_contents(self, namespace: str) -> None:
        for info in RESOURCES:
            if info.namespaced:
                for entry in self._scan(info, namespace, None):
                    self._delete_entry(entry)

    def delete_collection(
        self, info: ResourceInfo, namespace: str | None, matcher: Matcher | None
    ) -> list[Entry]:
        with self._lock:
            return [
                self.delete_object(info, entry.namespace, entry.name)
                for entry in self._scan(info, namespace, matcher)
            ]

    def _load_one(self, info: ResourceInfo, body: dict[str, Any]) -> None:
        obj = normalize(info, body, namespace_of(info, body))
        meta = obj["metadata"]
        generate_name(meta, self._objects[info.name])
        check_name(info, str(meta.get("name") or ""))
        old = self._objects[info.name].get((meta.get("namespace") or "", meta["name"]))
        meta.pop("resourceVersion", None)
        old_obj = old.decode() if old else None
        if not meta.get("uid"):
            meta["uid"] = old_obj["metadata"]["uid"] if old_obj else new_uid()
        meta.setdefault("creationTimestamp", now())
        meta.setdefault("generation", 1)
        self._defaults.prepare(info, obj, old_obj)
        self._commit(info, "MODIFIED" if old else "ADDED", obj, old)

    def _commit(
        self, info: ResourceInfo, kind: str, obj: dict[str, Any], prev: Entry | None
    ) -> Entry:
        """Store a write at the next resourceVersion and tell the watches (lock held)."""
        rv = self._rv + 1
        obj["metadata"]["resourceVersion"] = str(rv)
        entry = Entry.build(info, obj, rv)  # raises on unencodable data: nothing changed yet
        self._rv = rv
        table = self._objects[info.name]
        key = entry.key
        if kind == "DELETED":
            del table[key]
            self._sorted.pop(info.name, None)
        else:
            if key not in table:
                self._sorted.pop(info.name, None)
            table[key] = entry
        event = Event(self._rv, kind, entry, prev)
        if len(self._history) >= self._history_limit > 0:
            self._compacted_rv = self._history.popleft().rv
        if self._history_limit > 0:
            self._history.append(event)
        else:
            self._compacted_rv = self._rv
        for watcher in self._watchers[info.name]:
            if watcher.wants(entry):
                watcher.push(event)
        return entry

    # -- list --------------------------------------------------------------------------------

    def _scan(
        self, info: ResourceInfo, namespace: str | None, matcher: Matcher | None
    ) -> list[Entry]:
        """Matching entries sorted by (namespace, name) (lock held)."""
        table = self._objects[info.name]
        keys = self._sorted.get(info.name)
        if keys is None:
            keys = self._sorted[info.name] = sorted(table)
        if namespace is not None and info.namespaced:
            lo = bisect.bisect_left(keys, (namespace, ""))
            hi = bisect.bisect_left(keys, (namespace + "\x00", ""))
            keys = keys[lo:hi]
        entries = [table[key] for key in keys]
        if matcher is None:
            return entries
        return [entry for entry in entries if matcher(entry.labels, entry.fields)]

    def list_page(
        self,
        info: ResourceInfo,
        namespace: str | None,
        matcher: Matcher | None,
        limit: int = 0,
        continue_token: str = "",
    ) -> Page:
        """One page of a list; with `limit`, the rest stays in a snapshot the token points at."""
        with self._lock:
            if continue_token:
                snap_id, start, entries, rv = self._pages.resume(info.name, continue_token)
            else:
                snap_id, start = "", 0
                entries, rv = self._scan(info, namespace, matcher), self._rv
            return self._pages.page(
                info.name, entries, rv, limit, snap_id, start, counted=matcher is None
            )

    # -- watch -------------------------------------------------------------------------------

    def open_watch(
        self, info: ResourceInfo, namespace: str | None, rv: int | None, initial_state: bool
    ) -> tuple[list[Event], Watcher]:
        """Register a watch; returns the events to send first and the subscription.

        With `initial_state`, the first events are synthetic ADDED ones for every current
        object; else with `rv` None the watch starts now; else the retained history after `rv`
        is replayed (410 Expired when it is no longer retained).
        """
        watcher = Watcher(info, namespace if info.namespaced else None)
        with self._lock:
            if initial_state:
                initial = [Event(e.rv, "ADDED", e) for e in self._scan(info, namespace, None)]
            elif rv is None:
                initial = []
            elif rv < self._compacted_rv:
                raise errors.expired(f"too old resource version: {rv} ({self._compacted_rv})")
            else:
                initial = [
                    ev
                    for ev in self._history
                    if ev.rv > rv and ev.entry.info is info and watcher.wants(ev.entry)
                ]
            self._watchers[info.name].add(watcher)
        return initial, watcher

    def drain(self, watcher: Watcher) -> tuple[list[Event], int]:
        """Take the watcher's pending events and the resourceVersion they bring it up to."""
        with self._lock:
            events = list(watcher.events)
            watcher.events.clear()
            watcher.wake.clear()
            return events, self._rv

    def close_watch(self, watcher: Watcher) -> None:
        with self._lock:
            self._watchers[watcher.info.name].discard(watcher)

    def end_watches(self, state: str) -> int:
        """End every open watch ("closed" or "dropped"); returns how many there were."""
        with self._lock:
            watchers = [w for group in self._watchers.values() for w in group]
        for watcher in watchers:
            watcher.end(state)
        log.debug("ended %d watches (%s)", len(watchers), state)
        return len(watchers)
