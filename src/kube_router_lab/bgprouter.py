"""An external BGP router for the lab: its own gobgpd in a namespace, configured by a file.

The lab writes a TOML configuration (``gobgpd -f <file> -t toml``): the router's ASN and router
id, a neighbour per node (ASN, optional MD5 password, eBGP multihop, passive mode, timers,
address families). gobgpd's gRPC API listens on ``127.0.0.1:<api_port>`` inside the router's
namespace, so the ``gobgp`` CLI reaches it through ``ip netns exec``. What the router learned
is read from the CLI's JSON (``gobgp global rib -j``, ``gobgp neighbor -j``) into plain values:
:class:`RibPath` (prefix, next hop, AS path, communities, ...) and :class:`NeighborState`
(address, ASN, session state; passwords are never kept). :meth:`ExternalRouter.advertise` and
:meth:`ExternalRouter.withdraw` originate prefixes towards the nodes (``gobgp global rib add``).

Sessions take 6-9 s to come up (gobgpd's connect retry is at least 5 s, randomised).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

GOBGPD = "gobgpd"
GOBGP = "gobgp"
DEFAULT_API_PORT = 50051
BGP_PORT = 179
API_TIMEOUT_S = 10.0
ESTABLISH_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
POLL_S = 0.1
CLI_TIMEOUT_S = 10.0
FAMILIES = {"ipv4-unicast": "ipv4", "ipv6-unicast": "ipv6"}
SESSION_STATES = ("unknown", "idle", "connect", "active", "opensent", "openconfirm", "established")
ATTR_ORIGIN, ATTR_AS_PATH, ATTR_NEXT_HOP, ATTR_MED, ATTR_LOCAL_PREF = 1, 2, 3, 4, 5
ATTR_COMMUNITIES, ATTR_MP_REACH = 8, 14
COMMUNITY_SHIFT = 16
COMMUNITY_MASK = 0xFFFF
ATTR_LARGE_COMMUNITIES = 32
TOML_FIRST_PRINTABLE, TOML_DEL = 0x20, 0x7F


class BgpRouterError(Exception):
    """The external router could not be started, queried or told something."""


@dataclass(frozen=True)
class Neighbor:
    """One BGP neighbour of the external router (a node, usually)."""

    address: str
    asn: int
    password: str | None = field(default=None, repr=False)
    multihop_ttl: int | None = None
    passive: bool = False
    families: tuple[str, ...] = ("ipv4-unicast",)
    hold_time: int | None = None  # keepalive becomes a third of it
    connect_retry: int = 1  # gobgpd waits at least 5 s between attempts regardless


@dataclass(frozen=True)
class RibPath:
    """One path of the router's RIB."""

    prefix: str
    nexthop: str
    as_path: tuple[int, ...] = ()
    communities: tuple[str, ...] = ()  # "asn:value"
    large_communities: tuple[str, ...] = ()  # "asn:data1:data2"
    neighbor: str | None = None  # None: originated by this router
    best: bool = False
    origin: int | None = None
    med: int | None = None
    local_pref: int | None = None


@dataclass(frozen=True)
class NeighborState:
    address: str
    asn: int
    state: str  # one of SESSION_STATES

    @property
    def established(self) -> bool:
        return self.state == "established"


def _quote(value: str) -> str:
    """``value`` as a TOML basic string: quote, backslash and control characters escaped."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < TOML_FIRST_PRINTABLE or ord(ch) == TOML_DEL:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _neighbor_toml(n: Neighbor) -> list[str]:
    lines = ["[[neighbors]]", "  [neighbors.config]"]
    lines += [f"    neighbor-address = {_quote(n.address)}", f"    peer-as = {n.asn}"]
    if n.password:
        lines.append(f"    auth-password = {_quote(n.password)}")
    if n.passive:
        lines += ["  [neighbors.transport.config]", "    passive-mode = true"]
    if n.multihop_ttl is not None:
        lines += ["  [neighbors.ebgp-multihop.config]", "    enabled = true"]
        lines.append(f"    multihop-ttl = {n.multihop_ttl}")
    lines += ["  [neighbors.timers.config]", f"    connect-retry = {n.connect_retry}"]
    if n.hold_time is not None:
        lines.append(f"    hold-time = {n.hold_time}")
        lines.append(f"    keepalive-interval = {max(1, n.hold_time // 3)}")
    for family in n.families:
        lines += ["  [[neighbors.afi-safis]]", "    [neighbors.afi-safis.config]"]
        lines.append(f"      afi-safi-name = {_quote(family)}")
    return lines


def gobgpd_toml(
    asn: int, router_id: str, neighbors: Iterable[Neighbor], listen_port: int = BGP_PORT
) -> str:
    """gobgpd's configuration file for the router (TOML)."""
    lines = ["[global.config]", f"  as = {asn}", f"  router-id = {_quote(router_id)}"]
    lines.append(f"  port = {listen_port}")
    for n in neighbors:
        lines += ["", *_neighbor_toml(n)]
    return "\n".join(lines) + "\n"


def _community(value: int) -> str:
    return f"{value >> COMMUNITY_SHIFT}:{value & COMMUNITY_MASK}"


def _path(prefix: str, raw: dict[str, Any]) -> RibPath:
    attrs: dict[str, Any] = {"nexthop": ""}
    for attr in raw.get("attrs", []):
        kind = attr.get("type")
        if kind == ATTR_ORIGIN:
            attrs["origin"] = int(attr["value"])
        elif kind == ATTR_AS_PATH:
            segments = attr.get("as_paths") or []
            attrs["as_path"] = tuple(int(a) for seg in segments for a in seg.get("asns") or [])
        elif kind in (ATTR_NEXT_HOP, ATTR_MP_REACH):
            attrs["nexthop"] = str(attr.get("nexthop", ""))
        elif kind == ATTR_MED:
            attrs["med"] = int(attr["metric"])
        elif kind == ATTR_LOCAL_PREF:
            attrs["local_pref"] = int(attr["value"])
        elif kind == ATTR_COMMUNITIES:
            attrs["communities"] = tuple(_community(int(c)) for c in attr.get("communities", []))
        elif kind == ATTR_LARGE_COMMUNITIES:
            attrs["large_communities"] = tuple(
                f"{c['ASN']}:{c['LocalData1']}:{c['LocalData2']}" for c in attr.get("value", [])
            )
    neighbor = raw.get("neighbor-ip")
    return RibPath(
        prefix=prefix,
        neighbor=str(neighbor) if neighbor else None,
        best=bool(raw.get("best", False)),
        **attrs,
    )


def parse_rib(text: str) -> list[RibPath]:
    """``gobgp global rib -j`` output as paths, sorted by prefix then neighbour."""
    try:
        data = json.loads(text) if text.strip() else {}
        paths = [_path(str(pfx), raw) for pfx, raws in data.items() for raw in raws]
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise BgpRouterError(f"unreadable RIB from gobgp: {text[:200]!r}") from err
    return sorted(paths, key=lambda p: (p.prefix, p.neighbor or ""))


def parse_neighbors(text: str) -> list[NeighborState]:
    """``gobgp neighbor -j`` output as states (no passwords)."""
    try:
        out = []
        for peer in json.loads(text) if text.strip() else []:
            state = peer.get("state") or {}
            conf = peer.get("conf") or {}
            code = int(state.get("session_state", 0))
            out.append(
                NeighborState(
                    address=str(state.get("neighbor_address") or conf["neighbor_address"]),
                    asn=int(state.get("peer_asn") or conf.get("peer_asn", 0)),
                    state=SESSION_STATES[code] if 0 <= code < len(SESSION_STATES) else "unknown",
                )
            )
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise BgpRouterError("unreadable neighbour list from gobgp") from err
    return sorted(out, key=lambda n: n.address)


def gobgp_cli(netns: str, api_port: int, *args: str) -> str:
    """Run the ``gobgp`` CLI in ``netns`` against the gobgpd at 127.0.0.1:``api_port``."""
    argv = ["ip", "netns", "exec", netns, GOBGP, "-p", str(api_port), *args]
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, check=False, timeout=CLI_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as err:
        raise BgpRouterError(f"gobgp {' '.join(args)} in {netns} timed out") from err
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip()
        raise BgpRouterError(f"gobgp {' '.join(args)} in {netns}: exit {proc.returncode}: {msg}")
    return proc.stdout


@dataclass
class ExternalRouter:
    """gobgpd in namespace ``netns``, configured by a file under ``workdir``."""

    netns: str
    router_id: str
    asn: int
    workdir: Path
    neighbors: list[Neighbor] = field(default_factory=list)
    api_port: int = DEFAULT_API_PORT
    listen_port: int = BGP_PORT
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def config_path(self) -> Path:
        return self.workdir / f"{self.netns}.toml"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.netns}.log"

    def write_config(self) -> None:
        """Write the TOML file, readable by root only (it may hold MD5 passwords)."""
        text = gobgpd_toml(self.asn, self.router_id, self.neighbors, self.listen_port)
        self.config_path.touch(mode=0o600)
        self.config_path.write_text(text, encoding="utf-8")

    async def start(self, timeout: float = API_TIMEOUT_S) -> None:
        """Write the configuration, start gobgpd and wait for its API to answer."""
        if self.proc is not None and self.proc.poll() is None:
            raise BgpRouterError(f"gobgpd in {self.netns} is already running")
        self.write_config()
        argv = [
            *("ip", "netns", "exec", self.netns, GOBGPD, "-f", str(self.config_path), "-t"),
            *("toml", "--api-hosts", f"127.0.0.1:{self.api_port}", "--pprof-disable", "-l"),
            "info",
        ]
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        await self.wait_api(timeout)

    async def wait_api(self, timeout: float = API_TIMEOUT_S) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-500:]
                raise BgpRouterError(f"gobgpd in {self.netns} exited: {tail}")
            try:
                await asyncio.to_thread(self.gobgp, "global", "-j")
                return
            except BgpRouterError as err:
                if loop.time() >= deadline:
                    raise BgpRouterError(f"gobgpd API in {self.netns} never answered") from err
            await asyncio.sleep(POLL_S)

    def reload(self, neighbors: Sequence[Neighbor]) -> None:
        """Replace the neighbour list: rewrite the file and signal gobgpd (SIGHUP) to apply it."""
        self.neighbors = list(neighbors)
        self.write_config()
        if self.proc is None or self.proc.poll() is not None:
            raise BgpRouterError(f"gobgpd in {self.netns} is not running")
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def gobgp(self, *args: str) -> str:
        """The ``gobgp`` CLI against this router; its stdout."""
        return gobgp_cli(self.netns, self.api_port, *args)

    def info(self) -> dict[str, Any]:
        """``gobgp global -j``: asn, router_id, listen_port, listen_addresses."""
        data = json.loads(self.gobgp("global", "-j"))
        return data if isinstance(data, dict) else {}

    def rib(self, family: str = "ipv4") -> list[RibPath]:
        """Every path in the global RIB of ``family`` ("ipv4" or "ipv6")."""
        return parse_rib(self.gobgp("global", "rib", "-a", family, "-j"))

    def sessions(self) -> list[NeighborState]:
        return parse_neighbors(self.gobgp("neighbor", "-j"))

    def advertise(
        self,
        prefix: str,
        nexthop: str | None = None,
        communities: Sequence[str] = (),
        as_path: Sequence[int] = (),
    ) -> None:
        """Originate ``prefix`` (next hop: this router unless given)."""
        family = "ipv6" if ":" in prefix else "ipv4"
        args = ["global", "rib", "add", "-a", family, prefix]
        if nexthop:
            args += ["nexthop", nexthop]
        if communities:
            args += ["community", ",".join(communities)]
        if as_path:
            args += ["aspath", ",".join(str(a) for a in as_path)]
        self.gobgp(*args)

    def withdraw(self, prefix: str) -> None:
        family = "ipv6" if ":" in prefix else "ipv4"
        self.gobgp("global", "rib", "del", "-a", family, prefix)

    async def wait_established(
        self, addresses: Iterable[str] | None = None, timeout: float = ESTABLISH_TIMEOUT_S
    ) -> list[NeighborState]:
        """Wait until the sessions with ``addresses`` (default: every neighbour) are up."""
        want = set(addresses) if addresses is not None else {n.address for n in self.neighbors}

        def done(states: list[NeighborState]) -> bool:
            return want <= {s.address for s in states if s.established}

        return await self._wait(self.sessions, done, timeout, f"sessions with {sorted(want)}")

    async def wait_rib(
        self,
        predicate: Callable[[list[RibPath]], bool],
        family: str = "ipv4",
        timeout: float = ESTABLISH_TIMEOUT_S,
    ) -> list[RibPath]:
        """Poll the RIB until ``predicate`` holds; the RIB it held for."""
        return await self._wait(lambda: self.rib(family), predicate, timeout, f"{family} RIB")

    async def _wait(
        self, read: Callable[[], T], done: Callable[[T], bool], timeout: float, what: str
    ) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = await asyncio.to_thread(read)
            if done(value):
                return value
            if loop.time() >= deadline:
                raise BgpRouterError(f"{what} of {self.netns}: not as wanted after {timeout:g} s")
            await asyncio.sleep(POLL_S * 5)
