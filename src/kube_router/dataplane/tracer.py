"""Push a packet through the iptables fake: which rules it hits, what becomes of it.

``trace`` starts at a built-in chain (the hook), walks rules in order, follows jumps and
``RETURN``, evaluates the whitelisted matches (with ``!``), lets ``MARK`` change the mark for
later rules, records ``NFLOG``/``LOG`` without stopping, and applies the chain policy when the
built-in chain runs out. Set membership is asked of ``ipset_contains`` (the ipset fake's).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from kube_router.dataplane.iptables_fake import FakeIPTables
from kube_router.dataplane.iptables_parse import Family, IPTablesError
from kube_router.dataplane.iptables_rule import CanonRule, Match, Opt
from kube_router.dataplane.iptables_values import parse_value_mask

ADDRESS_CACHE_SIZE = 4096
MAX_DEPTH = 64  # deeper than any ruleset we write; a loop would otherwise never end
U32_MASK = 0xFFFFFFFF
TERMINAL = frozenset({"ACCEPT", "DROP", "REJECT"})
# nat table targets: the packet is translated and leaves the chain (the verdict names them)
NAT_TERMINAL = frozenset({"MASQUERADE", "SNAT", "DNAT"})

Proto = Literal["tcp", "udp", "sctp", "icmp"]
CtState = Literal["NEW", "ESTABLISHED", "RELATED", "INVALID"]
# (set name, member as the set's dimensions spell it, the flags: "src", "dst,dst", ...)
IpsetContains = Callable[[str, str, str], bool]


@functools.lru_cache(maxsize=ADDRESS_CACHE_SIZE)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """A packet's address, parsed once: a matrix traces the same few addresses many times."""
    return ipaddress.ip_address(text)


class TraceError(IPTablesError):
    """The ruleset uses something the tracer cannot evaluate (or loops)."""


@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    proto: Proto = "tcp"
    sport: int = 0
    dport: int = 0
    family: Family = "ipv4"
    in_iface: str = ""
    out_iface: str = ""
    bridged: bool = False
    ct_state: CtState = "NEW"
    mark: int = 0
    src_local: bool = False
    dst_local: bool = False
    icmp_type: int = 8
    icmp_code: int = 0


@dataclass
class Verdict:
    action: str  # ACCEPT, DROP or REJECT; MASQUERADE, SNAT or DNAT in the nat table
    mark: int
    hits: list[tuple[str, int]] = field(default_factory=list)  # (chain, 0-based rule index)
    nflog_groups: list[int] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)  # LOG prefixes
    reject_with: str | None = None


def member(packet: Packet, flags: str) -> str:
    """The set member a ``--match-set NAME FLAGS`` lookup asks for: ``ip`` or ``ip,proto:port``."""
    parts: list[str] = []
    for i, side in enumerate(flags.split(",")):
        if i == 0:
            parts.append(packet.src if side == "src" else packet.dst)
        else:
            port = packet.sport if side == "src" else packet.dport
            parts.append(f"{packet.proto}:{port}")
    return ",".join(parts)


def _iface(pattern: str, name: str) -> bool:
    if pattern.endswith("+"):
        return name.startswith(pattern[:-1])
    return name == pattern


def _in_ranges(port: int, spec: str) -> bool:
    for part in spec.split(","):
        lo, _, hi = part.partition(":")
        if int(lo) <= port <= int(hi or lo):
            return True
    return False


class _Walk:
    def __init__(self, fake: FakeIPTables, table: str, packet: Packet, sets: IpsetContains):
        self.fake, self.table, self.packet, self.sets = fake, table, packet, sets
        self.verdict = Verdict("", packet.mark)
        proto: str = packet.proto
        self.proto = "ipv6-icmp" if proto == "icmp" and packet.family == "ipv6" else proto

    def run(self, chain: str, depth: int) -> str | None:
        """The terminal action reached from ``chain``, or None when it returned."""
        if depth > MAX_DEPTH:
            raise TraceError(f"jumps nested deeper than {MAX_DEPTH} (a loop?) at {chain}")
        for index, rule in enumerate(self.fake.rules(chain, self.table)):
            if not self.matches(rule):
                continue
            self.verdict.hits.append((chain, index))
            action = self.act(rule, depth)
            if action == "RETURN":
                return None
            if action is not None:
                return action
        return None

    def act(self, rule: CanonRule, depth: int) -> str | None:
        target = rule.target
        if target is None:
            return None
        if rule.jump_chain:
            return self.run(target, depth + 1)
        if target == "MARK":
            value, mask = parse_value_mask(_arg(rule.target_opts, "set-xmark"))
            self.verdict.mark = (self.verdict.mark & ~(mask or 0) & U32_MASK) ^ value
            return None
        if target == "NFLOG":
            self.verdict.nflog_groups.append(int(_arg(rule.target_opts, "nflog-group", "0")))
            return None
        if target == "LOG":
            self.verdict.logs.append(_arg(rule.target_opts, "log-prefix", ""))
            return None
        if target == "REJECT":
            self.verdict.reject_with = _arg(rule.target_opts, "reject-with")
        if target in TERMINAL or target in NAT_TERMINAL or target == "RETURN":
            return target
        raise TraceError(f"target {target} is not traced")

    def matches(self, rule: CanonRule) -> bool:
        p = self.packet
        if rule.src is not None and (_address(p.src) in rule.src[1]) == rule.src[0]:
            return False
        if rule.dst is not None and (_address(p.dst) in rule.dst[1]) == rule.dst[0]:
            return False
        if rule.in_iface is not None and _iface(rule.in_iface[1], p.in_iface) == rule.in_iface[0]:
            return False
        if rule.out_iface is not None and (
            _iface(rule.out_iface[1], p.out_iface) == rule.out_iface[0]
        ):
            return False
        if rule.proto is not None and (self.proto == rule.proto[1]) == rule.proto[0]:
            return False
        return all(self.opt_matches(m, o) != o.neg for m in rule.matches for o in m.opts)

    def opt_matches(self, match: Match, opt: Opt) -> bool:
        """Whether one (non-negated reading of an) option matches the packet."""
        p, name, args = self.packet, opt.name, opt.args
        checks: dict[str, Callable[[], bool]] = {
            "comment": lambda: True,
            "limit": lambda: True,
            "limit-burst": lambda: True,
            "match-set": lambda: self.sets(args[0], member(p, args[1]), args[1]),
            "mark": lambda: self._mark_matches(args[0]),
            "ctstate": lambda: p.ct_state in args[0].split(","),
            "src-type": lambda: self._addrtype(args[0], p.src_local),
            "dst-type": lambda: self._addrtype(args[0], p.dst_local),
            "physdev-is-bridged": lambda: p.bridged,
            "physdev-is-in": lambda: p.bridged,
            "sport": lambda: _in_ranges(p.sport, args[0]),
            "dport": lambda: _in_ranges(p.dport, args[0]),
            "sports": lambda: _in_ranges(p.sport, args[0]),
            "dports": lambda: _in_ranges(p.dport, args[0]),
            "ports": lambda: _in_ranges(p.sport, args[0]) or _in_ranges(p.dport, args[0]),
            "icmp-type": lambda: self._icmp(args[0]),
            "icmpv6-type": lambda: self._icmp(args[0]),
        }
        check = checks.get(name)
        if check is None:
            raise TraceError(f"option --{name} of -m {match.module} is not traced")
        return check()

    def _mark_matches(self, text: str) -> bool:
        value, mask = parse_value_mask(text)
        return (self.verdict.mark & (U32_MASK if mask is None else mask)) == value

    @staticmethod
    def _addrtype(types: str, local: bool) -> bool:
        if types != "LOCAL":
            raise TraceError(f"address type {types} is not traced (only LOCAL)")
        return local

    def _icmp(self, spec: str) -> bool:
        kind, _, code = spec.partition("/")
        return self.packet.icmp_type == int(kind) and (
            not code or self.packet.icmp_code == int(code)
        )


def _arg(opts: tuple[Opt, ...], name: str, default: str | None = None) -> str:
    for opt in opts:
        if opt.name == name:
            return opt.args[0]
    if default is None:
        raise TraceError(f"target option --{name} missing")
    return default


def trace(
    fake: FakeIPTables,
    hook: str,
    packet: Packet,
    ipset_contains: IpsetContains,
    table: str = "filter",
) -> Verdict:
    """Walk ``packet`` through ``hook`` (a built-in chain such as ``FORWARD``) of ``table``."""
    policy = fake.policy(hook, table) if fake.has_chain(hook, table) else None
    if policy is None:
        raise TraceError(f"{hook} is not a built-in chain of the {table} table")
    if packet.family != fake.family:
        raise TraceError(f"an {packet.family} packet traced through {fake.family} iptables")
    walk = _Walk(fake, table, packet, ipset_contains)
    action = walk.run(hook, 0)
    walk.verdict.action = action if action in TERMINAL | NAT_TERMINAL else policy
    return walk.verdict


__all__ = ["IpsetContains", "Packet", "TraceError", "Verdict", "member", "trace"]
