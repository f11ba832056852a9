"""rtnetlink, batched: the real kernel behind :class:`~.vips.VipManager`.

pyroute2 costs about a millisecond per request; ten thousand VIPs need twenty thousand
(an address and a route each). Here messages are packed with ``struct`` and sent many to a
``sendto``, each asking for an acknowledgement, so a refusal is matched to its operation by
sequence number (as :mod:`.ipvs_netlink` does for IPVS). The socket lives in a worker thread's
calls (``asyncio.to_thread``) and, with ``netns``, is opened inside that network namespace.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Final, TypeVar

from kube_router.dataplane import netlink
from kube_router.dataplane.ipvs import Family, family_of
from kube_router.dataplane.ipvs_netlink import attr, nested, parse_attrs
from kube_router.dataplane.netlink import in_netns, messages
from kube_router.dataplane.vips import Addr, Link, Op, Route, VipError, VipManager

NETLINK_ROUTE: Final = 0
NLM_F_REQUEST: Final = 0x1
NLM_F_MULTI: Final = 0x2
NLM_F_ACK: Final = 0x4
NLM_F_DUMP: Final = 0x300
NLM_F_REPLACE: Final = 0x100
NLM_F_EXCL: Final = 0x200
NLM_F_CREATE: Final = 0x400
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
IFLA_IFNAME, IFLA_LINKINFO, IFLA_INFO_KIND = 3, 18, 1
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_NODAD: Final = 0x02
IFA_F_NOPREFIXROUTE: Final = 0x200
RTA_DST, RTA_OIF, RTA_PRIORITY, RTA_PREFSRC, RTA_TABLE = 1, 4, 6, 7, 15
IFF_UP: Final = 0x1
RT_SCOPE_NOWHERE: Final = 255

_AF: Final = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}
_NLMSG: Final = struct.Struct("=IHHII")
_IFINFO: Final = struct.Struct("=BxHiII")
_IFADDR: Final = struct.Struct("=BBBBI")
_RTMSG: Final = struct.Struct("=BBBBBBBBI")
RECV_BYTES: Final = 1024 * 1024

T = TypeVar("T")


class NetlinkError(VipError):
    """A dump or the socket failed."""


def _msg(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return _NLMSG.pack(_NLMSG.size + len(body), kind, flags, seq, 0) + body


def _u32(v: int) -> bytes:
    return struct.pack("=I", v)


def _ip(address: str) -> bytes:
    return socket.inet_pton(_AF[family_of(address)], address)


def _ip_text(family: int, data: bytes | None) -> str:
    """The address as :func:`~.ipvs.canonical_ip` spells it ("" for none)."""
    if not data:
        return ""
    if family == socket.AF_INET:
        return socket.inet_ntop(family, data)
    return str(ipaddress.IPv6Address(data[:16]))  # inet_ntop spells mapped IPv4 otherwise


def _text(data: bytes | None) -> str:
    return data.split(b"\0", 1)[0].decode() if data else ""


def _uint(data: bytes | None) -> int:
    return struct.unpack("=I", data[:4])[0] if data else 0


# --- encoding operations -------------------------------------------------------------------


def _addr_body(addr: Addr) -> bytes:
    family = _AF[addr.family]
    body = _IFADDR.pack(family, addr.prefixlen, 0, addr.scope, addr.index)
    raw = _ip(addr.address)
    body += attr(IFA_LOCAL, raw) + attr(IFA_ADDRESS, raw)
    if addr.family == "ipv6":  # no DAD on a dummy; no main-table /128 route (#1698)
        body += attr(IFA_FLAGS, _u32(IFA_F_NODAD | IFA_F_NOPREFIXROUTE))
    return body


def _route_body(route: Route, deleting: bool) -> bytes:
    family = _AF[route.family]
    scope = RT_SCOPE_NOWHERE if deleting else route.scope
    protocol = 0 if deleting else route.protocol
    head = (family, route.dst_len, 0, 0, route.table & 0xFF, protocol, scope, route.type, 0)
    body = _RTMSG.pack(*head) + attr(RTA_TABLE, _u32(route.table))
    if route.dst:
        body += attr(RTA_DST, _ip(route.dst))
    body += attr(RTA_OIF, _u32(route.oif))
    if route.prefsrc and not (deleting and route.family == "ipv6"):
        body += attr(RTA_PREFSRC, _ip(route.prefsrc))
    if route.metric:
        body += attr(RTA_PRIORITY, _u32(route.metric))
    return body


def encode(op: Op, seq: int) -> bytes:
    """One acknowledged rtnetlink request for ``op``."""
    ack = NLM_F_REQUEST | NLM_F_ACK
    if op.kind == "add-link":
        info = nested(IFLA_LINKINFO, attr(IFLA_INFO_KIND, b"dummy"))
        body = _IFINFO.pack(0, 0, 0, 0, 0) + attr(IFLA_IFNAME, op.name.encode() + b"\0") + info
        return _msg(RTM_NEWLINK, ack | NLM_F_CREATE | NLM_F_EXCL, seq, body)
    if op.kind == "set-up":
        return _msg(RTM_NEWLINK, ack, seq, _IFINFO.pack(0, 0, op.index, IFF_UP, IFF_UP))
    if op.kind == "del-link":
        return _msg(RTM_DELLINK, ack, seq, _IFINFO.pack(0, 0, op.index, 0, 0))
    if op.kind in ("add-addr", "del-addr") and op.addr is not None:
        adding = op.kind == "add-addr"
        kind, flags = (RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL) if adding else (RTM_DELADDR, 0)
        return _msg(kind, ack | flags, seq, _addr_body(op.addr))
    if op.kind == "replace-route" and op.route is not None:
        flags = ack | NLM_F_CREATE | NLM_F_REPLACE
        return _msg(RTM_NEWROUTE, flags, seq, _route_body(op.route, deleting=False))
    if op.kind == "del-route" and op.route is not None:
        return _msg(RTM_DELROUTE, ack, seq, _route_body(op.route, deleting=True))
    raise VipError(f"malformed operation {op}")


# --- decoding dumps ------------------------------------------------------------------------


def decode_link(body: bytes) -> Link:
    _family, _type, index, flags, _change = _IFINFO.unpack_from(body)
    a = parse_attrs(body[_IFINFO.size :])
    kind = _text(parse_attrs(a.get(IFLA_LINKINFO, b"")).get(IFLA_INFO_KIND))
    return Link(index, _text(a.get(IFLA_IFNAME)), bool(flags & IFF_UP), kind)


def decode_addr(body: bytes) -> Addr:
    family, prefixlen, _flags, scope, index = _IFADDR.unpack_from(body)
    a = parse_attrs(body[_IFADDR.size :])
    raw = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS)  # IFA_ADDRESS is the peer on point-to-point
    return Addr(index, _ip_text(family, raw), prefixlen, scope)


def decode_route(body: bytes) -> Route:
    family, dst_len, _src_len, _tos, table, protocol, scope, kind, _flags = _RTMSG.unpack_from(body)
    a = parse_attrs(body[_RTMSG.size :])
    return Route(
        _ip_text(family, a.get(RTA_DST)),
        dst_len,
        _uint(a.get(RTA_OIF)),
        _uint(a.get(RTA_TABLE)) or table,
        kind,
        protocol,
        scope,
        _ip_text(family, a.get(RTA_PREFSRC)),
        _uint(a.get(RTA_PRIORITY)),
    )


# --- the socket ----------------------------------------------------------------------------


def open_socket(netns: str | None) -> socket.socket:
    """An rtnetlink socket, opened in ``netns`` (a name under /run/netns) when given."""
    try:
        return in_netns(netns, lambda: netlink.open_socket(NETLINK_ROUTE))
    except OSError as err:
        raise NetlinkError(f"opening an rtnetlink socket in netns {netns}") from err


class RtnlSocket:
    """Blocking rtnetlink requests: dumps and acknowledged batches (one user at a time)."""

    def __init__(self, netns: str | None = None) -> None:
        self.sock = open_socket(netns)
        self.seq = 0
        self.lock = threading.Lock()

    def close(self) -> None:
        self.sock.close()

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return self.seq

    def dump(self, kind: int, body: bytes) -> list[bytes]:
        with self.lock:
            seq = self._next_seq()
            self.sock.send(_msg(kind, NLM_F_REQUEST | NLM_F_DUMP, seq, body))
            return list(self._dump_replies(seq, kind))

    def _dump_replies(self, seq: int, kind: int) -> Iterator[bytes]:
        while True:
            for got_kind, _flags, got, body in messages(self.sock.recv(RECV_BYTES)):
                if got != seq:
                    continue
                if got_kind == NLMSG_DONE:
                    return
                if got_kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", body)[0]
                    raise NetlinkError(f"rtnetlink dump {kind} failed: {os.strerror(code)}")
                yield body

    def run_ops(self, ops: Sequence[Op]) -> list[tuple[Op, int]]:
        """Send every operation (batched), wait for every acknowledgement; the refusals."""
        with self.lock:
            return netlink.run_batched(self.sock, ops, encode, self._next_seq, RECV_BYTES)


class NetlinkKernel:
    """The :class:`~.vips.LinkKernel` of a network namespace, over rtnetlink."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._sock: RtnlSocket | None = None

    def _socket(self) -> RtnlSocket:
        if self._sock is None:
            self._sock = RtnlSocket(self.netns)
        return self._sock

    def _call(self, what: str, work: Callable[[RtnlSocket], T]) -> T:
        """``work`` on the socket; a socket error closes it (a fresh one next time: no reply
        of the failed exchange can be mistaken for another's)."""
        try:
            return work(self._socket())
        except OSError as err:
            self.close()
            raise NetlinkError(f"rtnetlink {what}: {err}") from err

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _dump(self, kind: int, body: bytes, decode: Callable[[bytes], T]) -> list[T]:
        def run() -> list[T]:
            return [decode(b) for b in self._call(f"dump {kind}", lambda s: s.dump(kind, body))]

        return await asyncio.to_thread(run)

    async def links(self) -> list[Link]:
        return await self._dump(RTM_GETLINK, _IFINFO.pack(0, 0, 0, 0, 0), decode_link)

    async def addresses(self) -> list[Addr]:
        return await self._dump(RTM_GETADDR, _IFADDR.pack(0, 0, 0, 0, 0), decode_addr)

    async def routes(self, family: Family) -> list[Route]:
        body = _RTMSG.pack(_AF[family], 0, 0, 0, 0, 0, 0, 0, 0)
        return await self._dump(RTM_GETROUTE, body, decode_route)

    async def apply(self, ops: Sequence[Op]) -> list[tuple[Op, int]]:
        if not ops:
            return []
        batch = list(ops)
        return await asyncio.to_thread(self._call, "batch", lambda s: s.run_ops(batch))


class RealVipLinks(VipManager):
    """kube-dummy-if and its VIP routes in the kernel (of ``netns`` when given)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netlink = NetlinkKernel(netns)
        super().__init__(self.netlink)

    def close(self) -> None:
        self.netlink.close()
