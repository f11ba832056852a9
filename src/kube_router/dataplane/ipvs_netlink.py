"""IPVS over generic netlink, batched: the real adapter of the IPVS port.

pyroute2's IPVS class costs about a millisecond per message; a cold sync of 100,000 real servers
needs better. Messages are packed here with ``struct`` and sent many to a ``sendto``, each asking
for an acknowledgement, so a failure is matched to its operation by sequence number.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Final, TypeVar

from kube_router.dataplane import ipvs
from kube_router.dataplane.ipvs import (
    Dest,
    DestState,
    Family,
    IPVSError,
    IPVSOpError,
    Op,
    Service,
    ServiceKey,
    ServiceState,
    Stats,
    Timeouts,
)
from kube_router.dataplane.netlink import in_netns, messages, open_socket, run_batched

NETLINK_GENERIC: Final = 16
GENL_ID_CTRL: Final = 0x10
CTRL_CMD_GETFAMILY: Final = 3
CTRL_ATTR_FAMILY_ID: Final = 1
CTRL_ATTR_FAMILY_NAME: Final = 2
NLM_F_REQUEST: Final = 0x1
NLM_F_ACK: Final = 0x4
NLM_F_DUMP: Final = 0x300
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLA_TYPE_MASK: Final = 0x3FFF
NLA_F_NESTED: Final = 0x8000

GENL_NAME: Final = "IPVS"
GENL_VERSION: Final = 1
CMD_NEW_SERVICE, CMD_SET_SERVICE, CMD_DEL_SERVICE, CMD_GET_SERVICE = 1, 2, 3, 4
CMD_NEW_DEST, CMD_SET_DEST, CMD_DEL_DEST, CMD_GET_DEST = 5, 6, 7, 8
CMD_SET_CONFIG, CMD_GET_CONFIG = 12, 13
ATTR_SERVICE, ATTR_DEST = 1, 2
ATTR_TIMEOUT_TCP, ATTR_TIMEOUT_TCP_FIN, ATTR_TIMEOUT_UDP = 4, 5, 6
SVC_AF, SVC_PROTOCOL, SVC_ADDR, SVC_PORT, SVC_FWMARK = 1, 2, 3, 4, 5
SVC_SCHED, SVC_FLAGS, SVC_TIMEOUT, SVC_NETMASK, SVC_STATS, SVC_PE, SVC_STATS64 = (
    6,
    7,
    8,
    9,
    10,
    11,
    12,
)
DST_ADDR, DST_PORT, DST_FWD, DST_WEIGHT, DST_UTHRESH, DST_LTHRESH = 1, 2, 3, 4, 5, 6
DST_ACTIVE, DST_INACTIVE, DST_PERSIST, DST_STATS, DST_AF, DST_STATS64 = 7, 8, 9, 10, 11, 12
DST_TUN_TYPE, DST_TUN_PORT, DST_TUN_FLAGS = 13, 14, 15

_KIND_CMD: Final = {
    "add-service": CMD_NEW_SERVICE,
    "edit-service": CMD_SET_SERVICE,
    "del-service": CMD_DEL_SERVICE,
    "add-dest": CMD_NEW_DEST,
    "edit-dest": CMD_SET_DEST,
    "del-dest": CMD_DEL_DEST,
}
_AF: Final = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}
_FAMILY: Final[dict[int, Family]] = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}
_NLMSG: Final = struct.Struct("=IHHII")
_GENL: Final = struct.Struct("=BBH")
_NLA: Final = struct.Struct("=HH")
RECV_BYTES: Final = 256 * 1024
V4_FULL_MASK: Final = 0xFFFFFFFF

T = TypeVar("T")
Attrs = dict[int, bytes]


# --- encoding ---------------------------------------------------------------------------------


def attr(kind: int, payload: bytes) -> bytes:
    length = _NLA.size + len(payload)
    return _NLA.pack(length, kind) + payload + b"\0" * (-length % 4)


def nested(kind: int, *parts: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(parts))


def u16(v: int) -> bytes:
    return struct.pack("=H", v)


def u32(v: int) -> bytes:
    return struct.pack("=I", v)


def be16(v: int) -> bytes:
    return struct.pack(">H", v)


def inet(address: str, family: Family) -> bytes:
    packed = socket.inet_pton(_AF[family], address)
    return packed + b"\0" * (16 - len(packed))


def _netmask(service: Service) -> bytes:
    prefix = service.prefix
    if service.key.family == "ipv6":
        return u32(prefix)  # IPv6: the prefix length itself, as the kernel reads it
    mask = (V4_FULL_MASK << (32 - prefix)) & V4_FULL_MASK
    return struct.pack(">I", mask)


def service_key_attrs(key: ServiceKey) -> bytes:
    parts = [attr(SVC_AF, u16(_AF[key.family]))]
    if key.fwmark:
        parts.append(attr(SVC_FWMARK, u32(key.fwmark)))
    else:
        parts.append(attr(SVC_PROTOCOL, u16(key.protocol)))
        parts.append(attr(SVC_ADDR, inet(key.address, key.family)))
        parts.append(attr(SVC_PORT, be16(key.port)))
    return b"".join(parts)


def service_attrs(service: Service, full: bool) -> bytes:
    body = service_key_attrs(service.key)
    if full:
        body += attr(SVC_SCHED, service.scheduler.encode() + b"\0")
        body += attr(
            SVC_FLAGS, struct.pack("=II", service.flags & ipvs.USER_FLAGS, ipvs.USER_FLAGS)
        )
        body += attr(SVC_TIMEOUT, u32(service.timeout))
        body += attr(SVC_NETMASK, _netmask(service))
        if service.pe_name:
            body += attr(SVC_PE, service.pe_name.encode() + b"\0")
    return nested(ATTR_SERVICE, body)


def dest_attrs(dest: Dest, full: bool) -> bytes:
    body = attr(DST_ADDR, inet(dest.address, dest.family)) + attr(DST_PORT, be16(dest.port))
    body += attr(DST_AF, u16(_AF[dest.family]))
    if full:
        body += attr(DST_FWD, u32(dest.forward)) + attr(DST_WEIGHT, u32(dest.weight))
        body += attr(DST_UTHRESH, u32(dest.u_threshold)) + attr(DST_LTHRESH, u32(dest.l_threshold))
        body += attr(DST_TUN_TYPE, struct.pack("=B", dest.tun_type))
        body += attr(DST_TUN_PORT, be16(dest.tun_port)) + attr(DST_TUN_FLAGS, u16(dest.tun_flags))
    return nested(ATTR_DEST, body)


def op_payload(op: Op) -> tuple[int, bytes]:
    """The command and attributes of one operation."""
    cmd = _KIND_CMD[op.kind]
    if op.dest is None:
        return cmd, service_attrs(op.service, full=op.kind != "del-service")
    svc = nested(ATTR_SERVICE, service_key_attrs(op.service.key))
    return cmd, svc + dest_attrs(op.dest, full=op.kind != "del-dest")


def message(family_id: int, flags: int, seq: int, cmd: int, payload: bytes) -> bytes:
    body = _GENL.pack(cmd, GENL_VERSION, 0) + payload
    return _NLMSG.pack(_NLMSG.size + len(body), family_id, flags, seq, 0) + body


# --- decoding ---------------------------------------------------------------------------------


def parse_attrs(data: bytes) -> Attrs:
    out: Attrs = {}
    i = 0
    while i + _NLA.size <= len(data):
        length, kind = _NLA.unpack_from(data, i)
        if length < _NLA.size:
            break
        out[kind & NLA_TYPE_MASK] = data[i + _NLA.size : i + length]
        i += length + (-length % 4)
    return out


def _uint(data: bytes | None, fmt: str = "=I") -> int:
    return struct.unpack(fmt, data[: struct.calcsize(fmt)])[0] if data else 0


def _text(data: bytes | None) -> str:
    return data.split(b"\0", 1)[0].decode() if data else ""


def _address(data: bytes | None, family: Family) -> str:
    if not data:
        return ""
    if family == "ipv4":
        return str(ipaddress.IPv4Address(data[:4]))
    return str(ipaddress.IPv6Address(data[:16]))  # the spelling ServiceKey.of uses


def parse_stats(attrs: Attrs, plain_key: int, wide_key: int) -> Stats:
    wide = wide_key in attrs
    raw = parse_attrs(attrs.get(wide_key) or attrs.get(plain_key) or b"")
    counters = [_uint(raw.get(i), "=Q" if wide or i in (4, 5) else "=I") for i in range(1, 11)]
    return Stats(*counters)


def decode_service(data: bytes) -> tuple[Service, Stats]:
    a = parse_attrs(data)
    family = _FAMILY.get(_uint(a.get(SVC_AF), "=H"), "ipv4")
    fwmark = _uint(a.get(SVC_FWMARK))
    if fwmark:
        key = ServiceKey.mark(fwmark, family)
    else:
        key = ServiceKey(
            family, _uint(a.get(SVC_PROTOCOL), "=H"), _address(a.get(SVC_ADDR), family),
            _uint(a.get(SVC_PORT), ">H"),
        )  # fmt: skip
    flags = _uint(a.get(SVC_FLAGS)) & ipvs.USER_FLAGS
    raw_mask = a.get(SVC_NETMASK)  # IPv6: the prefix length; IPv4: a mask in network order
    prefix = _uint(raw_mask) if family == "ipv6" else bin(_uint(raw_mask, ">I")).count("1")
    service = Service(
        key, _text(a.get(SVC_SCHED)), flags, _uint(a.get(SVC_TIMEOUT)), prefix, _text(a.get(SVC_PE))
    )
    return service, parse_stats(a, SVC_STATS, SVC_STATS64)


def decode_dest(data: bytes, service_family: Family) -> DestState:
    a = parse_attrs(data)
    family = _FAMILY.get(_uint(a.get(DST_AF), "=H"), service_family)
    dest = Dest(
        _address(a.get(DST_ADDR), family),
        _uint(a.get(DST_PORT), ">H"),
        _uint(a.get(DST_WEIGHT)),
        _uint(a.get(DST_FWD)) & 0x7,
        _uint(a.get(DST_UTHRESH)),
        _uint(a.get(DST_LTHRESH)),
        _uint(a.get(DST_TUN_TYPE), "=B"),
        _uint(a.get(DST_TUN_PORT), ">H"),
        _uint(a.get(DST_TUN_FLAGS), "=H"),
    )
    return DestState(
        dest,
        _uint(a.get(DST_ACTIVE)),
        _uint(a.get(DST_INACTIVE)),
        _uint(a.get(DST_PERSIST)),
        parse_stats(a, DST_STATS, DST_STATS64),
    )


# --- the socket -------------------------------------------------------------------------------


class GenlSocket:
    """A generic netlink socket bound to the IPVS family (blocking; one user at a time)."""

    def __init__(self, netns: str | None = None) -> None:
        try:
            self.sock = in_netns(netns, lambda: open_socket(NETLINK_GENERIC))
        except OSError as err:
            raise IPVSError(f"opening a netlink socket in netns {netns}") from err
        self.seq = 0
        self.lock = threading.Lock()
        try:
            self.family_id = self._resolve(GENL_NAME)
        except OSError as err:
            self.sock.close()
            raise IPVSError("IPVS is not available (no ip_vs module?)") from err

    def close(self) -> None:
        self.sock.close()

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return self.seq

    def _resolve(self, name: str) -> int:
        payload = attr(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0")
        seq = self._next_seq()
        self.sock.send(message(GENL_ID_CTRL, NLM_F_REQUEST, seq, CTRL_CMD_GETFAMILY, payload))
        for kind, _flags, _seq, body in self._receive_until(seq):
            if kind == NLMSG_ERROR:
                code = struct.unpack_from("=i", body)[0]
                raise OSError(-code, f"resolving generic netlink family {name}")
            a = parse_attrs(body[_GENL.size :])
            return _uint(a.get(CTRL_ATTR_FAMILY_ID), "=H")
        raise OSError(0, f"no answer resolving {name}")

    def _receive_until(self, seq: int) -> Iterator[tuple[int, int, int, bytes]]:
        """Messages answering ``seq`` until its DONE, ACK or error (dump or single reply)."""
        while True:
            for kind, flags, got, body in messages(self.sock.recv(RECV_BYTES)):
                if got != seq:
                    continue
                if kind == NLMSG_DONE:
                    return
                yield kind, flags, got, body
                if kind == NLMSG_ERROR or not flags & 0x2:  # not NLM_F_MULTI: a single reply
                    return

    def dump(self, cmd: int, payload: bytes = b"") -> list[Attrs]:
        with self.lock:
            seq = self._next_seq()
            flags = NLM_F_REQUEST | NLM_F_DUMP
            self.sock.send(message(self.family_id, flags, seq, cmd, payload))
            out: list[Attrs] = []
            for kind, _flags, _seq, body in self._receive_until(seq):
                if kind == NLMSG_ERROR:
                    code = struct.unpack_from("=i", body)[0]
                    if code:
                        raise IPVSError(f"IPVS dump (command {cmd}) failed: {os.strerror(-code)}")
                    continue
                out.append(parse_attrs(body[_GENL.size :]))
            return out

    def get(self, cmd: int, payload: bytes = b"") -> Attrs:
        """A command answered by one message (not a dump)."""
        with self.lock:
            seq = self._next_seq()
            self.sock.send(message(self.family_id, NLM_F_REQUEST, seq, cmd, payload))
            for kind, _flags, _seq, body in self._receive_until(seq):
                if kind == NLMSG_ERROR:
                    code = struct.unpack_from("=i", body)[0]
                    raise IPVSError(f"IPVS command {cmd} failed: {os.strerror(-code)}")
                return parse_attrs(body[_GENL.size :])
            raise IPVSError(f"IPVS command {cmd}: no answer")

    def run_ops(self, ops: list[Op]) -> list[tuple[Op, int]]:
        """Send every operation (batched), wait for all acknowledgements; the failures."""

        def encode(op: Op, seq: int) -> bytes:
            cmd, payload = op_payload(op)
            return message(self.family_id, NLM_F_REQUEST | NLM_F_ACK, seq, cmd, payload)

        with self.lock:
            return run_batched(self.sock, ops, encode, self._next_seq, RECV_BYTES)

    def request(self, cmd: int, payload: bytes) -> None:
        """One acknowledged command that is not a service or destination operation."""
        with self.lock:
            seq = self._next_seq()
            self.sock.send(message(self.family_id, NLM_F_REQUEST | NLM_F_ACK, seq, cmd, payload))
            for kind, _flags, _seq, body in self._receive_until(seq):
                code = struct.unpack_from("=i", body)[0] if kind == NLMSG_ERROR else 0
                if code:
                    raise IPVSError(f"IPVS command {cmd} failed: {os.strerror(-code)}")


class RealIPVS:
    """The kernel's IPVS tables (of the namespace the socket was opened in)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._sock: GenlSocket | None = None

    def _socket(self) -> GenlSocket:
        if self._sock is None:
            self._sock = GenlSocket(self.netns)
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def apply(self, tx: ipvs.Transaction) -> None:
        if not tx.ops:
            return
        ipvs.validate(tx.ops)
        failures = await asyncio.to_thread(self._socket().run_ops, list(tx.ops))
        if failures:
            raise IPVSOpError(failures)

    async def dump(self) -> dict[ServiceKey, ServiceState]:
        return await asyncio.to_thread(self._dump)

    def _dump(self) -> dict[ServiceKey, ServiceState]:
        sock = self._socket()
        out: dict[ServiceKey, ServiceState] = {}
        for a in sock.dump(CMD_GET_SERVICE):
            service, stats = decode_service(a.get(ATTR_SERVICE, b""))
            state = ServiceState(service, stats)
            key_attrs = nested(ATTR_SERVICE, service_key_attrs(service.key))
            for d in sock.dump(CMD_GET_DEST, key_attrs):
                dest = decode_dest(d.get(ATTR_DEST, b""), service.key.family)
                state.dests[dest.dest.key] = dest
            out[service.key] = state
        return out

    async def service_stats(self) -> dict[ServiceKey, tuple[Service, Stats]]:
        """Every service with its counters, in one dump (for metrics at scrape time)."""

        def run() -> dict[ServiceKey, tuple[Service, Stats]]:
            found = (
                decode_service(a.get(ATTR_SERVICE, b""))
                for a in self._socket().dump(CMD_GET_SERVICE)
            )
            return {service.key: (service, stats) for service, stats in found}

        return await asyncio.to_thread(run)

    async def timeouts(self) -> Timeouts:
        def run() -> Timeouts:
            a = self._socket().get(CMD_GET_CONFIG)
            return Timeouts(
                _uint(a.get(ATTR_TIMEOUT_TCP)),
                _uint(a.get(ATTR_TIMEOUT_TCP_FIN)),
                _uint(a.get(ATTR_TIMEOUT_UDP)),
            )

        return await asyncio.to_thread(run)

    async def set_timeouts(self, timeouts: Timeouts) -> None:
        payload = attr(ATTR_TIMEOUT_TCP, u32(timeouts.tcp))
        payload += attr(ATTR_TIMEOUT_TCP_FIN, u32(timeouts.tcp_fin))
        payload += attr(ATTR_TIMEOUT_UDP, u32(timeouts.udp))
        await asyncio.to_thread(self._socket().request, CMD_SET_CONFIG, payload)
