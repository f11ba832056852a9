"""Label and field selectors with the grammar and semantics of the Kubernetes API.

Label selectors::

    selector    ::= requirement ("," requirement)*
    requirement ::= "!" KEY | KEY | KEY ("=" | "==" | "!=") VALUE
                  | KEY ("in" | "notin") "(" VALUE ("," VALUE)* ")" | KEY ("<" | ">") INTEGER

`!=` and `notin` also match objects without the key, as in the real server.

Field selectors are `path=value`, `path==value` or `path!=value` joined by commas; a backslash
escapes `,`, `=`, `!` and `\\` in values. Only the paths a resource supports are accepted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FieldRequirement",
    "FieldSelector",
    "LabelRequirement",
    "LabelSelector",
    "Matcher",
    "SelectorError",
    "field_value",
    "object_matcher",
    "parse_field_selector",
    "parse_label_selector",
]

_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_PREFIX_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_INT_RE = re.compile(r"^-?[0-9]+$")
_SPECIAL = frozenset(" \t\n\r,()=!<>")
_OPS = ("==", "!=", "=", "<", ">")


class SelectorError(ValueError):
    """A selector string that does not parse or names an unsupported field."""


@dataclass(frozen=True, slots=True)
class LabelRequirement:
    """One label requirement; `op` is one of = != in notin exists !exists < >."""

    key: str
    op: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.op
        if op == "exists":
            return self.key in labels
        if op == "!exists":
            return self.key not in labels
        value = labels.get(self.key)
        if op in ("=", "in"):
            return value is not None and value in self.values
        if op in ("!=", "notin"):
            return value is None or value not in self.values
        if value is None or not _INT_RE.match(value):
            return False
        bound = int(self.values[0])
        return int(value) > bound if op == ">" else int(value) < bound


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A conjunction of label requirements; empty matches everything."""

    requirements: tuple[LabelRequirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(req.matches(labels) for req in self.requirements)


def _validate_key(key: str) -> None:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _PREFIX_RE.match(prefix)):
        raise SelectorError(f"invalid label key {key!r}: prefix must be a DNS subdomain")
    if len(name) > 63 or not _NAME_RE.match(name):
        raise SelectorError(
            f"invalid label key {key!r}: name part must be 63 characters or less, "
            "alphanumeric, '-', '_' or '.', starting and ending with an alphanumeric character"
        )


def _validate_value(value: str) -> None:
    if value and (len(value) > 63 or not _NAME_RE.match(value)):
        raise SelectorError(
            f"invalid label value {value!r}: must be 63 characters or less, empty or "
            "alphanumeric, '-', '_' or '.', starting and ending with an alphanumeric character"
        )


def _tokenize(text: str) -> list[str]:
    """Split into identifiers, operators and punctuation; whitespace separates."""
    tokens: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\n\r":
            i += 1
        elif ch in ",()":
            tokens.append(ch)
            i += 1
        elif ch in "=!<>":
            two = text[i : i + 2]
            op = two if two in ("==", "!=") else ch
            tokens.append(op)
            i += len(op)
        else:
            j = i
            while j < n and text[j] not in _SPECIAL:
                j += 1
            tokens.append(text[i:j])
            i = j
    return tokens


def _is_ident(token: str | None) -> bool:
    return token is not None and token[0] not in _SPECIAL


class _LabelParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str | None:
        token = self.peek()
        self.pos += 1
        return token

    def fail(self, found: str | None, expected: str) -> SelectorError:
        shown = "end of string" if found is None else repr(found)
        return SelectorError(
            f"unable to parse requirement: found {shown}, expected: {expected} "
            f"(selector {self.text!r})"
        )

    def parse(self) -> LabelSelector:
        reqs: list[LabelRequirement] = []
        if self.peek() is None:
            return LabelSelector()
        while True:
            reqs.append(self.requirement())
            token = self.take()
            if token is None:
                return LabelSelector(tuple(reqs))
            if token != ",":
                raise self.fail(token, "','")

    def requirement(self) -> LabelRequirement:
        token = self.take()
        if token == "!":
            key = self.take()
            if not _is_ident(key):
                raise self.fail(key, "identifier after '!'")
            assert key is not None
            _validate_key(key)
            return LabelRequirement(key, "!exists")
        if not _is_ident(token):
            raise self.fail(token, "identifier")
        assert token is not None
        _validate_key(token)
        return self.restriction(token)

    def restriction(self, key: str) -> LabelRequirement:
        op = self.peek()
        if op is None or op == ",":
            return LabelRequirement(key, "exists")
        self.pos += 1
        if op in ("in", "notin"):
            return LabelRequirement(key, op, self.value_set())
        if op not in _OPS:
            raise self.fail(op, "'=', '==', '!=', 'in', 'notin', '<' or '>'")
        value = self.peek()
        if _is_ident(value):
            self.pos += 1
        else:
            value = ""
        assert value is not None
        if op in ("<", ">"):
            if not _INT_RE.match(value):
                raise SelectorError(
                    f"for '<' and '>' operators the value must be an integer: {value!r}"
                )
            return LabelRequirement(key, op, (value,))
        _validate_value(value)
        return LabelRequirement(key, "=" if op == "==" else op, (value,))

    def value_set(self) -> tuple[str, ...]:
        token = self.take()
        if token != "(":
            raise self.fail(token, "'('")
        values: list[str] = []
        expect_value = True
        while True:
            token = self.take()
            if token == ")":
                if expect_value and values:
                    values.append("")
                break
            if token == ",":
                if expect_value:
                    values.append("")
                expect_value = True
            elif _is_ident(token) and expect_value:
                assert token is not None
                values.append(token)
                expect_value = False
            else:
                raise self.fail(token, "value, ',' or ')'")
        if not values:
            raise SelectorError("for 'in', 'notin' operators, values set can't be empty")
        for value in values:
            _validate_value(value)
        return tuple(sorted(set(values)))


def parse_label_selector(text: str) -> LabelSelector:
    """Parse a label selector string; raises SelectorError."""
    return _LabelParser(text).parse()


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    path: str
    op: str  # "=" or "!="
    value: str


def field_value(obj: Mapping[str, Any], path: str | tuple[str, ...]) -> str:
    """The string form of the field at a dotted `path` ("" when absent), as selectors see it.

    `path` may be given pre-split (a tuple of parts), which is faster in bulk.
    """
    cur: Any = obj
    for part in path.split(".") if isinstance(path, str) else path:
        if type(cur) is not dict and not isinstance(cur, Mapping):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if cur is True or cur is False:
        return "true" if cur else "false"
    return cur if type(cur) is str else str(cur)


@dataclass(frozen=True, slots=True)
class FieldSelector:
    """A conjunction of field requirements; empty matches everything."""

    requirements: tuple[FieldRequirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, fields: Mapping[str, str]) -> bool:
        """Match against field values by path (see `field_value`); absent paths are ""."""
        for req in self.requirements:
            equal = fields.get(req.path, "") == req.value
            if equal != (req.op == "="):
                return False
        return True

    def matches_object(self, obj: Mapping[str, Any]) -> bool:
        return self.matches({req.path: field_value(obj, req.path) for req in self.requirements})

    def names(self) -> set[str] | None:
        """The only object names this selector can match (metadata.name=x), else None."""
        for req in self.requirements:
            if req.path == "metadata.name" and req.op == "=":
                return {req.value}
        return None


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(value: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(value):
        if value[i] == "\\":
            if i + 1 >= len(value) or value[i + 1] not in "\\,=!":
                raise SelectorError(f"invalid escape sequence in field selector value {value!r}")
            out.append(value[i + 1])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def _field_requirement(term: str) -> FieldRequirement:
    for op_text, op in (("!=", "!="), ("==", "="), ("=", "=")):
        idx = _find_unescaped(term, op_text)
        if idx >= 0:
            path = term[:idx].strip()
            value = _unescape(term[idx + len(op_text) :].strip())
            return FieldRequirement(path, op, value)
    raise SelectorError(f"invalid field selector term {term!r}: expected path=value or path!=value")


def _find_unescaped(text: str, needle: str) -> int:
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text.startswith(needle, i):
            return i
        i += 1
    return -1


def parse_field_selector(text: str, supported: Collection[str]) -> FieldSelector:
    """Parse a field selector; paths outside `supported` raise SelectorError like the server."""
    if not text.strip():
        return FieldSelector()
    reqs: list[FieldRequirement] = []
    for term in _split_unescaped(text, ","):
        if not term.strip():
            raise SelectorError(f"invalid field selector {text!r}: empty term")
        req = _field_requirement(term)
        if req.path not in supported:
            raise SelectorError(f"field label not supported: {req.path}")
        reqs.append(req)
    return FieldSelector(tuple(reqs))


Matcher = Callable[[Mapping[str, str], Mapping[str, str]], bool]


def object_matcher(labels: LabelSelector, fields: FieldSelector) -> Matcher:
    """One predicate for both selectors over (labels, field values by path)."""
    if fields.empty:
        return lambda obj_labels, _fields: labels.matches(obj_labels)
    if labels.empty:
        return lambda _labels, obj_fields: fields.matches(obj_fields)
    return lambda obj_labels, obj_fields: labels.matches(obj_labels) and fields.matches(obj_fields)
