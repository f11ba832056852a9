"""A lab pod's process: serves TCP and UDP ports and runs connectivity probes on request.

Run inside a pod's network namespace. It answers every TCP connection on its ports with
``ok <name>`` and echoes UDP datagrams with the same, and takes probe requests over a unix socket
(the filesystem is shared across namespaces), so a test can fill a whole reachability matrix
without starting a process per probe.

Control protocol: one JSON object per line, ``{"dst": ip, "proto": "tcp"|"udp", "port": n,
"timeout": s, "sport": n (UDP only, optional)}`` → ``{"ok": bool, "peer": name-or-null,
"error": text}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
from typing import Any, cast

DEFAULT_TIMEOUT_S = 1.0
READ_LIMIT = 256


class _UDPEcho(asyncio.DatagramProtocol):
    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector datagram transport is not a registered DatagramTransport subclass.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self.transport is not None:
            self.transport.sendto(self.reply, addr)


class _UDPProbe(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if not self.done.done():
            self.done.set_result(data)

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable on a connected socket
        if not self.done.done():
            self.done.set_exception(exc)


async def probe_tcp(dst: str, port: int, timeout: float) -> str:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(dst, port), timeout)
    try:
        data = await asyncio.wait_for(reader.read(READ_LIMIT), timeout)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if not data.startswith(b"ok "):
        raise ConnectionError(f"unexpected answer {data!r}")
    return data[3:].decode().strip()


async def probe_udp(dst: str, port: int, timeout: float, sport: int = 0) -> str:
    """One datagram and its answer; a fixed ``sport`` keeps successive probes one flow."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    local = ("::" if family == socket.AF_INET6 else "0.0.0.0", sport) if sport else None
    transport, proto = await loop.create_datagram_endpoint(
        _UDPProbe, remote_addr=(dst, port), local_addr=local, family=family, reuse_port=bool(sport)
    )
    try:
        transport.sendto(b"ping")
        data = await asyncio.wait_for(proto.done, timeout)
    finally:
        transport.close()
    if not data.startswith(b"ok "):
        raise ConnectionError(f"unexpected answer {data!r}")
    return data[3:].decode().strip()


async def _probe(req: dict[str, Any]) -> dict[str, Any]:
    timeout = float(req.get("timeout", DEFAULT_TIMEOUT_S))
    dst, port = str(req["dst"]), int(req["port"])
    try:
        if req["proto"] == "tcp":
            peer = await probe_tcp(dst, port, timeout)
        else:
            peer = await probe_udp(dst, port, timeout, int(req.get("sport", 0)))
    except (OSError, TimeoutError, ConnectionError) as err:
        return {"ok": False, "peer": None, "error": f"{type(err).__name__}: {err}"}
    return {"ok": True, "peer": peer, "error": ""}


async def _control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            writer.write(json.dumps(await _probe(json.loads(line))).encode() + b"\n")
            await writer.drain()
    finally:
        writer.close()


async def _answer_tcp(name: str, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(f"ok {name}\n".encode())
    with contextlib.suppress(OSError):
        await writer.drain()
    writer.close()


async def serve(name: str, ports: list[int], control: str, ipv6: bool) -> None:
    loop = asyncio.get_running_loop()
    reply = f"ok {name}\n".encode()
    hosts = ["0.0.0.0", "::"] if ipv6 else ["0.0.0.0"]
    for port in ports:
        for host in hosts:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            flags = {"reuse_address": True}
            await asyncio.start_server(
                lambda r, w: _answer_tcp(name, r, w), host, port, family=family, **flags
            )
            sock = socket.socket(family, socket.SOCK_DGRAM)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            await loop.create_datagram_endpoint(lambda: _UDPEcho(reply), sock=sock)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(control)
    await asyncio.start_unix_server(_control, control)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--ports", default="80,81")
    parser.add_argument("--control", required=True, help="unix socket path for probe requests")
    parser.add_argument("--ipv6", action="store_true")
    args = parser.parse_args(argv)
    ports = [int(p) for p in args.ports.split(",") if p]
    asyncio.run(serve(args.name, ports, args.control, args.ipv6))


async def ask_control(
    control: str, dst: str, proto: str, port: int, timeout: float = 1.0, sport: int = 0
) -> str | None:
    """Ask the pod agent behind the unix socket ``control`` to connect to ``dst``: the address
    of the pod that answered, or None when nobody did."""
    reader, writer = await asyncio.open_unix_connection(control)
    try:
        req = {"dst": dst, "proto": proto, "port": port, "timeout": timeout, "sport": sport}
        writer.write(json.dumps(req).encode() + b"\n")
        await writer.drain()
        answer = json.loads(await reader.readline())
    finally:
        writer.close()
    return str(answer["peer"]) if answer["ok"] else None


if __name__ == "__main__":
    main()
