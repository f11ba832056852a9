"""The routes port: learned routes (protocol 17), overlay tunnels, policy rules, FoU ports.

What the routing controller's :class:`~kube_router.controllers.routing.injector.RouteInjector`
asks of the kernel, in plain values (kube-router.md §4.2 "Learned routes → kernel", §4.7, §5.2):

- :class:`Route`: ``dst via GW proto 17`` (next hop on a local subnet) or ``dst dev tun-x src
  NODE_IP proto 17`` (through a tunnel), in the main table; ``REMOTE/32 dev tun-x table 77``
  for the overlay's policy routing. Routes are keyed by ``(table, dst)``.
- :class:`Tunnel`: ``tun-<11 hex>`` (:func:`tunnel_name`), ipip (IPv4) or ip6tnl mode ip6ip6
  (IPv6), local = node IP, remote = the peer node's IP; with FoU, GUE-encapsulated to a UDP
  port (``ttl 225 encap gue encap-sport auto encap-dport PORT``).
- :class:`Rule`: ``from <pod CIDR> lookup 77`` per family.
- FoU receive ports (``ip fou add port PORT gue`` per family) and the ``77 kube-router`` line of
  ``rt_tables``.

Adapters: :class:`~.routes_netlink.NetlinkRoutes` (the kernel, of a named netns when given;
routes in rtnetlink batches) and :class:`~.routes_fake.FakeRoutes` (a strict in-memory kernel).
"""

from __future__ import annotations

import enum
import errno
import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Protocol

from kube_router.dataplane.ipvs import Family

RT_PROTO_KUBE_ROUTER: Final = 17  # 0x11, upstream's "ZebraOriginator"
MAIN_TABLE: Final = 254
OVERLAY_TABLE: Final = 77
OVERLAY_TABLE_NAME: Final = "kube-router"
TUNNEL_PREFIX: Final = "tun-"
TUNNEL_HASH_CHARS: Final = 11
FOU_TTL: Final = 225
DEFAULT_FOU_PORT: Final = 5555
MIN_FOU_PORT: Final = 1024
#: Where iproute2 keeps table names; the first one found gets our line (kube-router.md §4.2).
RT_TABLES_PATHS: Final = (
    Path("/etc/iproute2/rt_tables"),
    Path("/usr/lib/iproute2/rt_tables"),
    Path("/usr/share/iproute2/rt_tables"),
)
FAMILIES: Final[tuple[Family, ...]] = ("ipv4", "ipv6")
HOST_BITS: Final = {"ipv4": 32, "ipv6": 128}
#: Kernel modules the FoU encapsulation needs, per family.
FOU_MODULES: Final[dict[Family, str]] = {"ipv4": "fou", "ipv6": "fou6"}


class RouteError(Exception):
    """Programming routes, tunnels or rules failed."""


class TunnelError(RouteError):
    """A tunnel could not be created or deleted (``errno`` is the kernel's refusal, or 0)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.errno = code


class RuleError(RouteError):
    """A policy rule could not be added or deleted."""


class RtTablesError(RouteError):
    """The rt_tables file could not be found, read or written."""


class Encap(enum.Enum):
    IPIP = "ipip"
    FOU = "fou"


def family_of(address: str) -> Family:
    return "ipv6" if ":" in address else "ipv4"


def canonical_cidr(cidr: str) -> str:
    """``cidr`` as ipaddress spells it; a bare address becomes a host prefix."""
    try:
        return str(ipaddress.ip_network(cidr, strict=True))
    except ValueError as err:
        raise RouteError(f"not a network prefix: {cidr!r}") from err


def host_prefix(address: str) -> str:
    return f"{ipaddress.ip_address(address)}/{HOST_BITS[family_of(address)]}"


def tunnel_name(next_hop: str) -> str:
    """``tun-`` + the first 11 hex digits of sha256 of the next hop without ``.`` and ``:``
    (upstream's GenerateTunnelName: the text as given, so callers pass it as gobgpd does)."""
    stripped = next_hop.replace(".", "").replace(":", "")
    return TUNNEL_PREFIX + hashlib.sha256(stripped.encode()).hexdigest()[:TUNNEL_HASH_CHARS]


@dataclass(frozen=True, order=True)
class Route:
    """One route. ``dst`` is a canonical CIDR; ``gateway`` and/or ``dev`` say where it goes.

    A dump fills ``dev`` for a route via a gateway too (the link the kernel resolved)."""

    dst: str
    gateway: str = ""
    dev: str = ""
    src: str = ""
    table: int = MAIN_TABLE
    protocol: int = RT_PROTO_KUBE_ROUTER

    @property
    def family(self) -> Family:
        return family_of(self.dst)

    @property
    def key(self) -> tuple[int, str]:
        return self.table, self.dst

    def describe(self) -> str:
        via = f" via {self.gateway}" if self.gateway else ""
        dev = f" dev {self.dev}" if self.dev else ""
        src = f" src {self.src}" if self.src else ""
        return f"{self.dst}{via}{dev}{src} table {self.table} proto {self.protocol}"


@dataclass(frozen=True, order=True)
class Rule:
    """``from SRC lookup TABLE`` (``src`` a canonical CIDR)."""

    src: str
    table: int = OVERLAY_TABLE

    @property
    def family(self) -> Family:
        return family_of(self.src)


@dataclass(frozen=True)
class Tunnel:
    """An overlay tunnel to one remote node. ``port`` is the FoU destination port (FOU only)."""

    name: str
    local: str
    remote: str
    encap: Encap = Encap.IPIP
    port: int = 0

    @property
    def family(self) -> Family:
        return family_of(self.remote)

    @property
    def kind(self) -> str:
        """The link kind: ``ipip`` or ``ip6tnl`` (mode ip6ip6)."""
        return "ip6tnl" if self.family == "ipv6" else "ipip"

    def describe(self) -> str:
        encap = f" encap gue dport {self.port}" if self.encap is Encap.FOU else ""
        return f"{self.name} ({self.kind} {self.local} -> {self.remote}{encap})"


RouteOpKind = Literal["replace", "delete"]


@dataclass(frozen=True)
class RouteFailure:
    op: RouteOpKind
    route: Route
    errno: int

    def describe(self) -> str:
        return f"{self.op} {self.route.describe()}: {errno.errorcode.get(self.errno, self.errno)}"


class RouteOpError(RouteError):
    """The kernel refused route operations (the rest of the batch was applied)."""

    def __init__(self, failures: Sequence[RouteFailure]) -> None:
        self.failures = list(failures)
        shown = "; ".join(f.describe() for f in self.failures[:5])
        more = f" (and {len(self.failures) - 5} more)" if len(self.failures) > 5 else ""
        super().__init__(f"the kernel refused {len(self.failures)} route op(s): {shown}{more}")


class RoutePort(Protocol):
    """Routes, tunnels, rules and FoU ports of one network namespace."""

    async def routes(self, protocol: int = RT_PROTO_KUBE_ROUTER) -> list[Route]:
        """Every route of ``protocol`` (both families, all tables)."""
        ...

    async def apply_routes(
        self, replace: Sequence[Route], delete: Sequence[Route] = ()
    ) -> list[RouteFailure]:
        """Delete then replace (create or overwrite), in batches; the refusals. A delete
        matches on table, dst and protocol; deleting a route that is gone is no failure."""
        ...

    async def tunnels(self) -> list[Tunnel]:
        """Every ipip/ip6tnl link named ``tun-*``."""
        ...

    async def add_tunnel(self, tunnel: Tunnel) -> None:
        """Create the tunnel, up. Raises :class:`TunnelError` (EEXIST on a name clash)."""
        ...

    async def delete_tunnel(self, name: str) -> None:
        """Delete the link (its routes go with it); an absent link is fine."""
        ...

    async def rules(self) -> list[Rule]:
        """Every ``from CIDR lookup TABLE`` rule (both families)."""
        ...

    async def add_rule(self, rule: Rule) -> None: ...
    async def delete_rule(self, rule: Rule) -> None: ...

    async def fou_ports(self) -> set[tuple[int, Family]]:
        """The GUE receive ports, with their families."""
        ...

    async def add_fou_port(self, port: int, family: Family) -> None: ...
    async def delete_fou_port(self, port: int, family: Family) -> None: ...

    async def load_modules(self, names: Sequence[str]) -> None:
        """``modprobe`` them (FoU needs fou and fou6)."""
        ...

    def ensure_table_name(self, number: int, name: str) -> Path:
        """Append ``NUMBER NAME`` to the first rt_tables file found unless the name is there;
        the file's path. Raises :class:`RtTablesError`."""
        ...

    def close(self) -> None: ...


def ensure_rt_tables_line(number: int, name: str, candidates: Iterable[Path]) -> Path:
    """Append ``NUMBER NAME`` to the first of ``candidates`` that exists, unless a line there
    names the table already (upstream writes to the last one found and matches the name
    anywhere in the file; we take the first, as iproute2 reads it, and match whole fields)."""
    paths = list(candidates)
    for path in paths:
        if not path.exists():
            continue
        try:
            text = path.read_text()
            for line in text.splitlines():
                fields = line.split("#", 1)[0].split()
                if len(fields) >= 2 and fields[1] == name:
                    return path
            with path.open("a") as out:
                out.write(("" if not text or text.endswith("\n") else "\n") + f"{number} {name}\n")
        except OSError as err:
            raise RtTablesError(f"adding '{number} {name}' to {path}: {err}") from err
        return path
    raise RtTablesError(f"no rt_tables file in {', '.join(map(str, paths))}")
