"""A small command-line parser that behaves like Go's ``spf13/pflag``.

Upstream kube-router parses its flags with pflag, and operators keep their DaemonSet arguments when
they swap in our image, so the syntax, the value parsers (Go's ``time.ParseDuration`` here, the
rest in :mod:`kube_router.goparse`) and the error wording follow Go. Only what kube-router uses
is here: long flags, single-letter shorthands, booleans, strings, durations, unsigned integers
and string, unsigned-integer and IP slices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kube_router.goparse import (
    IPAddress,
    go_quote,
    parse_bool,
    parse_ip,
    parse_uint,
    read_csv,
    write_csv,
)

NANOSECOND = 1
MICROSECOND = 1000 * NANOSECOND
MILLISECOND = 1000 * MICROSECOND
SECOND = 1000 * MILLISECOND
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

_INT64_LIMIT = 1 << 63  # |min int64|; Go durations are int64 nanoseconds
_UINT_BITS = 64  # pflag's uint is a Go uint, 64 bits on every platform we run on
_ASCII_LIMIT = 0x80
_DURATION_UNITS = {
    "ns": NANOSECOND,
    "us": MICROSECOND,
    "\u00b5s": MICROSECOND,  # micro sign
    "\u03bcs": MICROSECOND,  # Greek small letter mu
    "ms": MILLISECOND,
    "s": SECOND,
    "m": MINUTE,
    "h": HOUR,
}


class UsageError(Exception):
    """The command line cannot be used: the message is one line meant for the operator."""


class FlagError(UsageError):
    """A flag is unknown, misspelt, lacks its argument or has a value of the wrong type."""


class ConfigError(UsageError):
    """A flag parsed but its value is refused by a start-up check; ``flag`` is ``--name``."""

    def __init__(self, flag: str, reason: str) -> None:
        super().__init__(f"{flag}: {reason}")
        self.flag = flag
        self.reason = reason


# --- durations ----------------------------------------------------------------------------------


def _time_quote(text: str) -> str:
    """Quote ``text`` the way Go's ``time`` package does in its error messages."""
    out = ['"']
    for char in text:
        if ord(char) >= _ASCII_LIMIT or char < " ":
            out.extend(f"\\x{byte:02x}" for byte in char.encode("utf-8", "surrogatepass"))
        else:
            out.append("\\" + char if char in '"\\' else char)
    out.append('"')
    return "".join(out)


def _leading_int(text: str) -> tuple[int, str]:
    index, value = 0, 0
    while index < len(text) and "0" <= text[index] <= "9":
        value = value * 10 + ord(text[index]) - ord("0")
        if value > _INT64_LIMIT:
            raise OverflowError
        index += 1
    return value, text[index:]


def _leading_fraction(text: str) -> tuple[int, float, str]:
    index, value, scale, overflow = 0, 0, 1.0, False
    while index < len(text) and "0" <= text[index] <= "9":
        candidate = value * 10 + ord(text[index]) - ord("0")
        if overflow or value > (_INT64_LIMIT - 1) // 10 or candidate > _INT64_LIMIT:
            overflow = True
        else:
            value, scale = candidate, scale * 10
        index += 1
    return value, scale, text[index:]


def _duration_term(rest: str, invalid: ValueError, original: str) -> tuple[int, str]:
    """Consume one ``[0-9]*(.[0-9]*)?unit`` term; return its nanoseconds and the remainder."""
    if not (rest[0] == "." or "0" <= rest[0] <= "9"):
        raise invalid
    try:
        whole, after = _leading_int(rest)
    except OverflowError:
        raise invalid from None
    had_int, frac, scale, had_frac = len(after) != len(rest), 0, 1.0, False
    if after.startswith("."):
        frac, scale, tail = _leading_fraction(after[1:])
        had_frac, after = len(tail) != len(after) - 1, tail
    if not had_int and not had_frac:
        raise invalid
    end = 0
    while end < len(after) and not (after[end] == "." or "0" <= after[end] <= "9"):
        end += 1
    if end == 0:
        raise ValueError(f"time: missing unit in duration {_time_quote(original)}")
    unit_name, after = after[:end], after[end:]
    unit = _DURATION_UNITS.get(unit_name)
    if unit is None:
        raise ValueError(
            f"time: unknown unit {_time_quote(unit_name)} in duration {_time_quote(original)}"
        )
    if whole > _INT64_LIMIT // unit:
        raise invalid
    value = whole * unit
    if frac > 0:
        value += int(float(frac) * (float(unit) / scale))
        if value > _INT64_LIMIT:
            raise invalid
    return value, after


def parse_duration(text: str) -> int:
    """Go's ``time.ParseDuration``: return nanoseconds or raise ``ValueError`` with Go's text."""
    invalid = ValueError(f"time: invalid duration {_time_quote(text)}")
    rest, negative = text, False
    if rest[:1] in ("-", "+"):
        negative, rest = rest[0] == "-", rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise invalid
    total = 0
    while rest:
        value, rest = _duration_term(rest, invalid, text)
        total += value
        if total > _INT64_LIMIT:
            raise invalid
    if negative:
        return -total
    if total > _INT64_LIMIT - 1:
        raise invalid
    return total


def _fraction(value: int, precision: int) -> tuple[int, str]:
    """Split ``value`` into its integer part and ``.ddd`` (no trailing zeros) at ``precision``."""
    whole, frac = divmod(value, 10**precision)
    digits = f"{frac:0{precision}d}".rstrip("0") if precision else ""
    return whole, f".{digits}" if digits else ""


def format_duration(nanoseconds: int) -> str:
    """Go's ``time.Duration.String``: ``1m30s``, ``300ms``, ``2h22m0s``, ``0s``."""
    magnitude = abs(nanoseconds)
    if magnitude == 0:
        return "0s"
    if magnitude < SECOND:
        if magnitude < MICROSECOND:
            precision, unit = 0, "ns"
        elif magnitude < MILLISECOND:
            precision, unit = 3, "\u00b5s"
        else:
            precision, unit = 6, "ms"
        whole, frac = _fraction(magnitude, precision)
        text = f"{whole}{frac}{unit}"
    else:
        seconds, frac = _fraction(magnitude, 9)
        minutes, hours = seconds // 60, seconds // 3600
        text = f"{seconds % 60}{frac}s"
        if minutes:
            text = f"{minutes % 60}m{text}"
        if hours:
            text = f"{hours}h{text}"
    return "-" + text if nanoseconds < 0 else text


def _parse_ip_slice(text: str) -> list[IPAddress]:
    cleaned = text.replace('"', "").replace("'", "").replace("`", "")
    try:
        items = read_csv(cleaned)
    except ValueError as err:
        if str(err) != "EOF":  # pflag ignores io.EOF from the CSV reader here
            raise
        items = []
    out = []
    for item in items:
        ip = parse_ip(item.strip())
        if ip is None:
            raise ValueError(f"invalid string being converted to IP address: {item}")
        out.append(ip)
    return out


def _parse_uint_slice(text: str) -> list[int]:
    return [parse_uint(item, 10, _UINT_BITS) for item in text.split(",")]


# --- flag definitions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FlagType:
    """A pflag value type: its Go type name, the word usage shows, and its parser."""

    name: str
    varname: str
    convert: Callable[[str], object]
    is_bool: bool = False
    is_slice: bool = False


BOOL = FlagType("bool", "", parse_bool, is_bool=True)
STRING = FlagType("string", "string", str)
DURATION = FlagType("duration", "duration", parse_duration)
UINT = FlagType("uint", "uint", lambda text: parse_uint(text, 0, _UINT_BITS))
UINT8 = FlagType("uint8", "uint8", lambda text: parse_uint(text, 0, 8))
UINT16 = FlagType("uint16", "uint16", lambda text: parse_uint(text, 0, 16))
UINT32 = FlagType("uint32", "uint32", lambda text: parse_uint(text, 0, 32))
STRING_SLICE = FlagType("stringSlice", "strings", read_csv, is_slice=True)
UINT_SLICE = FlagType("uintSlice", "uints", _parse_uint_slice, is_slice=True)
IP_SLICE = FlagType("ipSlice", "ipSlice", _parse_ip_slice, is_slice=True)
_ZERO_DEFAULTS = {"bool": "false", "duration": "0s", "string": "", "stringSlice": "[]"}


@dataclass(frozen=True)
class FlagSpec:
    """One flag: ``default`` is written as it would be on the command line (slices comma-joined)."""

    name: str
    type: FlagType
    default: str
    help: str
    group: str = ""
    shorthand: str = ""
    attr: str = field(default="")

    def __post_init__(self) -> None:
        if not self.attr:
            object.__setattr__(self, "attr", self.name.replace("-", "_"))

    @property
    def type_name(self) -> str:
        """pflag's name for the value type (``bool``, ``duration``, ``stringSlice``...)."""
        return self.type.name

    @property
    def display_name(self) -> str:
        """How pflag names the flag in an invalid-value error: ``--name`` or ``-v, --v``."""
        return f"-{self.shorthand}, --{self.name}" if self.shorthand else f"--{self.name}"

    def default_value(self) -> object:
        """The parsed default, of the same Python type as a parsed command-line value."""
        if self.type.is_slice and self.default == "":
            return []
        return self.type.convert(self.default)

    def default_text(self) -> str:
        """The default as pflag shows it in usage (``1m30s``, ``[10.96.0.0/12]``, ``true``)."""
        value = self.default_value()
        if isinstance(value, list):
            items = [str(item) for item in value]
            return "[" + (",".join(items) if self.type is UINT_SLICE else write_csv(items)) + "]"
        if isinstance(value, bool):
            return "true" if value else "false"
        if self.type is DURATION and isinstance(value, int):
            return format_duration(value)
        return str(value)

    def default_is_zero(self) -> bool:
        """pflag leaves ``(default ...)`` out of usage for zero defaults (uint/IP slices never)."""
        text = self.default_text()
        if self.type.name.startswith("uint") and not self.type.is_slice:
            return text == "0"
        return _ZERO_DEFAULTS.get(self.type.name) == text


@dataclass
class ParsedFlags:
    """The outcome of parsing: values by attribute, names of flags given, positional arguments."""

    values: dict[str, object]
    changed: set[str] = field(default_factory=set)
    args: list[str] = field(default_factory=list)


def _quote_rune(char: str) -> str:
    return "'" + ("\\" + char if char in "'\\" else char) + "'"


class _Parser:
    def __init__(self, specs: Sequence[FlagSpec]) -> None:
        self.by_name = {spec.name: spec for spec in specs}
        self.by_short = {spec.shorthand: spec for spec in specs if spec.shorthand}
        self.result = ParsedFlags({spec.attr: spec.default_value() for spec in specs})

    def set(self, spec: FlagSpec, text: str) -> None:
        try:
            value = spec.type.convert(text)
        except ValueError as err:
            raise FlagError(
                f"invalid argument {go_quote(text)} for {go_quote(spec.display_name)} flag: {err}"
            ) from None
        if spec.type.is_slice and spec.name in self.result.changed:
            previous = self.result.values[spec.attr]
            assert isinstance(previous, list) and isinstance(value, list)
            value = previous + value
        self.result.values[spec.attr] = value
        self.result.changed.add(spec.name)

    def long(self, arg: str, rest: list[str]) -> None:
        name = arg[2:]
        if not name or name[0] in "-=":
            raise FlagError(f"bad flag syntax: {arg}")
        name, equals, text = name.partition("=")
        spec = self.by_name.get(name)
        if spec is None:
            raise FlagError(f"unknown flag: --{name}")
        if not equals:
            if spec.type.is_bool:
                text = "true"
            elif rest:
                text = rest.pop(0)
            else:
                raise FlagError(f"flag needs an argument: --{name}")
        self.set(spec, text)

    def short(self, arg: str, rest: list[str]) -> None:
        shorts = arg[1:]
        while shorts:
            spec = self.by_short.get(shorts[0])
            if spec is None:
                raise FlagError(f"unknown shorthand flag: {_quote_rune(shorts[0])} in -{shorts}")
            if len(shorts) > 2 and shorts[1] == "=":
                text, remaining = shorts[2:], ""
            elif spec.type.is_bool:
                text, remaining = "true", shorts[1:]
            elif len(shorts) > 1:
                text, remaining = shorts[1:], ""
            elif rest:
                text, remaining = rest.pop(0), ""
            else:
                raise FlagError(f"flag needs an argument: {_quote_rune(shorts[0])} in -{shorts}")
            self.set(spec, text)
            shorts = remaining

    def parse(self, argv: Sequence[str]) -> ParsedFlags:
        rest = list(argv)
        while rest:
            arg = rest.pop(0)
            if len(arg) < 2 or arg[0] != "-":
                self.result.args.append(arg)
            elif arg == "--":
                self.result.args.extend(rest)
                break
            elif arg[1] == "-":
                self.long(arg, rest)
            else:
                self.short(arg, rest)
        return self.result


def parse_flags(specs: Sequence[FlagSpec], argv: Sequence[str]) -> ParsedFlags:
    """Parse ``argv`` (without the program name) like pflag; raise ``FlagError`` on a bad flag.

    Slice flags accumulate: the first use replaces the default, later uses append.
    """
    return _Parser(specs).parse(argv)


def render_usage(specs: Sequence[FlagSpec], program: str) -> str:
    """Usage text laid out like pflag's: flags sorted by long name, help texts aligned."""
    rows = []
    for spec in sorted(specs, key=lambda item: item.name):
        head = f"  -{spec.shorthand}, --{spec.name}" if spec.shorthand else f"      --{spec.name}"
        if spec.type.varname:
            head += " " + spec.type.varname
        body = spec.help
        if not spec.default_is_zero():
            shown = spec.default_text()
            body += f" (default {go_quote(shown) if spec.type is STRING else shown})"
        rows.append((head, body))
    width = max(len(head) for head, _ in rows)
    lines = [f"Usage of {program}:"]
    lines.extend(head + " " * (width - len(head) + 3) + body for head, body in rows)
    return "\n".join(lines) + "\n"
