"""Checks and preparation of objects written to the lab store (pure, no store state)."""

from __future__ import annotations

import itertools
import random
import re
import time
import uuid
from collections.abc import Container
from datetime import UTC, datetime
from typing import Any

from kube_router_lab import errors
from kube_router_lab.resources import ResourceInfo

__all__ = [
    "check_name",
    "generate_name",
    "namespace_of",
    "new_uid",
    "normalize",
    "now",
    "spec_part",
]

_NAME_RULES = {
    "subdomain": (
        253,
        re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
    ),
    "label": (63, re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")),
    "label1035": (63, re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")),
}
_TOP_META = frozenset({"kind", "apiVersion", "metadata"})
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


_now_cache: tuple[int, str] = (0, "")
_uid_prefix = uuid.uuid4().hex[:20]
_uid_counter = itertools.count(1)


def now() -> str:
    """The current time as the API server writes timestamps (RFC 3339, seconds, UTC)."""
    global _now_cache  # noqa: PLW0603 - a one-entry cache, formatting is slow in bulk loads
    second = int(time.time())
    if _now_cache[0] != second:
        stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        _now_cache = (second, stamp)
    return _now_cache[1]


def new_uid() -> str:
    """A UUID-shaped uid, unique per process (random prefix, counter suffix; faster than uuid4
    for bulk loads, and clients treat uids as opaque)."""
    p = _uid_prefix
    return f"{p[:8]}-{p[8:12]}-4{p[13:16]}-a{p[17:20]}-{next(_uid_counter):012x}"


def spec_part(info: ResourceInfo, obj: dict[str, Any]) -> dict[str, Any]:
    """What a generation bump looks at: everything but metadata (and status, if a subresource)."""
    skip = ("metadata", "status", "kind", "apiVersion") if info.has_status else ("metadata",)
    return {k: v for k, v in obj.items() if k not in skip}


def namespace_of(info: ResourceInfo, obj: Any) -> str:
    """The namespace a directly written object goes to ("default" when unset)."""
    if not info.namespaced:
        return ""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    namespace = meta.get("namespace") if isinstance(meta, dict) else None
    return str(namespace or "default")


def normalize(info: ResourceInfo, body: Any, namespace: str) -> dict[str, Any]:
    """A copy of `body` with kind, apiVersion and namespace checked and set.

    Only the top level and metadata are copied: the store keeps nothing but the encoding, and
    whatever mutates deeper (service defaulting) copies what it changes.
    """
    if not isinstance(body, dict):
        raise errors.bad_request(f"the body must be a JSON object, not {type(body).__name__}")
    for field, want in (("kind", info.kind), ("apiVersion", info.api_version)):
        got = body.get(field)
        if got not in (None, "", want):
            raise errors.bad_request(f"{field} {got!r} in the data does not match {want!r}")
    meta = body.get("metadata") or {}
    if not isinstance(meta, dict):
        raise errors.bad_request("metadata must be a JSON object")
    meta = dict(meta)
    if info.namespaced:
        if meta.get("namespace") and meta["namespace"] != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent "
                "on the request"
            )
        meta["namespace"] = namespace
    else:
        meta.pop("namespace", None)
    rest = {k: v for k, v in body.items() if k not in _TOP_META}
    return {"kind": info.kind, "apiVersion": info.api_version, "metadata": meta, **rest}


def check_name(info: ResourceInfo, name: str) -> None:
    """422 Invalid unless `name` is set and valid for the resource."""
    if not name:
        raise errors.invalid(
            info,
            name,
            "metadata.name",
            "FieldValueRequired",
            "Required value: name or generateName is required",
        )
    limit, pattern = _NAME_RULES[info.name_format]
    if len(name) > limit or not pattern.match(name):
        detail = (
            f'Invalid value: "{name}": must be at most {limit} lowercase alphanumeric '
            "characters, '-' or '.', starting and ending with an alphanumeric character"
        )
        raise errors.invalid(info, name, "metadata.name", "FieldValueInvalid", detail)


def generate_name(meta: dict[str, Any], taken: Container[tuple[str, str]]) -> None:
    """Fill metadata.name from metadata.generateName plus five random characters."""
    prefix = meta.get("generateName")
    if meta.get("name") or not prefix:
        return
    while True:
        name = str(prefix) + "".join(random.choices(_GENERATE_ALPHABET, k=5))
        if (meta.get("namespace") or "", name) not in taken:
            meta["name"] = name
            return
