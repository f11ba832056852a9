"""What the routing benchmark watches: the kernel's routes of one namespace, and process memory.

:class:`RouteMonitor` listens to the rtnetlink IPv4 route group inside a network namespace (a
socket made there, read by a thread of its own), keeps the set of our routes (protocol 17 in
the main table) and stamps, with ``time.monotonic()``, the first change after :meth:`arm` and
the moment the set reaches the armed size. Listening costs the agent nothing: no dump is
polled. ``ENOBUFS`` (the receive buffer overflowed, so changes were lost) makes :meth:`wait`
raise instead of reporting a wrong figure.

Pure helpers (unit-tested): :func:`route_changes` decodes the notifications of one ``recv``,
:func:`parse_ip_route` the output of ``ip route show``, :func:`parse_status_kib` the memory lines
of ``/proc/<pid>/status``,
:func:`parse_stat_ticks` the CPU time in ``/proc/<pid>/stat``.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from kube_router.dataplane import netlink
from kube_router.dataplane.routes import MAIN_TABLE
from kube_router.dataplane.routes_netlink import decode_route
from kube_router.dataplane.vips_netlink import RTM_DELROUTE, RTM_NEWROUTE

RTMGRP_IPV4_ROUTE: Final = 0x40
KUBE_ROUTER_PROTO: Final = 17
MONITOR_RCVBUF: Final = 64 * 1024 * 1024
RECV_BYTES: Final = 1024 * 1024
READ_TIMEOUT_S: Final = 0.2
STAT_UTIME: Final = 11  # utime's index in /proc/<pid>/stat after the ")" closing the name
ETH_P_IP: Final = 0x0800
IPPROTO_TCP: Final = 6
BGP_PORT: Final = 179
TCP_FIN, TCP_RST = 0x01, 0x04
_IPV4: Final = struct.Struct("!BBHHHBBH4s4s")
_TCP: Final = struct.Struct("!HHIIBB")


class MonitorError(Exception):
    """The route monitor lost notifications, or a wait ran out."""


@dataclass(frozen=True)
class RouteChange:
    added: bool  # False: deleted
    dst: str
    protocol: int
    table: int


def route_changes(data: bytes) -> Iterator[RouteChange]:
    """The route notifications (RTM_NEWROUTE / RTM_DELROUTE) in the bytes of one ``recv``."""
    for kind, _flags, _seq, body in netlink.messages(data):
        if kind not in (RTM_NEWROUTE, RTM_DELROUTE):
            continue
        route = decode_route(body, {})
        if route is not None:
            yield RouteChange(kind == RTM_NEWROUTE, route.dst, route.protocol, route.table)


@dataclass(frozen=True)
class Segment:
    """A BGP TCP segment seen on the wire: its source, payload size and FIN/RST flags."""

    src: str
    payload: int
    closing: bool


def parse_bgp_segment(packet: bytes) -> Segment | None:
    """An IPv4 packet (no link header) as a :class:`Segment` when it is TCP to or from port
    179; None otherwise."""
    if len(packet) < _IPV4.size:
        return None
    ver_ihl, _tos, total, _id, _frag, _ttl, proto, _sum, src, _dst = _IPV4.unpack_from(packet)
    ihl = (ver_ihl & 0x0F) * 4
    if ver_ihl >> 4 != 4 or proto != IPPROTO_TCP or len(packet) < ihl + _TCP.size:
        return None
    sport, dport, _seq, _ack, offset, flags = _TCP.unpack_from(packet, ihl)
    if BGP_PORT not in (sport, dport):
        return None
    payload = total - ihl - (offset >> 4) * 4
    closing = bool(flags & (TCP_FIN | TCP_RST))
    return Segment(str(ipaddress.IPv4Address(src)), payload, closing)


def parse_ip_route(text: str) -> set[str]:
    """The destinations of ``ip -4 route show`` lines, as CIDRs (a host route has no length)."""
    out = set()
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        dst = words[0]
        if dst in ("unicast", "local", "broadcast", "blackhole", "unreachable", "prohibit"):
            dst = words[1]
        out.add(dst if "/" in dst else f"{dst}/32")
    return out


def parse_status_kib(text: str, key: str) -> int:
    """The value in KiB of ``key`` (``VmRSS``, ``VmHWM``) in a ``/proc/<pid>/status`` text."""
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name == key:
            return int(rest.split()[0])
    raise KeyError(f"no {key} in the status text")


def parse_stat_ticks(text: str) -> int:
    """utime + stime (clock ticks) from a ``/proc/<pid>/stat`` line (the name may hold
    spaces and parentheses: fields are counted after its last ``)``)."""
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[STAT_UTIME]) + int(fields[STAT_UTIME + 1])


def cpu_s(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used, in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        return parse_stat_ticks(fh.read()) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of process ``pid`` in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        text = fh.read()
    return parse_status_kib(text, "VmRSS"), parse_status_kib(text, "VmHWM")


def our_routes(netns: str) -> set[str]:
    """Our routes now (protocol 17, main table) in ``netns``, from ``ip route``."""
    argv = ["ip", "-n", netns, "-4", "route", "show", "table", "main", "proto", "17"]
    proc = subprocess.run(argv, capture_output=True, text=True, check=True)
    return parse_ip_route(proc.stdout)


def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    sock.setsockopt(socket.SOL_SOCKET, netlink.SO_RCVBUFFORCE, MONITOR_RCVBUF)
    sock.bind((0, RTMGRP_IPV4_ROUTE))
    sock.settimeout(READ_TIMEOUT_S)
    return sock


class RouteMonitor:
    """Our routes in ``netns`` as the kernel announces them; see the module doc.

    ``start()``; per phase ``arm(target)``, make the change, ``wait(timeout)`` →
    ``(first_change, reached)`` monotonic times; ``close()``.
    """

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.routes: set[str] = set()
        self._cond = threading.Condition()
        self._target = -1
        self._first: float | None = None
        self._reached: float | None = None
        self._error: str | None = None
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._sock = netlink.in_netns(self.netns, _listener)
        self._thread = threading.Thread(target=self._read, name="route-monitor", daemon=True)
        self._thread.start()
        self.resync()

    def resync(self) -> None:
        """Take the set from a dump (call it while nothing changes our routes)."""
        routes = our_routes(self.netns)
        with self._cond:
            self.routes = routes

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._sock is not None:
            self._sock.close()

    def arm(self, target: int) -> None:
        with self._cond:
            self._target, self._first, self._reached, self._error = target, None, None, None
            if len(self.routes) == target:
                self._reached = time.monotonic()

    def wait(self, timeout: float) -> tuple[float | None, float]:
        """Until the armed size is reached: (first change or None, when reached)."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self._reached is not None or self._error, timeout)
            if self._error:
                raise MonitorError(f"route monitor in {self.netns}: {self._error}")
            if not ok or self._reached is None:
                raise MonitorError(
                    f"{len(self.routes)} of our routes in {self.netns} after {timeout:g} s, "
                    f"not {self._target}"
                )
            return self._first, self._reached

    def _read(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                data = self._sock.recv(RECV_BYTES)
            except TimeoutError:
                continue
            except OSError as err:
                if err.errno != errno.ENOBUFS:
                    raise
                with self._cond:
                    self._error = "receive buffer overflowed (ENOBUFS): notifications lost"
                    self._cond.notify_all()
                continue
            self._apply(data, time.monotonic())

    def _apply(self, data: bytes, now: float) -> None:
        with self._cond:
            changed = False
            for change in route_changes(data):
                if change.protocol != KUBE_ROUTER_PROTO or change.table != MAIN_TABLE:
                    continue
                changed = True
                if change.added:
                    self.routes.add(change.dst)
                else:
                    self.routes.discard(change.dst)
            if not changed:
                return
            if self._first is None:
                self._first = now
            if self._reached is None and len(self.routes) == self._target:
                self._reached = now
                self._cond.notify_all()


def _sniffer(dev: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    sock.setsockopt(socket.SOL_SOCKET, netlink.SO_RCVBUFFORCE, MONITOR_RCVBUF)
    sock.bind((dev, ETH_P_IP))
    sock.settimeout(READ_TIMEOUT_S)
    return sock


class WireMonitor:
    """BGP segments from ``peer`` arriving on ``dev`` in ``netns`` (an AF_PACKET socket made
    there): ``timeline`` holds (time, payload bytes, FIN or RST) per segment."""

    def __init__(self, netns: str, peer: str, dev: str = "eth0") -> None:
        self.netns, self.peer, self.dev = netns, peer, dev
        self.timeline: list[tuple[float, int, bool]] = []
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._sock = netlink.in_netns(self.netns, lambda: _sniffer(self.dev))
        self._thread = threading.Thread(target=self._read, name="wire-monitor", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._sock is not None:
            self._sock.close()

    def _read(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                packet = self._sock.recv(RECV_BYTES)
            except TimeoutError:
                continue
            now = time.monotonic()
            seg = parse_bgp_segment(packet)
            if seg is not None and seg.src == self.peer and (seg.payload or seg.closing):
                self.timeline.append((now, seg.payload, seg.closing))

    def span(self, since: float, until: float) -> tuple[float | None, float | None, int]:
        """First and last segment from the peer in [since, until] and the payload bytes."""
        seen = [(t, n) for t, n, _ in self.timeline if since <= t <= until]
        if not seen:
            return None, None, 0
        return seen[0][0], seen[-1][0], sum(n for _, n in seen)
