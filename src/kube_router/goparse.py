"""Go's value syntax, for flags that must parse exactly as upstream's Go binary parses them.

Go's ``strconv`` (unsigned integers with ``0x``/``0o``/``0b`` prefixes and ``_`` separators,
booleans), ``%q`` quoting, ``encoding/csv`` (pflag's string slices) and ``net.ParseIP`` /
``net.ParseCIDR`` differ from Python's built-ins in small ways that change which command lines
are accepted; these functions follow Go, including the wording of its errors.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_ASCII_LIMIT = 0x80
_BMP_LIMIT = 0x10000
_INVALID_DIGIT = 99
_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_GO_ESCAPES |= {"\v": "\\v", "\\": "\\\\", '"': '\\"'}
_TRUE_WORDS = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE_WORDS = frozenset({"0", "f", "F", "FALSE", "false", "False"})


# --- strconv --------------------------------------------------------------------------


def go_quote(text: str) -> str:
    """Quote ``text`` the way Go's ``%q`` verb (``strconv.Quote``) does."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        elif code < _ASCII_LIMIT:
            out.append(f"\\x{code:02x}")
        elif code < _BMP_LIMIT:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def parse_bool(text: str) -> bool:
    """Go's ``strconv.ParseBool``."""
    if text in _TRUE_WORDS:
        return True
    if text in _FALSE_WORDS:
        return False
    raise ValueError(f"strconv.ParseBool: parsing {go_quote(text)}: invalid syntax")


def _underscores_ok(text: str) -> bool:
    """Go's rule for ``_`` digit separators (only with a base prefix, only between digits)."""
    saw, index, hexadecimal = "^", 0, False
    if len(text) >= 2 and text[0] == "0" and text[1].lower() in "box":
        index, saw, hexadecimal = 2, "0", text[1].lower() == "x"
    for char in text[index:]:
        if "0" <= char <= "9" or (hexadecimal and "a" <= char.lower() <= "f"):
            saw = "0"
        elif char == "_":
            if saw != "0":
                return False
            saw = "_"
        elif saw == "_":
            return False
        else:
            saw = "!"
    return saw != "_"


def _digit_value(char: str) -> int:
    if "0" <= char <= "9":
        return ord(char) - ord("0")
    if "a" <= char.lower() <= "z":
        return ord(char.lower()) - ord("a") + 10
    return _INVALID_DIGIT


def parse_uint(text: str, base: int, bits: int, func: str = "ParseUint") -> int:
    """Go's ``strconv.ParseUint`` (``base`` 0 honours ``0x``, ``0o``, ``0b`` and a leading 0)."""
    syntax = ValueError(f"strconv.{func}: parsing {go_quote(text)}: invalid syntax")
    if not text:
        raise syntax
    base0, digits = base == 0, text
    if base0:
        base = 10
        if text[0] == "0":
            prefixes = {"b": 2, "o": 8, "x": 16}
            if len(text) >= 3 and text[1].lower() in prefixes:
                base, digits = prefixes[text[1].lower()], text[2:]
            else:
                base, digits = 8, text[1:]
    limit, value, underscores = (1 << bits) - 1, 0, False
    for char in digits:
        if char == "_" and base0:
            underscores = True
            continue
        digit = _digit_value(char)
        if digit >= base:
            raise syntax
        value = value * base + digit
        if value > limit:
            raise ValueError(f"strconv.{func}: parsing {go_quote(text)}: value out of range")
    if underscores and not _underscores_ok(text):
        raise syntax
    return value


def parse_int(text: str, bits: int) -> int:
    """Go's ``strconv.ParseInt(text, 10, bits)``."""
    sign, digits = 1, text
    if text[:1] in ("+", "-"):
        sign, digits = (-1 if text[0] == "-" else 1), text[1:]
    try:
        magnitude = parse_uint(digits, 10, bits, func="ParseInt")
    except ValueError as err:
        raise ValueError(str(err).replace(go_quote(digits), go_quote(text), 1)) from None
    if magnitude > (1 << (bits - 1)) - (1 if sign > 0 else 0):
        raise ValueError(f"strconv.ParseInt: parsing {go_quote(text)}: value out of range")
    return sign * magnitude


# --- CSV and IP addresses -------------------------------------------------------------------------


def _csv_error(column: int, what: str) -> ValueError:
    return ValueError(f"parse error on line 1, column {column}: {what}")


def _csv_quoted(text: str, start: int) -> tuple[str, int]:
    """Read the quoted field opening at ``text[start]``; return it and the index after it."""
    value, index = [], start + 1
    while True:
        close = text.find('"', index)
        if close < 0:
            raise _csv_error(len(text.encode()) + 1, 'extraneous or missing " in quoted-field')
        value.append(text[index:close])
        index = close + 1
        if text.startswith('"', index):
            value.append('"')
            index += 1
        elif index == len(text) or text[index] in ",\n":
            return "".join(value), index
        else:
            column = len(text[:close].encode()) + 1
            raise _csv_error(column, 'extraneous or missing " in quoted-field')


def read_csv(text: str) -> list[str]:
    """Read one record like pflag's string slices do (Go ``encoding/csv``, comma-separated)."""
    if text == "":
        return []
    text = text.lstrip("\r\n").replace("\r\n", "\n")
    if not text:
        raise ValueError("EOF")
    fields: list[str] = []
    index = 0
    while True:
        if text.startswith('"', index):
            value, index = _csv_quoted(text, index)
        else:
            end = len(text)
            for stop in (",", "\n"):
                found = text.find(stop, index)
                end = found if 0 <= found < end else end
            value = text[index:end]
            if '"' in value:
                column = len(text[: index + value.index('"')].encode()) + 1
                raise _csv_error(column, 'bare " in non-quoted-field')
            index = end
        fields.append(value)
        if index >= len(text) or text[index] == "\n":
            return fields
        index += 1


def write_csv(values: Sequence[str]) -> str:
    """Write one record the way Go's ``encoding/csv`` does (used to show slice defaults)."""
    out = []
    for value in values:
        needs_quotes = value != "" and (
            any(char in value for char in ',"\r\n') or value[0] in " \t" or value == "\\."
        )
        out.append('"' + value.replace('"', '""') + '"' if needs_quotes else value)
    return ",".join(out)


def parse_ip(text: str) -> IPAddress | None:
    """Go's ``net.ParseIP``: an address without zone; an IPv4-mapped IPv6 address becomes IPv4."""
    if "%" in text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Go's ``net.ParseCIDR`` (host bits may be set); return the network."""
    invalid = ValueError(f"invalid CIDR address: {text}")
    address, slash, prefix = text.partition("/")
    ip = parse_ip(address)
    if not slash or ip is None or not prefix or not all("0" <= c <= "9" for c in prefix):
        raise invalid
    if int(prefix) > ip.max_prefixlen:
        raise invalid
    return ipaddress.ip_network(f"{ip}/{int(prefix)}", strict=False)
