"""The IPVS port: virtual services and their real servers, as the kernel keeps them.

A :class:`Transaction` is a list of service and destination operations built fully before it is
applied; the real adapter (:mod:`.ipvs_netlink`) sends them as batched generic netlink messages,
the fake (:mod:`.ipvs_fake`) applies them with the kernel's rules. Either way an operation the
kernel refuses raises :class:`IPVSOpError` naming the operation and the errno, after the others
were applied (IPVS has no transactions: callers follow a failure with a full sync).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

Family = Literal["ipv4", "ipv6"]

TCP: Final = socket.IPPROTO_TCP
UDP: Final = socket.IPPROTO_UDP
SCTP: Final = 132
PROTOCOLS: Final = {"tcp": TCP, "udp": UDP, "sctp": SCTP}
PROTOCOL_NAMES: Final = {v: k for k, v in PROTOCOLS.items()}

# Service flags (linux/ip_vs.h)
F_PERSISTENT: Final = 0x0001
F_HASHED: Final = 0x0002
F_ONEPACKET: Final = 0x0004
F_SCHED1: Final = 0x0008  # sh/mh: fallback
F_SCHED2: Final = 0x0010  # sh/mh: port
F_SCHED3: Final = 0x0020
USER_FLAGS: Final = F_PERSISTENT | F_ONEPACKET | F_SCHED1 | F_SCHED2 | F_SCHED3

# Forwarding methods
FWD_MASQ: Final = 0
FWD_LOCAL: Final = 1
FWD_TUNNEL: Final = 2
FWD_DROUTE: Final = 3
FWD_METHODS: Final = frozenset({FWD_MASQ, FWD_LOCAL, FWD_TUNNEL, FWD_DROUTE})
TUN_IPIP: Final = 0
TUN_GUE: Final = 1
TUN_GRE: Final = 2
U8_MAX: Final = 0xFF
U16_MAX: Final = 0xFFFF
U32_MAX: Final = 0xFFFFFFFF

# The schedulers Debian's kernel ships (modules ip_vs_<name>).
SCHEDULERS: Final = frozenset(
    {"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos"}
)
SCHED_NAME_MAX: Final = 15  # IP_VS_SCHEDNAME_MAXLEN - 1
MAX_WEIGHT: Final = 2**31 - 1
HOST_PREFIX: Final = {"ipv4": 32, "ipv6": 128}


class IPVSError(Exception):
    """The IPVS port failed."""


@dataclass
class IPVSOpError(IPVSError):
    """The kernel refused one or more operations of a transaction (the others were applied)."""

    failures: list[tuple[Op, int]]  # the operation, errno

    def __str__(self) -> str:
        shown = "; ".join(
            f"{op.describe()}: {errno.errorcode.get(e, e)}" for op, e in self.failures[:5]
        )
        more = f" (and {len(self.failures) - 5} more)" if len(self.failures) > 5 else ""
        return f"IPVS refused {len(self.failures)} operation(s): {shown}{more}"

    def errnos(self) -> list[int]:
        return [e for _, e in self.failures]


def family_of(address: str) -> Family:
    return "ipv6" if ":" in address else "ipv4"


def canonical_ip(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError as err:
        raise ValueError(f"not an IP address: {address!r}") from err


@dataclass(frozen=True)
class ServiceKey:
    """What identifies a virtual service: family with protocol, address and port, or a fwmark."""

    family: Family
    protocol: int = TCP  # the kernel reports TCP for fwmark services
    address: str = ""
    port: int = 0
    fwmark: int = 0

    @classmethod
    def of(cls, address: str, protocol: str | int, port: int) -> ServiceKey:
        proto = PROTOCOLS[protocol] if isinstance(protocol, str) else protocol
        return cls(family_of(address), proto, canonical_ip(address), port)

    @classmethod
    def mark(cls, fwmark: int, family: Family = "ipv4") -> ServiceKey:
        return cls(family, TCP, "", 0, fwmark)

    def __str__(self) -> str:
        if self.fwmark:
            return f"FWM {self.fwmark} {self.family}"
        host = f"[{self.address}]" if self.family == "ipv6" else self.address
        return f"{PROTOCOL_NAMES.get(self.protocol, self.protocol)}/{host}:{self.port}"


@dataclass(frozen=True)
class Service:
    """A virtual service: its key and settings. ``timeout`` is the persistence time (seconds)."""

    key: ServiceKey
    scheduler: str = "rr"
    flags: int = 0  # user flags only (F_HASHED is the kernel's)
    timeout: int = 0
    netmask: int = -1  # persistence netmask as a prefix length; -1: the host prefix
    pe_name: str = ""

    @property
    def prefix(self) -> int:
        return HOST_PREFIX[self.key.family] if self.netmask < 0 else self.netmask

    def settings(self) -> tuple[str, int, int, int, str]:
        """What ``edit`` can change (scheduler, flags, timeout, netmask, pe)."""
        return (self.scheduler, self.flags & USER_FLAGS, self.timeout, self.prefix, self.pe_name)


@dataclass(frozen=True)
class Dest:
    """A real server of a service."""

    address: str
    port: int
    weight: int = 1
    forward: int = FWD_MASQ
    u_threshold: int = 0
    l_threshold: int = 0
    tun_type: int = 0
    tun_port: int = 0
    tun_flags: int = 0

    @property
    def family(self) -> Family:
        return family_of(self.address)

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.port)

    def settings(self) -> tuple[int, int, int, int, int, int, int]:
        return (
            self.weight,
            self.forward,
            self.u_threshold,
            self.l_threshold,
            self.tun_type,
            self.tun_port,
            self.tun_flags,
        )


@dataclass(frozen=True)
class Stats:
    conns: int = 0
    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    cps: int = 0
    pps_in: int = 0
    pps_out: int = 0
    bps_in: int = 0
    bps_out: int = 0


@dataclass(frozen=True)
class DestState:
    dest: Dest
    active_conns: int = 0
    inactive_conns: int = 0
    persistent_conns: int = 0
    stats: Stats = Stats()


@dataclass
class ServiceState:
    service: Service
    stats: Stats = Stats()
    dests: dict[tuple[str, int], DestState] = field(default_factory=dict)


OpKind = Literal["add-service", "edit-service", "del-service", "add-dest", "edit-dest", "del-dest"]


@dataclass(frozen=True)
class Op:
    kind: OpKind
    service: Service
    dest: Dest | None = None

    def describe(self) -> str:
        what = f"{self.kind} {self.service.key}"
        if self.dest is not None:
            what += f" -> {self.dest.address}:{self.dest.port}"
        return what


class Transaction:
    """Service and destination operations, applied in order."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self._keyed: dict[ServiceKey, Service] = {}  # one bare Service per key for dest ops

    def __len__(self) -> int:
        return len(self.ops)

    def _bare(self, key: ServiceKey) -> Service:
        found = self._keyed.get(key)
        if found is None:
            found = self._keyed[key] = Service(key)
        return found

    def add_service(self, service: Service) -> Transaction:
        self.ops.append(Op("add-service", service))
        return self

    def edit_service(self, service: Service) -> Transaction:
        self.ops.append(Op("edit-service", service))
        return self

    def del_service(self, key: ServiceKey) -> Transaction:
        self.ops.append(Op("del-service", Service(key)))
        return self

    def add_dest(self, key: ServiceKey, dest: Dest) -> Transaction:
        self.ops.append(Op("add-dest", self._bare(key), dest))
        return self

    def edit_dest(self, key: ServiceKey, dest: Dest) -> Transaction:
        self.ops.append(Op("edit-dest", self._bare(key), dest))
        return self

    def del_dest(self, key: ServiceKey, address: str, port: int) -> Transaction:
        self.ops.append(Op("del-dest", self._bare(key), Dest(address, port)))
        return self


@dataclass(frozen=True)
class Timeouts:
    """Connection timeouts in seconds (0 in a set call: leave as is)."""

    tcp: int = 0
    tcp_fin: int = 0
    udp: int = 0


class IPVS(Protocol):
    """What the service proxy needs from IPVS."""

    async def dump(self) -> dict[ServiceKey, ServiceState]: ...

    async def apply(self, tx: Transaction) -> None: ...

    async def timeouts(self) -> Timeouts: ...

    async def service_stats(self) -> dict[ServiceKey, tuple[Service, Stats]]: ...

    async def set_timeouts(self, timeouts: Timeouts) -> None: ...


class InvalidOpError(IPVSError):
    """An operation that cannot even be encoded (a bad address, a value out of range)."""


def _address_problem(address: str, family: Family) -> str:
    """What is wrong with ``address`` as one of ``family`` ("" when nothing)."""
    if family == "ipv4":
        try:
            socket.inet_pton(socket.AF_INET, address)  # the common case, 20 times faster
        except OSError:
            pass
        else:
            return ""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return f"not an IP address: {address!r}"
    if (parsed.version == 6) != (family == "ipv6"):
        return f"{address} is not {family}"
    return ""


def _check_range(value: int, top: int, what: str) -> None:
    if not 0 <= value <= top:
        raise InvalidOpError(f"{what}: {value} is out of range 0..{top}")


def validate(ops: Iterable[Op]) -> None:
    """Refuse the whole transaction, before anything is applied, if an operation cannot be
    encoded; what the kernel refuses (a missing service, an unknown scheduler) comes later.
    Each distinct service is checked once; error texts are built only for a refusal."""
    seen: set[Service] = set()
    for op in ops:
        if op.service not in seen:
            seen.add(op.service)
            _check_service(op)
        if op.dest is not None:
            _check_dest(op)


def _check_service(op: Op) -> None:
    key = op.service.key
    if key.fwmark:
        _check_range(key.fwmark, U32_MAX, f"{op.describe()}: fwmark")
    else:
        problem = _address_problem(key.address, key.family)
        if problem:
            raise InvalidOpError(f"{op.describe()}: {problem}")
        _check_range(key.port, U16_MAX, f"{op.describe()}: port")
        _check_range(key.protocol, U16_MAX, f"{op.describe()}: protocol")
    if len(op.service.scheduler) > SCHED_NAME_MAX:
        raise InvalidOpError(f"{op.describe()}: scheduler name too long")
    _check_range(op.service.timeout, U32_MAX, f"{op.describe()}: timeout")


def _check_dest(op: Op) -> None:
    d = op.dest
    assert d is not None
    problem = _address_problem(d.address, d.family)
    if problem:
        raise InvalidOpError(f"{op.describe()}: {problem}")
    if (
        0 <= d.port <= U16_MAX
        and 0 <= d.weight <= U32_MAX
        and 0 <= d.u_threshold <= U32_MAX
        and 0 <= d.l_threshold <= U32_MAX
        and 0 <= d.tun_type <= U8_MAX
        and 0 <= d.tun_port <= U16_MAX
        and 0 <= d.tun_flags <= U16_MAX
        and d.forward in FWD_METHODS
    ):
        return  # the common case: nothing to say
    _dest_problem(d, op.describe())


def _dest_problem(d: Dest, where: str) -> None:
    for value, top, what in (
        (d.port, U16_MAX, "port"),
        (d.weight, U32_MAX, "weight"),
        (d.u_threshold, U32_MAX, "upper threshold"),
        (d.l_threshold, U32_MAX, "lower threshold"),
        (d.tun_type, U8_MAX, "tunnel type"),
        (d.tun_port, U16_MAX, "tunnel port"),
        (d.tun_flags, U16_MAX, "tunnel flags"),
    ):
        _check_range(value, top, f"{where}: {what}")
    if d.forward not in FWD_METHODS:
        raise InvalidOpError(f"{where}: unknown forwarding method {d.forward}")


def plain(
    states: Mapping[ServiceKey, ServiceState],
) -> dict[ServiceKey, tuple[Service, dict[tuple[str, int], Dest]]]:
    """States without counters: for comparing a fake with the kernel."""
    return {k: (s.service, {d: ds.dest for d, ds in s.dests.items()}) for k, s in states.items()}


def ops_of(tx: Transaction | Iterable[Op]) -> list[Op]:
    return list(tx.ops) if isinstance(tx, Transaction) else list(tx)
