"""Canonical forms of the BGP model, and ``BgpState``: what an engine holds, read back.

gobgpd rewrites what it is given (host bits of a prefix cleared, ``no-export`` stored as
``65535:65281``, community set members as ``^a:b$`` regexes, hold time 0 read back as 90...).
Both engines compare the wanted state with what they hold in these canonical forms, and
``read_state()`` of the gRPC engine and of the fake returns a ``BgpState`` in them, so tests can
prove the fake against the real daemon by comparing the two.

No gRPC here: the fake and the routing controller import this without the generated stubs.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, fields, replace
from typing import Final

from kube_router.bgp.engine import EngineError
from kube_router.bgp.model import (
    IPV4,
    IPV6,
    Action,
    DefinedSetSpec,
    DefinedType,
    GlobalSpec,
    GracefulRestart,
    PathSpec,
    PeerSpec,
    PolicySpec,
    PrefixMatch,
    StatementSpec,
)

#: gobgpd's defaults for a neighbour's timers (seconds), as ListPeer reports them.
DEFAULT_HOLD_TIME: Final = 90
KEEPALIVE_DIVISOR: Final = 3
#: What gobgpd listens on when GlobalSpec.listen_addresses is empty.
DEFAULT_LISTEN_ADDRESSES: Final = ("0.0.0.0", "::")
UNSPECIFIED_ADDRESSES: Final = frozenset({"0.0.0.0", "::"})

#: Well-known community names gobgpd accepts (RFC 1997, 7611, 7999, 8326, 8642, draft LLGR).
WELL_KNOWN_COMMUNITIES: Final[dict[str, int]] = {
    "internet": 0x00000000,
    "planned-shut": 0xFFFF0000,
    "accept-own": 0xFFFF0001,
    "route-filter-translated-v4": 0xFFFF0002,
    "route-filter-v4": 0xFFFF0003,
    "route-filter-translated-v6": 0xFFFF0004,
    "route-filter-v6": 0xFFFF0005,
    "llgr-stale": 0xFFFF0006,
    "no-llgr": 0xFFFF0007,
    "blackhole": 0xFFFF029A,
    "no-export": 0xFFFFFF01,
    "no-advertise": 0xFFFFFF02,
    "no-export-subconfed": 0xFFFFFF03,
    "no-peer": 0xFFFFFF04,
}
_U16: Final = 0xFFFF
_U32: Final = 0xFFFFFFFF
_COMMUNITY_RE: Final = re.compile(r"^(\d+):(\d+)$")
_COMMUNITY_REGEX_RE: Final = re.compile(r"^\^(\d+:\d+)\$$")


class InvalidSpec(EngineError, ValueError):
    """A value in a spec that gobgpd would refuse (bad community, prefix, address)."""


def parse_community(text: str) -> int:
    """``"64512:100"``, ``"no-export"`` or ``"4294967041"`` → the 32-bit value."""
    value = text.strip().lower()
    if value in WELL_KNOWN_COMMUNITIES:
        return WELL_KNOWN_COMMUNITIES[value]
    match = _COMMUNITY_RE.match(value)
    if match:
        high, low = int(match.group(1)), int(match.group(2))
        if high > _U16 or low > _U16:
            raise InvalidSpec(f"community {text!r}: each half must be at most {_U16}")
        return high << 16 | low
    if value.isdigit() and int(value) <= _U32:
        return int(value)
    raise InvalidSpec(f"invalid community {text!r}")


def format_community(value: int) -> str:
    """The 32-bit value → ``"high:low"``, the form gobgpd reports."""
    return f"{value >> 16}:{value & _U16}"


def canonical_community(text: str) -> str:
    return format_community(parse_community(text))


def canonical_prefix(prefix: str) -> str:
    try:
        return str(ipaddress.ip_network(prefix, strict=False))
    except ValueError as err:
        raise InvalidSpec(f"invalid prefix {prefix!r}") from err


def canonical_address(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError as err:
        raise InvalidSpec(f"invalid address {address!r}") from err


def prefix_family(prefix: str) -> str:
    return IPV6 if ":" in prefix else IPV4


def canonical_path(spec: PathSpec) -> PathSpec:
    return PathSpec(
        prefix=canonical_prefix(spec.prefix),
        next_hop=canonical_address(spec.next_hop),
        communities=tuple(sorted(set(spec.communities))),
    )


def canonical_global(spec: GlobalSpec) -> GlobalSpec:
    """What GetBgp can report: gobgpd 3.10 does not return the global graceful-restart settings."""
    addresses = tuple(canonical_address(a) for a in spec.listen_addresses)
    return GlobalSpec(
        asn=spec.asn,
        router_id=canonical_address(spec.router_id),
        listen_port=spec.listen_port,
        listen_addresses=addresses or DEFAULT_LISTEN_ADDRESSES,
    )


def changed_fields(have: PeerSpec, want: PeerSpec) -> list[str]:
    """Names of the fields that differ (never their values: one may be a password)."""
    return [f.name for f in fields(PeerSpec) if getattr(have, f.name) != getattr(want, f.name)]


def canonical_peer(spec: PeerSpec) -> PeerSpec:
    """Defaults resolved as gobgpd resolves them; ``internal`` is not gobgpd's (always False)."""
    hold = spec.hold_time or DEFAULT_HOLD_TIME
    local = canonical_address(spec.local_address) if spec.local_address else ""
    # gobgpd reports local_restarting from the session's state (cleared once the restart is
    # over), not the configuration: it is not compared.
    gr = (
        replace(spec.graceful_restart, local_restarting=True)
        if spec.graceful_restart.enabled
        else GracefulRestart()
    )
    return replace(
        spec,
        address=canonical_address(spec.address),
        local_address="" if local in UNSPECIFIED_ADDRESSES else local,
        hold_time=hold,
        keepalive=spec.keepalive or hold // KEEPALIVE_DIVISOR,
        families=tuple(sorted(set(spec.families))) or (IPV4,),
        graceful_restart=gr,
        rr_cluster_id=spec.rr_cluster_id if spec.rr_client else "",
        multihop_ttl=spec.multihop_ttl if spec.multihop_ttl > 1 else 0,
        internal=False,
    )


def _canonical_member(kind: DefinedType, member: str) -> str:
    if kind is DefinedType.NEIGHBOR:
        return canonical_prefix(member)
    if kind is DefinedType.COMMUNITY:
        regex = _COMMUNITY_REGEX_RE.match(member)
        return regex.group(1) if regex else canonical_community(member)
    return member


def canonical_defined_set(spec: DefinedSetSpec) -> DefinedSetSpec:
    prefixes = {
        PrefixMatch(canonical_prefix(p.prefix), p.mask_min, p.mask_max) for p in spec.prefixes
    }
    members = {_canonical_member(spec.type, m) for m in spec.members}
    return DefinedSetSpec(
        name=spec.name,
        type=spec.type,
        prefixes=tuple(sorted(prefixes, key=lambda p: (p.prefix, p.mask_min, p.mask_max))),
        members=tuple(sorted(members)),
    )


def canonical_statement(spec: StatementSpec) -> StatementSpec:
    repeat = spec.prepend_repeat if spec.prepend_asn else 0
    return replace(
        spec,
        add_communities=tuple(sorted({canonical_community(c) for c in spec.add_communities})),
        prepend_asn=spec.prepend_asn if repeat else 0,
        prepend_repeat=repeat,
    )


def canonical_policy(spec: PolicySpec) -> PolicySpec:
    return PolicySpec(statements=tuple(canonical_statement(s) for s in spec.statements))


def policy_version(name: str, prefix: str) -> int | None:
    """``kube_router_export7`` → 7 for prefix ``kube_router_export``; None if not ours."""
    rest = name.removeprefix(prefix)
    return int(rest) if rest != name and rest.isdigit() else None


@dataclass(frozen=True)
class AssignedPolicy:
    """One of our policies assigned to gobgpd's global import or export."""

    name: str  # with its version: "kube_router_export3"
    policy: PolicySpec
    default_action: Action


@dataclass
class BgpState:
    """What an engine holds, in canonical forms (``read_state()`` of both engines).

    ``global_`` is None when BGP is not started. ``policies`` names every policy the engine
    holds (ours and others), so a test sees that an old version was deleted.
    """

    global_: GlobalSpec | None = None
    peers: dict[str, PeerSpec] = field(default_factory=dict)
    paths: dict[str, PathSpec] = field(default_factory=dict)
    defined_sets: dict[tuple[DefinedType, str], DefinedSetSpec] = field(default_factory=dict)
    export: AssignedPolicy | None = None
    import_: AssignedPolicy | None = None
    policies: frozenset[str] = frozenset()
