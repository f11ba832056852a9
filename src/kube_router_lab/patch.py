"""The three PATCH formats of the Kubernetes API, on plain JSON values.

* JSON merge patch (RFC 7386): maps merge recursively, `null` deletes, anything else replaces.
* Strategic merge patch: like merge patch, but lists of objects under a known field name merge
  item by item on a merge key (`containers` by `name`, `ports` by `port`, ...), and the
  directives `$patch: replace|delete|merge`, `$deleteFromPrimitiveList/<field>` and
  `$setElementOrder/<field>` (accepted, order not enforced) are understood. Lists without a
  known key, or whose items lack it, are replaced, which is also what the real server does for
  lists without a patch strategy.
* JSON patch (RFC 6902): add, remove, replace, move, copy, test over JSON pointers (RFC 6901).

All functions are pure: they return a new document and never modify their arguments.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = [
    "MERGE_KEYS",
    "PatchError",
    "apply_json_patch",
    "apply_merge_patch",
    "apply_strategic_merge_patch",
    "create_merge_patch",
]

# field name -> candidate merge keys, first present in every patch item wins.
MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "volumes": ("name",),
    "env": ("name",),
    "imagePullSecrets": ("name",),
    "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",),
    "ports": ("port", "containerPort", "name"),
    "ingress": ("ip", "hostname"),
    "conditions": ("type",),
    "addresses": ("type",),
    "taints": ("key",),
    "ownerReferences": ("uid",),
    "hostAliases": ("ip",),
    "containerStatuses": ("name",),
    "initContainerStatuses": ("name",),
    "podIPs": ("ip",),
    "hostIPs": ("ip",),
}
# Lists of scalars whose strategy is "merge" (set union) rather than replace.
MERGE_SCALAR_LISTS = frozenset({"finalizers"})

_DELETE_PRIMITIVE = "$deleteFromPrimitiveList/"
_SET_ORDER = "$setElementOrder/"
_RETAIN_KEYS = "$retainKeys"
_PLAIN_DIRECTIVES = frozenset({"$patch", _RETAIN_KEYS})


class PatchError(ValueError):
    """A patch that cannot be applied; `bad_request` is True when the patch itself is malformed
    (HTTP 400), False when it is well formed but fails against the document (HTTP 422)."""

    def __init__(self, message: str, *, bad_request: bool = False) -> None:
        super().__init__(message)
        self.bad_request = bad_request


# ---------------------------------------------------------------------------------------------
# RFC 7386 merge patch


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 merge patch to `target`."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out: dict[str, Any] = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = apply_merge_patch(out.get(key), value)
    return out


def create_merge_patch(source: Any, target: Any) -> Any:
    """The RFC 7386 patch turning `source` into `target` (a helper for tests and clients).

    `target` must not contain nulls inside maps (merge patch cannot express them).
    """
    if not isinstance(source, dict) or not isinstance(target, dict):
        return copy.deepcopy(target)
    patch: dict[str, Any] = {}
    for key in source:
        if key not in target:
            patch[key] = None
    for key, value in target.items():
        if key not in source:
            patch[key] = copy.deepcopy(value)
        elif source[key] != value:
            patch[key] = create_merge_patch(source[key], value)
    return patch


# ---------------------------------------------------------------------------------------------
# strategic merge patch


def apply_strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Apply a strategic merge patch (see module doc for the supported subset)."""
    if not isinstance(patch, dict):
        raise PatchError("strategic merge patch must be a JSON object", bad_request=True)
    base = copy.deepcopy(target) if isinstance(target, dict) else {}
    result = _smp_map(base, patch)
    return {} if result is None else result


def _smp_map(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any] | None:
    """Merge `patch` into `target` (owned, mutated); None means "delete this map"."""
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        replaced: dict[str, Any] = _strip_directives(patch)
        return replaced
    if directive not in (None, "merge"):
        raise PatchError(f"unknown $patch directive {directive!r}", bad_request=True)
    for key, value in patch.items():
        if key.startswith(_DELETE_PRIMITIVE):
            _delete_from_primitive_list(target, key[len(_DELETE_PRIMITIVE) :], value)
        elif key in ("$patch", _RETAIN_KEYS) or key.startswith(_SET_ORDER):
            continue
        elif value is None:
            target.pop(key, None)
        else:
            _smp_field(target, key, value)
    return target


def _smp_field(target: dict[str, Any], key: str, value: Any) -> None:
    current = target.get(key)
    if isinstance(value, dict):
        merged = _smp_map(current if isinstance(current, dict) else {}, value)
        if merged is None:
            target.pop(key, None)
        else:
            target[key] = merged
    elif isinstance(value, list):
        target[key] = _smp_list(key, current if isinstance(current, list) else [], value)
    else:
        target[key] = copy.deepcopy(value)


def _delete_from_primitive_list(target: dict[str, Any], field: str, values: Any) -> None:
    if not isinstance(values, list):
        raise PatchError(f"{_DELETE_PRIMITIVE}{field} must be a list", bad_request=True)
    current = target.get(field)
    if isinstance(current, list):
        target[field] = [item for item in current if item not in values]


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _strip_directives(v)
            for k, v in value.items()
            if k not in _PLAIN_DIRECTIVES and not k.startswith((_SET_ORDER, _DELETE_PRIMITIVE))
        }
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return copy.deepcopy(value)


def _merge_key(field: str, items: list[Any]) -> str | None:
    dict_items = [item for item in items if isinstance(item, dict)]
    if len(dict_items) != len(items) or not items:
        return None
    for key in MERGE_KEYS.get(field, ()):
        if all(key in item for item in dict_items if item.get("$patch") != "replace"):
            return key
    return None


def _smp_list(field: str, current: list[Any], patch: list[Any]) -> list[Any]:
    if any(isinstance(i, dict) and i.get("$patch") == "replace" and len(i) == 1 for i in patch):
        return [_strip_directives(i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
    if field in MERGE_SCALAR_LISTS and all(not isinstance(i, (dict, list)) for i in patch):
        return current + [copy.deepcopy(i) for i in patch if i not in current]
    key = _merge_key(field, patch)
    if key is None or not all(isinstance(item, dict) for item in current):
        return [_strip_directives(item) for item in patch]
    out = list(current)
    for item in patch:
        idx = next((i for i, cur in enumerate(out) if cur.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                del out[idx]
        elif idx is None:
            out.append(_strip_directives(item))
        else:
            merged = _smp_map(out[idx], item)
            if merged is None:
                del out[idx]
            else:
                out[idx] = merged
    return out


# ---------------------------------------------------------------------------------------------
# RFC 6902 JSON patch


def _parse_pointer(pointer: Any) -> list[str]:
    if not isinstance(pointer, str) or (pointer and not pointer.startswith("/")):
        raise PatchError(f"invalid JSON pointer {pointer!r}", bad_request=True)
    if pointer == "":
        return []
    return [part.replace("~1", "/").replace("~0", "~") for part in pointer[1:].split("/")]


def _list_index(container: list[Any], token: str, *, for_add: bool) -> int:
    if for_add and token == "-":
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise PatchError(f"invalid array index {token!r}")
    idx = int(token)
    limit = len(container) if for_add else len(container) - 1
    if idx > limit:
        raise PatchError(f"array index {idx} out of range")
    return idx


def _resolve(doc: Any, parts: list[str]) -> Any:
    cur = doc
    for part in parts:
        if isinstance(cur, dict):
            if part not in cur:
                raise PatchError(f"path element {part!r} not found")
            cur = cur[part]
        elif isinstance(cur, list):
            cur = cur[_list_index(cur, part, for_add=False)]
        else:
            raise PatchError(f"cannot descend into a scalar at {part!r}")
    return cur


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _resolve(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_list_index(parent, last, for_add=True), value)
    else:
        raise PatchError(f"cannot add to a scalar at {last!r}")
    return doc


def _remove(doc: Any, parts: list[str]) -> tuple[Any, Any]:
    """Remove the value at `parts`; returns (document, removed value)."""
    if not parts:
        raise PatchError("cannot remove the whole document")
    parent = _resolve(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"path element {last!r} not found")
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_list_index(parent, last, for_add=False))
    raise PatchError(f"cannot remove from a scalar at {last!r}")


def _json_equal(a: Any, b: Any) -> bool:
    # JSON equality: bools are not numbers (Python treats True == 1).
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and bool(a == b)


def _apply_op(doc: Any, op: dict[str, Any]) -> Any:
    name = op.get("op")
    parts = _parse_pointer(op.get("path"))
    if name in ("add", "replace", "test") and "value" not in op:
        raise PatchError(f"{name} operation needs a value", bad_request=True)
    if name == "add":
        return _add(doc, parts, copy.deepcopy(op["value"]))
    if name == "remove":
        return _remove(doc, parts)[0]
    if name == "replace":
        _resolve(doc, parts)
        if not parts:
            return copy.deepcopy(op["value"])
        doc, _ = _remove(doc, parts)
        return _add(doc, parts, copy.deepcopy(op["value"]))
    if name in ("move", "copy"):
        source = _parse_pointer(op.get("from"))
        if name == "move":
            if parts[: len(source)] == source and len(parts) > len(source):
                raise PatchError("cannot move a value into one of its own children")
            doc, value = _remove(doc, source)
        else:
            value = copy.deepcopy(_resolve(doc, source))
        return _add(doc, parts, value)
    if name == "test":
        if not _json_equal(_resolve(doc, parts), op["value"]):
            raise PatchError(f"test operation failed at {op.get('path')!r}")
        return doc
    raise PatchError(f"unknown JSON patch operation {name!r}", bad_request=True)


def apply_json_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 6902 JSON patch (a list of operations) atomically."""
    if not isinstance(patch, list):
        raise PatchError("JSON patch must be a list of operations", bad_request=True)
    doc = copy.deepcopy(target)
    for index, op in enumerate(patch):
        if not isinstance(op, dict):
            raise PatchError(f"JSON patch operation {index} is not an object", bad_request=True)
        try:
            doc = _apply_op(doc, op)
        except PatchError as err:
            raise PatchError(
                f"JSON patch operation {index} ({op.get('op')}): {err}",
                bad_request=err.bad_request,
            ) from err
    return doc
