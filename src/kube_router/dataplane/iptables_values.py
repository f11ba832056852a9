"""What iptables' option parsers accept, as the fake checks it: numbers, marks, ports, rates and
addresses, and the types the match and target specs are made of (``iptables_modules``)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass

from kube_router.dataplane.iptables_parse import Family, IPTablesError

U32_MAX = 0xFFFFFFFF
LIMIT_SCALE = 10000


PORT_MAX = 65535


class RuleError(IPTablesError):
    """A rule iptables-restore would reject (or the fake does not support)."""


@dataclass(frozen=True)
class Opt:
    name: str  # without the leading ``--``
    args: tuple[str, ...]
    neg: bool = False


@dataclass(frozen=True)
class Ctx:
    family: Family
    table: str
    set_family: Callable[[str], Family | None] | None = None


Canon = Callable[[tuple[str, ...], Ctx], tuple[str, ...]]


Post = Callable[[dict[str, Opt], Ctx, "tuple[bool, str] | None"], dict[str, Opt]]


@dataclass(frozen=True)
class OptSpec:
    nargs: int = 1
    negatable: bool = True
    canon: Canon | None = None
    quoted: bool = False


@dataclass(frozen=True)
class ModuleSpec:
    options: dict[str, OptSpec]
    post: Post | None = None
    family: Family | None = None
    protos: frozenset[str] | None = None  # required, non-negated -p
    unique: bool = False  # refuse loading twice in one rule
    tables: tuple[str, ...] | None = None  # targets only valid in these tables
    required: tuple[str, ...] = ()

    def finish(
        self, name: str, opts: dict[str, Opt], ctx: Ctx, proto: tuple[bool, str] | None
    ) -> tuple[Opt, ...]:
        if self.protos is not None and (proto is None or proto[0] or proto[1] not in self.protos):
            wanted = "' or `-p ".join(sorted(self.protos))
            raise RuleError(f"{name} needs `-p {wanted}'")
        for req in self.required:
            if req not in opts:
                raise RuleError(f"{name}: --{req} is required")
        if self.post is not None:
            opts = self.post(opts, ctx, proto)
        return tuple(opts[o] for o in self.options if o in opts)


def parse_u32(text: str) -> int:
    """An unsigned 32-bit number as strtoul(base 0) reads it."""
    low = text.lower()
    if low.startswith("0x"):
        value = int(low[2:], 16)
    elif len(low) > 1 and low.startswith("0"):
        value = int(low[1:], 8)
    else:
        value = int(low, 10)
    if not 0 <= value <= U32_MAX:
        raise ValueError(f"{text} out of range")
    return value


def parse_value_mask(text: str) -> tuple[int, int | None]:
    value, sep, mask = text.partition("/")
    return parse_u32(value), parse_u32(mask) if sep else None


def parse_port(text: str, proto: str = "tcp") -> int:
    if text.isdigit():
        port = int(text)
        if port > PORT_MAX:
            raise ValueError(f"port {text} out of range")
        return port
    try:
        return socket.getservbyname(text, proto)
    except OSError as err:
        raise ValueError(f"unknown port name {text}") from err


def parse_port_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition(":")
    first = parse_port(lo) if lo else 0
    last = (parse_port(hi) if hi else PORT_MAX) if sep else first
    if first > last:
        raise ValueError(f"invalid portrange (min > max) {text}")
    return first, last


_LIMIT_UNITS = (("day", 86400), ("hour", 3600), ("min", 60), ("sec", 1))


def limit_period(text: str) -> int:
    """``N/unit`` as the limit match's internal period (in 1/10000 s per packet)."""
    count, sep, unit = text.partition("/")
    mult = 1
    if sep:
        full = {"s": "second", "m": "minute", "h": "hour", "d": "day"}.get(unit[:1].lower())
        if full is None or not full.startswith(unit.lower()):
            raise ValueError(f"bad rate {text!r}")
        mult = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}[full]
    if mult == _LIMIT_UNITS[0][1]:
        raise ValueError("rates per day are refused by the fake (legacy and nft disagree)")
    n = int(count)
    period = LIMIT_SCALE * mult // n if n > 0 else 0
    if period == 0:
        raise ValueError("Rate too fast")
    return period


def limit_text(period: int) -> str:
    """How iptables-save prints a limit period: the coarsest unit that still divides well."""
    best = 0
    for i in range(1, len(_LIMIT_UNITS)):
        mult = _LIMIT_UNITS[i][1] * LIMIT_SCALE
        if period > mult or mult // period < mult % period:
            break
        best = i
    name, secs = _LIMIT_UNITS[best]
    return f"{secs * LIMIT_SCALE // period}/{name}"


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(value: str, family: Family) -> Network:
    """``ADDR[/LEN|/MASK]`` as iptables reads it, host bits cleared."""
    if "," in value:
        raise RuleError(f"several addresses in `{value}' (not supported by the fake)")
    host, sep, mask = value.partition("/")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError as err:
        raise RuleError(f"host/network `{host}' not found") from err
    if (addr.version == 4) != (family == "ipv4"):
        raise RuleError(f"host/network `{host}' not found")
    bits: int = addr.max_prefixlen
    if not sep:
        prefix: int = bits
    elif mask.isdigit():
        prefix = int(mask)
        if prefix > bits:
            raise RuleError(f"invalid mask `{mask}' specified")
    else:
        prefix = _dotted_mask(mask, family)
    return ipaddress.ip_network((addr, prefix), strict=False)


def _dotted_mask(mask: str, family: Family) -> int:
    try:
        net = ipaddress.ip_network(f"0.0.0.0/{mask}") if family == "ipv4" else None
    except ValueError as err:
        raise RuleError(f"invalid mask `{mask}' specified") from err
    if net is None:
        raise RuleError(f"invalid mask `{mask}' specified")
    return net.prefixlen
