"""List pagination: `limit` + `continue` over a snapshot taken at the first page.

The continue token is opaque to clients (base64 JSON naming the snapshot and an offset). The
remaining pages come from the first page's snapshot, so a paginated list is consistent with the
first page's resourceVersion. Snapshots are kept for the most recent lists only; a token whose
snapshot is gone gets 410 Expired, a malformed token 400 BadRequest, as on the real server.
"""

from __future__ import annotations

import base64
import binascii
import itertools
from collections import OrderedDict
from dataclasses import dataclass

import msgspec

from kube_router_lab import errors
from kube_router_lab.events import Entry

__all__ = ["Page", "Paginator"]

_EXPIRED_CONTINUE = (
    "The provided continue parameter is too old to display a consistent list result. "
    "You can start a new list without the continue parameter."
)


@dataclass(slots=True)
class Page:
    """One list response: encoded items, the list resourceVersion and the continue token."""

    items: list[bytes]
    rv: int
    continue_token: str = ""
    remaining: int | None = None


@dataclass(slots=True)
class _Snapshot:
    resource: str
    rv: int
    entries: list[Entry]
    counted: bool  # report remainingItemCount (the real server omits it with selectors)


class Paginator:
    """Bounded set of list snapshots that continue tokens point at (caller holds the lock)."""

    def __init__(self, max_snapshots: int = 64) -> None:
        self._snapshots: OrderedDict[str, _Snapshot] = OrderedDict()
        self._max = max_snapshots
        self._ids = itertools.count(1)

    def clear(self) -> None:
        self._snapshots.clear()

    def resume(self, resource: str, token: str) -> tuple[str, int, list[Entry], int]:
        """(snapshot id, start, entries, rv) for a continue token of a list of `resource`.

        The snapshot holds the first page's matches: selectors of later requests are ignored.
        """
        snap_id, start = _decode(token)
        snapshot = self._snapshots.get(snap_id)
        if snapshot is None or snapshot.resource != resource:
            raise errors.expired(_EXPIRED_CONTINUE)
        self._snapshots.move_to_end(snap_id)
        return snap_id, start, snapshot.entries, snapshot.rv

    def page(
        self,
        resource: str,
        entries: list[Entry],
        rv: int,
        limit: int,
        snap_id: str = "",
        start: int = 0,
        *,
        counted: bool = True,
    ) -> Page:
        """The page of `entries` from `start`; keeps a snapshot when more pages remain."""
        if limit <= 0 or start + limit >= len(entries):
            self._snapshots.pop(snap_id, None)
            return Page([e.raw for e in entries[start:]], rv)
        if not snap_id:
            snap_id = str(next(self._ids))
            self._snapshots[snap_id] = _Snapshot(resource, rv, entries, counted)
            while len(self._snapshots) > self._max:
                self._snapshots.popitem(last=False)
        end = start + limit
        token = _encode(snap_id, rv, end)
        remaining = len(entries) - end if self._snapshots[snap_id].counted else None
        return Page([e.raw for e in entries[start:end]], rv, token, remaining)


def _encode(snap_id: str, rv: int, start: int) -> str:
    data = msgspec.json.encode({"v": "lab.kube-router/v1", "rv": rv, "id": snap_id, "start": start})
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _decode(token: str) -> tuple[str, int]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = msgspec.json.decode(raw)
        return str(data["id"]), int(data["start"])
    except (binascii.Error, msgspec.DecodeError, KeyError, TypeError, ValueError) as err:
        raise errors.bad_request(f"invalid continue token: {err}") from err
