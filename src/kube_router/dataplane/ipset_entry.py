"""ipset elements: parsing, kernel keys, canonical text (shared by the model and the fake).

One parser serves two masters. The strict fake uses it to read ``ipset restore`` lines the way
``ipset`` 7.17 does (including the expansions the tool performs: a CIDR or range in an IPv4
``hash:ip`` adds every address, a range in ``hash:net`` becomes CIDR blocks, a port range in
``hash:ip,port`` adds every port). The model uses it to normalise entries: an entry is valid for a
set when it parses to exactly one kernel element without a kernel-side error.

A kernel element is a key ``(address, prefix length, protocol, port)`` plus a ``nomatch`` flag,
which is a value, not part of the identity (re-adding with ``-exist`` flips it).

A ``list:set`` element is the name of another set (:attr:`ParsedElement.member`, no keys); its
canonical text is the name itself.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import re
import socket
from dataclasses import dataclass

HASH_IP = "hash:ip"
HASH_NET = "hash:net"
HASH_IP_PORT = "hash:ip,port"
LIST_SET = "list:set"
SET_TYPES = (HASH_IP, HASH_NET, HASH_IP_PORT, LIST_SET)
MAX_NAME_LEN = 31  # IPSET_MAXNAMELEN (32) minus the NUL
INET = "inet"
INET6 = "inet6"
FAMILIES = (INET, INET6)
HOST_BITS = {INET: 32, INET6: 128}
NOMATCH = "nomatch"
TIMEOUT = "timeout"
MAX_PORT = 65535
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_SCTP = 132
PROTO_UDPLITE = 136
NORMALIZE_CACHE_SIZE = 1 << 17  # distinct entries remembered (pod IPs, CIDRs)
# Protocols whose elements carry a real port (others only take the pseudo port 0).
PORT_PROTOCOLS = {"tcp": PROTO_TCP, "udp": PROTO_UDP, "sctp": PROTO_SCTP, "udplite": PROTO_UDPLITE}
# Canonical text: kube-router writes SCTP (and anything but tcp/udp) as the protocol number, so
# minimal images without an /etc/protocols entry for sctp still work (reference §4.1).
PROTO_TEXT = {PROTO_TCP: "tcp", PROTO_UDP: "udp"}
# The fake expands CIDRs/ranges element by element; beyond this it refuses rather than crawl.
MAX_FAKE_EXPANSION = 1 << 16

# libipset encodes an element as nested netlink attributes; sizes (with headers, 4-aligned)
# decide how many restore lines share one kernel message (see ipset_fake).
ATTR_HDR = 4
ATTR_SCALAR = 8  # u8/u16/u32 attribute
ADDR_ATTR = {INET: 12, INET6: 24}  # nest header + address attribute
ATTR_ALIGN = 4

# inet_aton forms ipset accepts and we do not model: octal/hex parts, fewer than four parts
_ATON_LIKE = re.compile(r"^(0x[0-9a-fA-F]+|[0-9]+)(\.(0x[0-9a-fA-F]+|[0-9]+)){0,3}$")

Key = tuple[int, int, int, int]  # (address, prefix length, protocol, port)


class IPSetError(Exception):
    """Base of every ipset port error."""


class EntryError(IPSetError, ValueError):
    """An element the ipset tool itself rejects while parsing (before anything reaches the kernel).

    ``with_line`` says whether the tool names the line (some port errors and unknown arguments are
    printed without one); ``returncode`` is the tool's exit status (2 for usage errors).
    """

    def __init__(self, reason: str, *, with_line: bool = True, returncode: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.with_line = with_line
        self.returncode = returncode


class InvalidEntryError(IPSetError, ValueError):
    """An entry our model refuses (it would not be stored as written)."""


class FakeUnsupportedError(IPSetError):
    """Input the real tool may accept but the fake does not model (hostnames, octal, icmp...)."""


@dataclass(slots=True)
class ParsedElement:
    """One restore ``add``/``del`` line after parsing: the keys it stands for and its wire size."""

    keys: list[Key]
    nomatch: bool
    wire_size: int
    kernel_error: str | None = None
    timeout: bool = False  # an explicit per-element timeout was given
    member: str = ""  # list:set: the name of the member set


def format_addr(value: int, family: str) -> str:
    """The text ``ipset save`` prints for an address (inet_ntop: compressed IPv6)."""
    if family == INET:
        return socket.inet_ntoa(value.to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))


def parse_addr(text: str, family: str) -> int:
    """A literal address of ``family`` as an integer, or EntryError as ipset words it."""
    try:
        if family == INET:
            return int(ipaddress.IPv4Address(text))
        if "%" not in text:
            return int(ipaddress.IPv6Address(text))
    except ValueError:
        pass
    parts = text.split(".")
    dotted_quad = len(parts) == 4 and all(p.isdigit() for p in parts)
    if (
        family == INET
        and _ATON_LIKE.match(text)
        and not (dotted_quad and max(map(int, parts)) > 255)
    ):
        raise FakeUnsupportedError(f"{text}: inet_aton address forms are not modelled")
    if any(c.isalpha() for c in text) and ":" not in text and "." in text:
        raise FakeUnsupportedError(f"{text}: host names are resolved by ipset, not modelled")
    fam = "IPv4" if family == INET else "IPv6"
    raise EntryError(f"Syntax error: cannot parse {text}: resolving to {fam} address failed")


def _parse_cidr(text: str, family: str) -> int:
    host = HOST_BITS[family]
    if not text.isdigit() or int(text) > host:
        raise EntryError(f"Syntax error: '{text}' is out of range 0-{host}")
    return int(text)


def _mask(addr: int, cidr: int, family: str) -> int:
    host = HOST_BITS[family]
    return addr & ~((1 << (host - cidr)) - 1) & ((1 << host) - 1)


def range_to_cidrs(first: int, last: int, family: str) -> list[tuple[int, int]]:
    """Split an address range into the fewest aligned CIDR blocks (as the kernel does)."""
    host = HOST_BITS[family]
    out: list[tuple[int, int]] = []
    while first <= last:
        size = host
        while size > 0:
            block = 1 << (host - size + 1)
            if first % block or first + block - 1 > last:
                break
            size -= 1
        out.append((first, size))
        first += 1 << (host - size)
    return out


@dataclass(slots=True)
class _Addr:
    """An address field: a single address, a CIDR, or a range, and its wire size."""

    first: int
    last: int
    cidr: int | None  # the prefix written, if any
    is_range: bool
    wire: int


def _parse_addr_field(text: str, family: str, *, plain_v6: bool) -> _Addr:
    host = HOST_BITS[family]
    if family == INET6 and text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if "-" in text:
        if family == INET6:
            what = "IP address or IP/cidr" if not plain_v6 else "plain IP address"
            raise EntryError(f"Syntax error: {what} must be specified: {text}")
        lo_text, _, hi_text = text.partition("-")
        lo, hi = parse_addr(lo_text, family), parse_addr(hi_text, family)
        lo, hi = min(lo, hi), max(lo, hi)
        return _Addr(lo, hi, None, True, 2 * ADDR_ATTR[family])
    addr_text, slash, cidr_text = text.partition("/")
    addr = parse_addr(addr_text, family)
    if not slash:
        return _Addr(addr, addr, None, False, ADDR_ATTR[family])
    if plain_v6 and family == INET6 and cidr_text != str(host):
        raise EntryError(f"Syntax error: plain IP address must be supplied: {text}")
    cidr = _parse_cidr(cidr_text, family)
    net = _mask(addr, cidr, family)
    return _Addr(net, net + (1 << (host - cidr)) - 1, cidr, False, ADDR_ATTR[family] + ATTR_SCALAR)


def _options(tokens: list[str], *, allow_nomatch: bool) -> tuple[bool, int, bool]:
    """Trailing element options -> (nomatch, extra wire bytes, has timeout)."""
    nomatch, extra, has_timeout, i = False, 0, False, 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == NOMATCH and allow_nomatch:
            nomatch, extra = True, extra + ATTR_SCALAR
        elif tok == TIMEOUT and i + 1 < len(tokens):
            if not tokens[i + 1].isdigit():
                raise EntryError(f"Syntax error: '{tokens[i + 1]}' is invalid as number")
            if int(tokens[i + 1]) != 0:
                raise FakeUnsupportedError("element timeouts other than 0 are not modelled")
            has_timeout, extra, i = True, extra + ATTR_SCALAR, i + 1
        else:
            raise EntryError(f"Unknown argument: `{tok}'", with_line=False, returncode=2)
        i += 1
    return nomatch, extra, has_timeout


def _expand_count(first: int, last: int) -> int:
    count = last - first + 1
    if count > MAX_FAKE_EXPANSION:
        raise FakeUnsupportedError(f"expanding {count} addresses is not modelled")
    return count


def _hash_ip(family: str, addr: _Addr) -> ParsedElement:
    host = HOST_BITS[family]
    if addr.first == 0:
        return ParsedElement([], False, 0, "Null-valued element, cannot be stored in a hash type")
    _expand_count(addr.first, addr.last)
    keys = [(a, host, 0, 0) for a in range(addr.first, addr.last + 1)]
    return ParsedElement(keys, False, 0)


def _hash_net(family: str, addr: _Addr) -> ParsedElement:
    if addr.is_range:
        blocks = range_to_cidrs(addr.first, addr.last, family)
        return ParsedElement([(a, c, 0, 0) for a, c in blocks], False, 0)
    cidr = HOST_BITS[family] if addr.cidr is None else addr.cidr
    if cidr == 0:
        return ParsedElement(
            [], False, 0, "The value of the CIDR parameter of the IP address is invalid"
        )
    return ParsedElement([(addr.first, cidr, 0, 0)], False, 0)


def _parse_proto_port(text: str) -> tuple[int, int, int, int]:
    """``[proto:]port[-port]`` -> (proto, first port, last port, wire bytes)."""
    proto_text, colon, port_text = text.rpartition(":")
    if not colon:
        proto_text = "tcp"
    if proto_text.isdigit():
        proto = int(proto_text)
        if proto > 255:
            raise EntryError(f"Syntax error: '{proto_text}' is out of range 0-255")
    elif proto_text in PORT_PROTOCOLS:
        proto = PORT_PROTOCOLS[proto_text]
    else:
        raise FakeUnsupportedError(f"protocol {proto_text!r} is not modelled")
    first_text, dash, last_text = port_text.partition("-")
    ports = [first_text, last_text] if dash else [first_text]
    for p in ports:
        if not p.isdigit() or int(p) > MAX_PORT:
            raise EntryError(f"Syntax error: cannot parse '{p}' as a port", with_line=False)
    lo, hi = int(ports[0]), int(ports[-1])
    if proto not in PORT_PROTOCOLS.values() and (lo or hi):
        raise EntryError(
            f"Syntax error: Protocol {proto} can be used with pseudo port value 0 only."
        )
    wire = 2 * ATTR_SCALAR + (ATTR_SCALAR if dash else 0)
    return proto, min(lo, hi), max(lo, hi), wire


def _hash_ip_port(family: str, text: str) -> ParsedElement:
    addr_text, comma, rest = text.partition(",")
    if not comma:
        raise EntryError(f"Syntax error: Second element is missing from {text}.")
    addr = _parse_addr_field(addr_text, family, plain_v6=True)
    proto, lo, hi, wire = _parse_proto_port(rest)
    if addr.first == 0:
        return ParsedElement([], False, 0, "Kernel error received: Invalid argument")
    count = _expand_count(addr.first, addr.last) * (hi - lo + 1)
    _expand_count(1, count)
    keys = [
        (a, HOST_BITS[family], proto, p)
        for a in range(addr.first, addr.last + 1)
        for p in range(lo, hi + 1)
    ]
    return ParsedElement(keys, False, addr.wire + wire)


def name_too_long(name: str) -> EntryError:
    """What ipset says (naming the line) for a set name over 31 characters."""
    return EntryError(f"Syntax error: setname '{name}' is longer than {MAX_NAME_LEN} characters")


def _list_member(tokens: list[str]) -> ParsedElement:
    """A list:set element: a set name (its existence is the kernel's business) and options."""
    name, rest = tokens[0], tokens[1:]
    if len(name) > MAX_NAME_LEN:
        raise name_too_long(name)
    if rest and rest[0] in ("before", "after"):
        raise FakeUnsupportedError(f"list:set positions ({rest[0]}) are not modelled")
    _, extra, has_timeout = _options(rest, allow_nomatch=False)
    name_attr = -(-(ATTR_HDR + len(name) + 1) // ATTR_ALIGN) * ATTR_ALIGN  # NUL, 4-aligned
    # DATA nest header + IPSET_ATTR_NAME + options + IPSET_ATTR_LINENO
    wire = ATTR_HDR + name_attr + extra + ATTR_SCALAR
    return ParsedElement([], False, wire, timeout=has_timeout, member=name)


def parse_element(
    set_type: str, family: str, tokens: list[str], *, adding: bool = True
) -> ParsedElement:
    """Parse the tokens after the set name of an ``add`` (or ``del``: ``adding=False``, which
    takes no ``nomatch``) line, as ``ipset`` does."""
    if not tokens:
        raise EntryError("Missing element", with_line=False, returncode=2)
    if set_type == LIST_SET:
        return _list_member(tokens)
    text, rest = tokens[0], tokens[1:]
    if set_type == HASH_IP_PORT:
        parsed = _hash_ip_port(family, text)
        addr_wire = 0
    else:
        addr = _parse_addr_field(text, family, plain_v6=set_type == HASH_IP)
        parsed = _hash_ip(family, addr) if set_type == HASH_IP else _hash_net(family, addr)
        addr_wire = addr.wire
    nomatch, extra, has_timeout = _options(rest, allow_nomatch=adding and set_type == HASH_NET)
    parsed.nomatch, parsed.timeout = nomatch, has_timeout
    # DATA nest header + fields + IPSET_ATTR_LINENO
    parsed.wire_size = ATTR_HDR + addr_wire + parsed.wire_size + extra + ATTR_SCALAR
    return parsed


def valid_set_name(name: str) -> bool:
    """Whether ipset takes ``name`` as a set name: 1..31 characters, no whitespace."""
    return 0 < len(name) <= MAX_NAME_LEN and not any(c.isspace() for c in name)


def format_key(set_type: str, family: str, key: Key, nomatch: bool = False) -> str:
    """The canonical entry text for a kernel element (what ``ipset save`` prints, normalised)."""
    addr, cidr, proto, port = key
    text = format_addr(addr, family)
    if set_type == HASH_IP_PORT:
        return f"{text},{PROTO_TEXT.get(proto, str(proto))}:{port}"
    if set_type == HASH_NET and cidr != HOST_BITS[family]:
        text = f"{text}/{cidr}"
    return f"{text} {NOMATCH}" if nomatch else text


@functools.lru_cache(maxsize=NORMALIZE_CACHE_SIZE)
def normalize_entry(set_type: str, family: str, entry: str) -> str:
    """The canonical text of ``entry`` for a set, or InvalidEntryError if ipset would not store
    exactly that one element (IPv6 in an inet set, a CIDR in hash:ip, a /0 in hash:net...).
    A list:set entry is a set name (1..31 characters, no whitespace, so no ``nomatch``),
    returned unchanged; any family's set may be a member.

    Cached: a pod IP sits in many sets, so a full sync normalises each distinct entry once."""
    if set_type == LIST_SET:
        if not valid_set_name(entry):
            raise InvalidEntryError(
                f"{entry!r} is not a valid list:set entry (a set name: 1..{MAX_NAME_LEN} "
                "characters, no whitespace)"
            )
        return entry
    if set_type == HASH_IP:  # fast path for the common case; the full parser explains errors
        af = socket.AF_INET if family == INET else socket.AF_INET6
        with contextlib.suppress(OSError):
            packed = socket.inet_pton(af, entry)
            if any(packed):
                return socket.inet_ntop(af, packed)
    try:
        parsed = parse_element(set_type, family, entry.split())
    except (EntryError, FakeUnsupportedError) as err:
        raise InvalidEntryError(
            f"{entry!r} is not a valid {set_type} {family} entry: {err}"
        ) from err
    if parsed.kernel_error:
        raise InvalidEntryError(f"{entry!r}: the kernel refuses it: {parsed.kernel_error}")
    if len(parsed.keys) != 1:
        raise InvalidEntryError(
            f"{entry!r} stands for {len(parsed.keys)} {set_type} elements, not one"
        )
    return format_key(set_type, family, parsed.keys[0], parsed.nomatch)
