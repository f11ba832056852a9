"""What the batched netlink adapters share: sockets opened in a network namespace, a large
receive buffer, and batches whose every acknowledgement is matched to its request.

Used by :mod:`.ipvs_netlink` (generic netlink, IPVS) and :mod:`.vips_netlink` (rtnetlink).
"""

from __future__ import annotations

import ctypes
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Final, TypeVar

NETLINK_CAP_ACK: Final = 10
SOL_NETLINK: Final = 270
SO_RCVBUFFORCE: Final = 33  # not in Python's socket module
CLONE_NEWNET: Final = 0x40000000
NLMSG_ERROR: Final = 2
RCVBUF: Final = 4 * 1024 * 1024
# Each unread acknowledgement costs about a kilobyte of the receive buffer, which is capped at
# net.core.rmem_max (208 KiB by default) unless forced as root: batches stay well below that.
BATCH_OPS: Final = 128
_NLMSG: Final = struct.Struct("=IHHII")

T = TypeVar("T")
Pending = TypeVar("Pending")


class NetnsError(OSError):
    """A network namespace could not be entered."""


def in_netns(netns: str | None, make: Callable[[], T]) -> T:
    """``make()`` run in network namespace ``netns`` (a name under /run/netns), in a thread of
    its own so that no other thread changes namespace. Sockets keep the namespace they were
    made in."""
    if netns is None:
        return make()
    box: dict[str, T] = {}
    errors: list[BaseException] = []

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            with open(f"/run/netns/{netns}") as target, open("/proc/thread-self/ns/net") as home:
                if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
                    raise NetnsError(ctypes.get_errno(), f"setns into {netns}")
                try:
                    box["value"] = make()
                finally:
                    libc.setns(home.fileno(), CLONE_NEWNET)
        except BaseException as err:  # handed to the caller's thread below
            errors.append(err)

    thread = threading.Thread(target=run, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return box["value"]


def open_socket(protocol: int) -> socket.socket:
    """A bound netlink socket with acknowledgements capped and a large receive buffer."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)  # beyond rmem_max
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
    sock.bind((0, 0))
    return sock


def messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, seq, body) of each netlink message in ``data``."""
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, flags, seq, _pid = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size:
            break
        yield kind, flags, seq, data[offset + _NLMSG.size : offset + length]
        offset += (length + 3) & ~3


def run_batched(
    sock: socket.socket,
    ops: Iterable[Pending],
    encode: Callable[[Pending, int], bytes],
    next_seq: Callable[[], int],
    recv_bytes: int,
) -> list[tuple[Pending, int]]:
    """Send every operation, ``BATCH_OPS`` to a send, each encoded with its sequence number and
    asking for an acknowledgement; wait for all of them. The refusals, with their errnos."""
    failures: list[tuple[Pending, int]] = []
    pending: dict[int, Pending] = {}
    buf = bytearray()
    for op in ops:
        seq = next_seq()
        buf += encode(op, seq)
        pending[seq] = op
        if len(pending) >= BATCH_OPS:
            send_batch(sock, buf, pending, failures, recv_bytes)
    send_batch(sock, buf, pending, failures, recv_bytes)
    return failures


def send_batch(
    sock: socket.socket,
    buf: bytearray,
    pending: dict[int, Pending],
    failures: list[tuple[Pending, int]],
    recv_bytes: int,
) -> None:
    """Send the batch in ``buf``, then read until every request in ``pending`` (by sequence
    number) is acknowledged; each refusal goes to ``failures`` with its errno."""
    if not buf:
        return
    sock.send(bytes(buf))
    buf.clear()
    while pending:
        for kind, _flags, seq, body in messages(sock.recv(recv_bytes)):
            op = pending.pop(seq, None)
            if op is None or kind != NLMSG_ERROR:
                continue
            code = struct.unpack_from("=i", body)[0]
            if code:
                failures.append((op, -code))
