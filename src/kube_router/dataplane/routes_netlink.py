"""The routes port over the kernel: raw rtnetlink for routes (in batches), links and rules;
iproute2 (through the :class:`~.exec.Executor`) for FoU ports and modprobe.

Routes go as acknowledged rtnetlink requests, :data:`~.netlink.BATCH_OPS` to a ``send``
(:func:`~.netlink.run_batched`), so ten thousand cost about half a second where pyroute2 takes
ten. Tunnels are created with one ``RTM_NEWLINK`` each (ipip, or ip6tnl mode ip6ip6; with FoU
the GUE encapsulation attributes iproute2 sends for ``encap gue encap-sport auto encap-dport
PORT``, and ttl 225). Rules are ``RTM_NEWRULE``/``RTM_DELRULE``. Everything happens in network
namespace ``netns`` when one is named (tests), as :mod:`.vips_netlink` does.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, TypeVar

from kube_router.dataplane import netlink
from kube_router.dataplane.exec import CommandError, Executor
from kube_router.dataplane.ipvs import Family
from kube_router.dataplane.ipvs_netlink import attr, nested, parse_attrs
from kube_router.dataplane.routes import (
    FAMILIES,
    FOU_TTL,
    RT_TABLES_PATHS,
    TUNNEL_PREFIX,
    Encap,
    Route,
    RouteError,
    RouteFailure,
    RouteOpKind,
    Rule,
    RuleError,
    Tunnel,
    TunnelError,
    ensure_rt_tables_line,
    family_of,
)
from kube_router.dataplane.vips_netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    RECV_BYTES,
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RtnlSocket,
    _ip_text,
    _msg,
    _text,
    _uint,
)

log = logging.getLogger(__name__)

RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 7, 15
FRA_SRC, FRA_TABLE = 2, 15
FR_ACT_TO_TBL: Final = 1
IFLA_IFNAME, IFLA_LINKINFO = 3, 18
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_IPTUN_LOCAL, IFLA_IPTUN_REMOTE, IFLA_IPTUN_TTL, IFLA_IPTUN_PROTO = 2, 3, 4, 9
IFLA_IPTUN_ENCAP_TYPE, IFLA_IPTUN_ENCAP_FLAGS = 15, 16
IFLA_IPTUN_ENCAP_SPORT, IFLA_IPTUN_ENCAP_DPORT = 17, 18
TUNNEL_ENCAP_GUE: Final = 2
TUNNEL_ENCAP_FLAG_CSUM6: Final = 1 << 1  # iproute2's default encap flags
IPPROTO_IPV6: Final = 41  # ip6tnl mode ip6ip6
IFF_UP: Final = 0x1
RTN_UNICAST: Final = 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
RT_TABLE_UNSPEC: Final = 0
MAX_TABLE_IN_HEADER: Final = 255
TUNNEL_KINDS: Final = ("ipip", "ip6tnl")

_AF: Final = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}
_IFINFO: Final = struct.Struct("=BxHiII")
_RTMSG: Final = struct.Struct("=BBBBBBBBI")  # also fib_rule_hdr's layout

T = TypeVar("T")


def _ip(address: str) -> bytes:
    return socket.inet_pton(_AF[family_of(address)], address)


def _split(cidr: str) -> tuple[str, int]:
    address, length = cidr.split("/")
    return address, int(length)


# --- routes ---------------------------------------------------------------------------------


def route_body(route: Route, oif: int, deleting: bool) -> bytes:
    """An rtmsg for ``route``; a delete names only table, dst and protocol (so it never takes
    a route of another protocol to the same place)."""
    family = _AF[route.family]
    address, length = _split(route.dst)
    table_byte = route.table if route.table <= MAX_TABLE_IN_HEADER else RT_TABLE_UNSPEC
    if deleting:
        head = (family, length, 0, 0, table_byte, route.protocol, RT_SCOPE_NOWHERE, 0, 0)
        return (
            _RTMSG.pack(*head)
            + attr(RTA_TABLE, struct.pack("=I", route.table))
            + (attr(RTA_DST, _ip(address)))
        )
    scope = RT_SCOPE_LINK if not route.gateway and route.family == "ipv4" else RT_SCOPE_UNIVERSE
    head = (family, length, 0, 0, table_byte, route.protocol, scope, RTN_UNICAST, 0)
    body = _RTMSG.pack(*head) + attr(RTA_TABLE, struct.pack("=I", route.table))
    body += attr(RTA_DST, _ip(address))
    if route.gateway:
        body += attr(RTA_GATEWAY, _ip(route.gateway))
    if oif:
        body += attr(RTA_OIF, struct.pack("=I", oif))
    if route.src:
        body += attr(RTA_PREFSRC, _ip(route.src))
    return body


def decode_route(body: bytes, names: dict[int, str]) -> Route | None:
    """The route in an RTM_NEWROUTE dump message (None: not a unicast route)."""
    family, dst_len, _src_len, _tos, table, protocol, _scope, kind, _flags = _RTMSG.unpack_from(
        body
    )
    if kind != RTN_UNICAST:
        return None
    a = parse_attrs(body[_RTMSG.size :])
    dst = _ip_text(family, a.get(RTA_DST)) or ("0.0.0.0" if family == socket.AF_INET else "::")
    return Route(
        f"{dst}/{dst_len}",
        gateway=_ip_text(family, a.get(RTA_GATEWAY)),
        dev=names.get(_uint(a.get(RTA_OIF)), ""),
        src=_ip_text(family, a.get(RTA_PREFSRC)),
        table=_uint(a.get(RTA_TABLE)) or table,
        protocol=protocol,
    )


# --- links ----------------------------------------------------------------------------------


def tunnel_body(tunnel: Tunnel) -> bytes:
    """RTM_NEWLINK's body creating ``tunnel``, up."""
    data = attr(IFLA_IPTUN_LOCAL, _ip(tunnel.local)) + attr(IFLA_IPTUN_REMOTE, _ip(tunnel.remote))
    if tunnel.family == "ipv6":
        data += attr(IFLA_IPTUN_PROTO, bytes([IPPROTO_IPV6]))
    if tunnel.encap is Encap.FOU:
        data += attr(IFLA_IPTUN_TTL, bytes([FOU_TTL]))
        data += attr(IFLA_IPTUN_ENCAP_TYPE, struct.pack("=H", TUNNEL_ENCAP_GUE))
        data += attr(IFLA_IPTUN_ENCAP_FLAGS, struct.pack("=H", TUNNEL_ENCAP_FLAG_CSUM6))
        data += attr(IFLA_IPTUN_ENCAP_SPORT, struct.pack(">H", 0))  # auto
        data += attr(IFLA_IPTUN_ENCAP_DPORT, struct.pack(">H", tunnel.port))
    info = nested(
        IFLA_LINKINFO,
        attr(IFLA_INFO_KIND, tunnel.kind.encode()),
        nested(IFLA_INFO_DATA, data),
    )
    head = _IFINFO.pack(0, 0, 0, IFF_UP, IFF_UP)
    return head + attr(IFLA_IFNAME, tunnel.name.encode() + b"\0") + info


def decode_link(body: bytes) -> tuple[int, str, Tunnel | None]:
    """(index, name, the tunnel if it is an ipip/ip6tnl link named tun-*)."""
    _family, _type, index, _flags, _change = _IFINFO.unpack_from(body)
    a = parse_attrs(body[_IFINFO.size :])
    name = _text(a.get(IFLA_IFNAME))
    info = parse_attrs(a.get(IFLA_LINKINFO, b""))
    kind = _text(info.get(IFLA_INFO_KIND))
    if kind not in TUNNEL_KINDS or not name.startswith(TUNNEL_PREFIX):
        return index, name, None
    data = parse_attrs(info.get(IFLA_INFO_DATA, b""))
    af = socket.AF_INET6 if kind == "ip6tnl" else socket.AF_INET
    raw_type = data.get(IFLA_IPTUN_ENCAP_TYPE)
    encap_type = struct.unpack("=H", raw_type[:2])[0] if raw_type else 0
    fou = encap_type == TUNNEL_ENCAP_GUE
    port = struct.unpack(">H", data[IFLA_IPTUN_ENCAP_DPORT][:2])[0] if fou else 0
    tunnel = Tunnel(
        name,
        _ip_text(af, data.get(IFLA_IPTUN_LOCAL)),
        _ip_text(af, data.get(IFLA_IPTUN_REMOTE)),
        Encap.FOU if fou else Encap.IPIP,
        port,
    )
    return index, name, tunnel


# --- rules ----------------------------------------------------------------------------------


def rule_body(rule: Rule) -> bytes:
    address, length = _split(rule.src)
    table_byte = rule.table if rule.table <= MAX_TABLE_IN_HEADER else RT_TABLE_UNSPEC
    head = _RTMSG.pack(_AF[rule.family], 0, length, 0, table_byte, 0, 0, FR_ACT_TO_TBL, 0)
    return head + attr(FRA_SRC, _ip(address)) + attr(FRA_TABLE, struct.pack("=I", rule.table))


def decode_rule(body: bytes) -> Rule | None:
    family, _dst_len, src_len, _tos, table, _r1, _r2, action, _flags = _RTMSG.unpack_from(body)
    a = parse_attrs(body[_RTMSG.size :])
    if action != FR_ACT_TO_TBL or FRA_SRC not in a:
        return None
    return Rule(f"{_ip_text(family, a[FRA_SRC])}/{src_len}", _uint(a.get(FRA_TABLE)) or table)


# --- FoU (iproute2) -------------------------------------------------------------------------


def parse_fou_show(text: str, family: Family) -> set[tuple[int, Family]]:
    """GUE ports in ``ip [-6] fou show``: ``port 5555 gue`` (``... -6`` for IPv6)."""
    out: set[tuple[int, Family]] = set()
    for line in text.splitlines():
        words = line.split()
        if "port" not in words or "gue" not in words:
            continue
        port = int(words[words.index("port") + 1])
        out.add((port, "ipv6" if "-6" in words or family == "ipv6" else "ipv4"))
    return out


def _fou_argv(family: Family, *rest: str) -> list[str]:
    return ["ip", *(["-6"] if family == "ipv6" else []), "fou", *rest]


# --- the adapter ----------------------------------------------------------------------------


class NetlinkRoutes:
    """The :class:`~.routes.RoutePort` of a network namespace (``netns`` a name under
    /run/netns; None: the agent's own). ``executor`` runs ``ip fou`` and ``modprobe`` (made for
    ``netns`` when not given); ``rt_tables`` the candidate files for the table name."""

    def __init__(
        self,
        netns: str | None = None,
        executor: Executor | None = None,
        rt_tables: Sequence[Path] = RT_TABLES_PATHS,
    ) -> None:
        self.netns = netns
        self.executor = executor or (Executor.in_netns(netns) if netns else Executor())
        self.rt_tables = tuple(rt_tables)
        self._sock: RtnlSocket | None = None
        self._index: dict[str, int] = {}

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _socket(self) -> RtnlSocket:
        if self._sock is None:
            self._sock = RtnlSocket(self.netns)
        return self._sock

    def _call(self, what: str, work: Callable[[RtnlSocket], T]) -> T:
        try:
            return work(self._socket())
        except OSError as err:
            self.close()  # a fresh socket next time: no stray reply is mistaken for another's
            raise RouteError(f"rtnetlink {what} in netns {self.netns}: {err}") from err

    async def _in_thread(self, what: str, work: Callable[[RtnlSocket], T]) -> T:
        return await asyncio.to_thread(self._call, what, work)

    def _links(self, sock: RtnlSocket) -> list[tuple[int, str, Tunnel | None]]:
        found = [decode_link(b) for b in sock.dump(RTM_GETLINK, _IFINFO.pack(0, 0, 0, 0, 0))]
        self._index = {name: index for index, name, _ in found}
        return found

    def _run(
        self, sock: RtnlSocket, ops: list[tuple[RouteOpKind, Route, int]]
    ) -> list[tuple[tuple[RouteOpKind, Route, int], int]]:
        def encode(op: tuple[RouteOpKind, Route, int], seq: int) -> bytes:
            kind, route, oif = op
            if kind == "delete":
                return _msg(
                    RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK, seq, route_body(route, 0, True)
                )
            flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
            return _msg(RTM_NEWROUTE, flags, seq, route_body(route, oif, False))

        with sock.lock:
            return netlink.run_batched(sock.sock, ops, encode, sock._next_seq, RECV_BYTES)

    # --- routes ---

    async def routes(self, protocol: int = 17) -> list[Route]:
        def work(sock: RtnlSocket) -> list[Route]:
            names = {index: name for index, name, _ in self._links(sock)}
            out: list[Route] = []
            for af in _AF.values():
                for body in sock.dump(RTM_GETROUTE, _RTMSG.pack(af, 0, 0, 0, 0, 0, 0, 0, 0)):
                    if body[5] != protocol:  # rtm_protocol, before decoding every route
                        continue
                    route = decode_route(body, names)
                    if route is not None:
                        out.append(route)
            return out

        return await self._in_thread("route dump", work)

    async def apply_routes(
        self, replace: Sequence[Route], delete: Sequence[Route] = ()
    ) -> list[RouteFailure]:
        if not replace and not delete:
            return []

        def work(sock: RtnlSocket) -> list[RouteFailure]:
            if any(r.dev and r.dev not in self._index for r in replace):
                self._links(sock)
            failures: list[RouteFailure] = []
            ops: list[tuple[RouteOpKind, Route, int]] = [("delete", r, 0) for r in delete]
            for route in replace:
                oif = self._index.get(route.dev, 0) if route.dev else 0
                if route.dev and not oif:
                    failures.append(RouteFailure("replace", route, errno.ENODEV))
                    continue
                ops.append(("replace", route, oif))
            for (kind, route, _), code in self._run(sock, ops):
                if kind == "delete" and code in (errno.ESRCH, errno.ENOENT):
                    continue
                failures.append(RouteFailure(kind, route, code))
            if any(f.errno == errno.ENODEV for f in failures):
                self._index = {}  # a link was recreated from outside: learn the indexes anew
            return failures

        return await self._in_thread("route batch", work)

    # --- tunnels ---

    async def tunnels(self) -> list[Tunnel]:
        links = await self._in_thread("link dump", self._links)
        return [tunnel for _, _, tunnel in links if tunnel is not None]

    async def add_tunnel(self, tunnel: Tunnel) -> None:
        flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        code = await self._request("tunnel add", RTM_NEWLINK, flags, tunnel_body(tunnel))
        if code:
            raise TunnelError(f"creating {tunnel.describe()}: {errno.errorcode.get(code)}", code)
        self._index.pop(tunnel.name, None)  # learnt with the next dump
        log.info("created tunnel %s", tunnel.describe())

    async def delete_tunnel(self, name: str) -> None:
        body = _IFINFO.pack(0, 0, 0, 0, 0) + attr(IFLA_IFNAME, name.encode() + b"\0")
        code = await self._request("tunnel delete", RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, body)
        self._index.pop(name, None)
        if code and code != errno.ENODEV:
            raise TunnelError(f"deleting tunnel {name}: {errno.errorcode.get(code)}", code)
        if not code:
            log.info("deleted tunnel %s", name)

    async def _request(self, what: str, kind: int, flags: int, body: bytes) -> int:
        """One acknowledged request; its errno (0: done)."""

        def work(sock: RtnlSocket) -> int:
            with sock.lock:
                failures = netlink.run_batched(
                    sock.sock, [body], lambda b, seq: _msg(kind, flags, seq, b), sock._next_seq,
                    RECV_BYTES,
                )  # fmt: skip
            return failures[0][1] if failures else 0

        return await self._in_thread(what, work)

    # --- rules ---

    async def rules(self) -> list[Rule]:
        def work(sock: RtnlSocket) -> list[Rule]:
            out: list[Rule] = []
            for af in _AF.values():
                head = _RTMSG.pack(af, 0, 0, 0, 0, 0, 0, 0, 0)
                out += [r for r in map(decode_rule, sock.dump(RTM_GETRULE, head)) if r]
            return out

        return await self._in_thread("rule dump", work)

    async def add_rule(self, rule: Rule) -> None:
        flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        code = await self._request("rule add", RTM_NEWRULE, flags, rule_body(rule))
        if code:
            raise RuleError(
                f"adding rule from {rule.src} lookup {rule.table}: {errno.errorcode.get(code)}"
            )

    async def delete_rule(self, rule: Rule) -> None:
        code = await self._request(
            "rule delete", RTM_DELRULE, NLM_F_REQUEST | NLM_F_ACK, rule_body(rule)
        )
        if code and code != errno.ENOENT:
            raise RuleError(
                f"deleting rule from {rule.src} lookup {rule.table}: {errno.errorcode.get(code)}"
            )

    # --- FoU, modules, rt_tables ---

    async def fou_ports(self) -> set[tuple[int, Family]]:
        out: set[tuple[int, Family]] = set()
        for family in FAMILIES:
            # iproute2 exits non-zero when the fou module is not loaded: no ports then.
            result = await self.executor.run(_fou_argv(family, "show"), check=False)
            if result.returncode == 0:
                out |= parse_fou_show(result.stdout, family)
        return out

    async def add_fou_port(self, port: int, family: Family) -> None:
        await self._fou("add", port, family)

    async def delete_fou_port(self, port: int, family: Family) -> None:
        await self._fou("del", port, family)

    async def _fou(self, verb: str, port: int, family: Family) -> None:
        argv = _fou_argv(family, verb, "port", str(port), *(["gue"] if verb == "add" else []))
        try:
            await self.executor.run(argv)
        except CommandError as err:
            raise TunnelError(f"FoU port {verb} {port} ({family}): {err}") from err

    async def load_modules(self, names: Sequence[str]) -> None:
        try:
            await self.executor.run(["modprobe", "-a", *names])
        except CommandError as err:
            raise RouteError(f"loading kernel modules {', '.join(names)}: {err}") from err

    def ensure_table_name(self, number: int, name: str) -> Path:
        return ensure_rt_tables_line(number, name, self.rt_tables)
