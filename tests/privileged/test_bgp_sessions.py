"""Real BGP sessions between gobgpd processes in two network namespaces joined by a veth.

ns1: gobgpd A (AS 64512, 192.168.77.1). ns2: gobgpd B (AS 64512, 192.168.77.2, iBGP with A)
and gobgpd C (AS 64600, 192.168.77.3 port 1179, eBGP with A, MD5). Each runs under a
GoBGPDaemon driven through GrpcEngine. The sessions are set up once for the module (they take
6-9 s to come up) and the tests run in order on them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from kube_router.bgp.daemon import DaemonConfig, GoBGPDaemon
from kube_router.bgp.grpc_engine import GrpcEngine
from kube_router.bgp.model import (
    IPV4,
    IPV6,
    GlobalSpec,
    PathSpec,
    PeerEvent,
    PeerSpec,
    RouteEvent,
    SessionState,
)

pytestmark = [pytest.mark.privileged, pytest.mark.asyncio(loop_scope="module")]

A_IP, B_IP, C_IP = "192.168.77.1", "192.168.77.2", "192.168.77.3"
C_PORT = 1179
PASSWORD = "right-horse"
SESSION_TIMEOUT_S = 25.0  # gobgpd retries connecting every 5-10 s
POD_A = PathSpec("10.244.1.0/24", A_IP, communities=(64512 << 16 | 100,))
POD_A_V6 = PathSpec("2001:db8:1::/64", "fd00:77::1")


@dataclass
class Collector:
    """Everything one watch stream yielded, with a way to wait for a condition."""

    events: list[object] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, stream: AsyncIterator[RouteEvent] | AsyncIterator[PeerEvent]) -> None:
        async for event in stream:
            self.events.append(event)
            self.changed.set()

    async def wait_for(self, predicate: Callable[[list[object]], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self.events):
                self.changed.clear()
                await self.changed.wait()


@dataclass
class Speaker:
    daemon: GoBGPDaemon
    engine: GrpcEngine
    global_: GlobalSpec
    peers: list[PeerSpec]
    paths: list[PathSpec] = field(default_factory=list)

    async def push(self) -> None:
        await self.engine.ensure_global(self.global_)
        await self.engine.sync_peers(self.peers)
        await self.engine.sync_paths(self.paths)

    async def state_of(self, address: str) -> SessionState:
        for status in await self.engine.peer_status():
            if status.address == address:
                return status.state
        return SessionState.UNKNOWN

    async def wait_state(self, address: str, state: SessionState, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while await self.state_of(address) is not state:
                await asyncio.sleep(0.2)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def namespaces() -> Iterator[tuple[str, str]]:
    tag = uuid.uuid4().hex[:6]
    ns1, ns2 = f"krbgp-{tag}-1", f"krbgp-{tag}-2"
    for ns in (ns1, ns2):
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
    try:
        _ip("-n", ns1, "link", "add", "v1", "type", "veth", "peer", "name", "v2", "netns", ns2)
        _ip("-n", ns1, "addr", "add", f"{A_IP}/24", "dev", "v1")
        _ip("-n", ns2, "addr", "add", f"{B_IP}/24", "dev", "v2")
        _ip("-n", ns2, "addr", "add", f"{C_IP}/24", "dev", "v2")
        _ip("-n", ns1, "link", "set", "v1", "up")
        _ip("-n", ns2, "link", "set", "v2", "up")
        yield ns1, ns2
    finally:
        for ns in (ns1, ns2):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def _speaker(run: Path, ns: str, global_: GlobalSpec, peers: list[PeerSpec]) -> Speaker:
    config = DaemonConfig(
        socket_path=str(run / "gobgpd.sock"),
        admin_port=0,
        command_prefix=("ip", "netns", "exec", ns),
    )
    daemon = GoBGPDaemon(config)
    return Speaker(daemon, GrpcEngine(daemon.target), global_, peers)


@dataclass
class Lab:
    a: Speaker
    b: Speaker
    c: Speaker
    b_routes: Collector
    c_routes: Collector
    b_peers: Collector
    restarts: list[int]
    tasks: list[asyncio.Task[None]]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab(
    namespaces: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Lab]:
    ns1, ns2 = namespaces
    root = tmp_path_factory.mktemp("bgp")
    a_peers = [
        PeerSpec(B_IP, 64512, local_address=A_IP, families=(IPV4, IPV6), internal=True),
        PeerSpec(C_IP, 64600, local_address=A_IP, port=C_PORT, password=PASSWORD),
    ]
    a = _speaker(root / "a", ns1, GlobalSpec(64512, A_IP), a_peers)
    b_peers = [PeerSpec(A_IP, 64512, local_address=B_IP, families=(IPV4, IPV6), internal=True)]
    b = _speaker(root / "b", ns2, GlobalSpec(64512, B_IP, 179, (B_IP,)), b_peers)
    c_peers = [PeerSpec(A_IP, 64512, local_address=C_IP, password=PASSWORD)]
    c = _speaker(root / "c", ns2, GlobalSpec(64600, C_IP, C_PORT, (C_IP,)), c_peers)
    restarts: list[int] = []

    async def a_restarted() -> None:
        restarts.append(1)
        await a.push()

    a.daemon.on_restart = a_restarted
    for speaker in (a, b, c):
        await speaker.daemon.start()
        await speaker.push()
    collectors = Lab(a, b, c, Collector(), Collector(), Collector(), restarts, [])
    for collector, stream in (
        (collectors.b_routes, b.engine.watch_routes()),
        (collectors.c_routes, c.engine.watch_routes()),
        (collectors.b_peers, b.engine.watch_peers()),
    ):
        collectors.tasks.append(asyncio.create_task(collector.run(stream)))
    try:
        await asyncio.gather(
            a.wait_state(B_IP, SessionState.ESTABLISHED, SESSION_TIMEOUT_S),
            a.wait_state(C_IP, SessionState.ESTABLISHED, SESSION_TIMEOUT_S),
        )
        yield collectors
    finally:
        for task in collectors.tasks:
            task.cancel()
        for speaker in (a, b, c):
            await speaker.engine.close()
            await speaker.daemon.stop(keep_running=False)


def _routes(events: list[object], prefix: str) -> list[RouteEvent]:
    return [e for e in events if isinstance(e, RouteEvent) and e.prefix == prefix]


def _has_route(prefix: str, withdrawn: bool = False) -> Callable[[list[object]], bool]:
    def check(events: list[object]) -> bool:
        got = _routes(events, prefix)
        return bool(got) and got[-1].withdraw is withdrawn

    return check


async def test_sessions_are_established(lab: Lab) -> None:
    status = {s.address: s for s in await lab.a.engine.peer_status()}
    assert status[B_IP].state is SessionState.ESTABLISHED and status[B_IP].internal
    assert status[C_IP].state is SessionState.ESTABLISHED and not status[C_IP].internal


async def test_paths_reach_ibgp_and_ebgp_peers(lab: Lab) -> None:
    lab.a.paths = [POD_A, POD_A_V6]
    await lab.a.engine.sync_paths(lab.a.paths)
    await lab.b_routes.wait_for(_has_route(POD_A.prefix), 10)
    await lab.b_routes.wait_for(_has_route(POD_A_V6.prefix), 10)
    await lab.c_routes.wait_for(_has_route(POD_A.prefix), 10)
    got = _routes(lab.b_routes.events, POD_A.prefix)[-1]
    assert (got.next_hop, got.neighbor, got.communities) == (A_IP, A_IP, POD_A.communities)
    assert _routes(lab.b_routes.events, POD_A_V6.prefix)[-1].next_hop == POD_A_V6.next_hop
    # our own paths never come back as route events
    assert not [e for e in lab.b_routes.events if isinstance(e, RouteEvent) and e.neighbor == B_IP]


async def test_a_killed_gobgpd_is_restarted_and_state_pushed_again(lab: Lab) -> None:
    pid = lab.a.daemon.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await lab.b_routes.wait_for(_has_route(POD_A.prefix, withdrawn=True), 5)
    await lab.b_routes.wait_for(lambda _: bool(lab.restarts), 15)
    assert lab.a.daemon.pid != pid
    await lab.a.wait_state(B_IP, SessionState.ESTABLISHED, SESSION_TIMEOUT_S)
    await lab.b_routes.wait_for(_has_route(POD_A.prefix), 10)


async def test_wrong_md5_password_keeps_the_session_down(lab: Lab) -> None:
    await lab.a.wait_state(C_IP, SessionState.ESTABLISHED, SESSION_TIMEOUT_S)
    wrong = [
        PeerSpec(**{**p.__dict__, "password": "wrong"}) if p.address == C_IP else p
        for p in lab.a.peers
    ]
    await lab.a.engine.sync_peers(wrong)
    await asyncio.sleep(12)  # longer than a connect retry (5-10 s)
    assert await lab.c.state_of(A_IP) is not SessionState.ESTABLISHED
    assert await lab.a.state_of(C_IP) is not SessionState.ESTABLISHED
    await lab.a.engine.sync_peers(lab.a.peers)
    await lab.a.wait_state(C_IP, SessionState.ESTABLISHED, SESSION_TIMEOUT_S)


async def test_adoption_after_an_agent_restart_keeps_the_session(lab: Lab) -> None:
    await lab.a.wait_state(B_IP, SessionState.ESTABLISHED, SESSION_TIMEOUT_S)
    seen = len(lab.b_peers.events)
    pid = lab.a.daemon.pid
    await lab.a.daemon.stop(keep_running=True)
    await lab.a.engine.close()

    lab.a.daemon = GoBGPDaemon(lab.a.daemon.config, on_restart=lab.a.daemon.on_restart)
    assert await lab.a.daemon.start() is True
    assert lab.a.daemon.pid == pid
    lab.a.engine = GrpcEngine(lab.a.daemon.target)
    await lab.a.push()  # level-triggered: nothing to change
    await asyncio.sleep(1)
    assert await lab.a.state_of(B_IP) is SessionState.ESTABLISHED
    flaps = [e for e in lab.b_peers.events[seen:] if isinstance(e, PeerEvent) and e.address == A_IP]
    assert flaps == []
    assert not _routes(lab.b_routes.events, POD_A.prefix)[-1].withdraw
