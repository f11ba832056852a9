"""The IPVS port against a real IPVS kernel: the netlink adapter and the fake agree.

Each scenario applies the same transactions to the kernel (in a network namespace of its own,
so its IPVS tables start empty) and to the fake, and demands the same refusals (errno by errno)
and the same tables afterwards.
"""

from __future__ import annotations

import asyncio
import errno
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from kube_router.dataplane import ipvs
from kube_router.dataplane.ipvs import Dest, IPVSOpError, Service, ServiceKey, Timeouts, Transaction
from kube_router.dataplane.ipvs_fake import FakeIPVS
from kube_router.dataplane.ipvs_netlink import RealIPVS

MODULES = ["ip_vs", *(f"ip_vs_{s}" for s in ("rr", "wlc", "lc", "dh", "sh", "mh")), "dummy", "veth"]
pytestmark = pytest.mark.vm(modules=MODULES)

VIP = ServiceKey.of("10.96.0.10", "tcp", 80)
VIP_UDP = ServiceKey.of("10.96.0.10", "udp", 53)
VIP_SCTP = ServiceKey.of("10.96.0.11", "sctp", 9000)
VIP6 = ServiceKey.of("fd00::10", "tcp", 443)
MARK = ServiceKey.mark(0x3039)
BACKEND = Dest("10.244.1.5", 8080)
STATS_WAIT_S = 15.0


@pytest.fixture
def node(netns: Callable[[str], str]) -> str:
    """A namespace of its own (lo up: IPVS checks a real server's address against the routing
    tables, which a namespace without lo has not), so its IPVS tables start empty."""
    return netns("ipvs")


@pytest.fixture
def real(node: str) -> Iterator[RealIPVS]:
    port = RealIPVS(node)
    yield port
    port.close()


def scenarios() -> dict[str, list[Transaction]]:
    t = Transaction
    svc = t().add_service(Service(VIP))
    return {
        "service twice": [svc, t().add_service(Service(VIP))],
        "edit missing": [t().edit_service(Service(VIP))],
        "delete missing": [t().del_service(VIP)],
        "dest without service": [t().add_dest(VIP, BACKEND)],
        "unknown scheduler": [t().add_service(Service(VIP, scheduler="nope"))],
        "ipv6 zero netmask": [t().add_service(Service(VIP6, netmask=0))],
        "dest twice": [svc, t().add_dest(VIP, BACKEND).add_dest(VIP, BACKEND)],
        "delete missing dest": [svc, t().del_dest(VIP, "10.0.0.9", 80)],
        "edit missing dest": [svc, t().edit_dest(VIP, BACKEND)],
        "weight over int": [svc, t().add_dest(VIP, Dest("10.0.0.1", 80, weight=2**31))],
        "thresholds crossed": [svc, t().add_dest(VIP, Dest("10.0.0.1", 80, 1, 0, 5, 6))],
        "mixed family masq": [svc, t().add_dest(VIP, Dest("fd00::1", 80))],
        "mixed family tunnel": [
            svc,
            t().add_dest(VIP, Dest("fd00::1", 80, forward=ipvs.FWD_TUNNEL)),
        ],
        "gue without port": [
            svc,
            t().add_dest(VIP, Dest("10.0.0.1", 80, forward=ipvs.FWD_TUNNEL, tun_type=ipvs.TUN_GUE)),
        ],
        "every shape": [
            t()
            .add_service(Service(VIP, "rr"))
            .add_service(Service(VIP_UDP, "sh", ipvs.F_SCHED1 | ipvs.F_SCHED2))
            .add_service(Service(VIP_SCTP, "mh", ipvs.F_SCHED1))
            .add_service(Service(VIP6, "lc", ipvs.F_PERSISTENT, 10800, 64))
            .add_service(Service(MARK, "dh", ipvs.F_PERSISTENT, 300, 24))
            .add_dest(VIP, BACKEND)
            .add_dest(VIP, Dest("10.244.2.7", 8080, weight=0))
            .add_dest(VIP_UDP, Dest("10.244.1.5", 53, forward=ipvs.FWD_DROUTE))
            .add_dest(
                VIP6, Dest("fd00:10:244:1::5", 8443, weight=3, u_threshold=100, l_threshold=10)
            )
            .add_dest(MARK, Dest("10.244.1.9", 0, forward=ipvs.FWD_TUNNEL))
        ],
        "edit then delete": [
            svc,
            t().add_dest(VIP, BACKEND),
            t()
            .edit_service(Service(VIP, "wlc", ipvs.F_PERSISTENT, 60))
            .edit_dest(VIP, Dest("10.244.1.5", 8080, weight=0)),
            t().del_dest(VIP, "10.244.1.5", 8080).add_dest(VIP, Dest("10.244.1.6", 8080)),
            t().del_service(VIP).add_service(Service(VIP_UDP)),
        ],
    }


async def _apply(port: RealIPVS | FakeIPVS, tx: Transaction) -> list[int]:
    try:
        await port.apply(tx)
    except IPVSOpError as err:
        return err.errnos()
    return []


@pytest.mark.parametrize("name", sorted(scenarios()))
async def test_kernel_and_fake_agree(real: RealIPVS, name: str) -> None:
    fake = FakeIPVS()
    for step, tx in enumerate(scenarios()[name]):
        want = await _apply(fake, tx)
        got = await _apply(real, tx)
        assert got == want, f"step {step}: kernel refused {got}, fake {want}"
        assert ipvs.plain(await real.dump()) == ipvs.plain(await fake.dump()), f"step {step}"


async def test_a_large_batch_is_acknowledged_operation_by_operation(real: RealIPVS) -> None:
    """2,000 real servers in one transaction (dozens of sendto batches), one of them refused."""
    tx = Transaction()
    keys = [ServiceKey.of(f"10.96.1.{i}", "tcp", 80) for i in range(20)]
    for key in keys:
        tx.add_service(Service(key))
        for j in range(100):
            tx.add_dest(key, Dest(f"10.244.{j}.{keys.index(key) + 1}", 8080))
    tx.add_dest(keys[0], Dest("10.244.0.1", 8080))  # already there
    with pytest.raises(IPVSOpError) as caught:
        await real.apply(tx)
    assert caught.value.errnos() == [errno.EEXIST]
    assert caught.value.failures[0][0] is tx.ops[-1]
    dumped = await real.dump()
    assert sum(len(s.dests) for s in dumped.values()) == 2000


async def test_timeouts_are_set_and_read_back(real: RealIPVS) -> None:
    fake = FakeIPVS()
    for port in (real, fake):
        await port.set_timeouts(Timeouts(tcp=3600, udp=10))
    assert await real.timeouts() == await fake.timeouts() == Timeouts(3600, 120, 10)


async def test_service_stats_count_real_connections(
    real: RealIPVS, node: str, netns: Callable[[str], str]
) -> None:
    """A connection from the node through a VIP (on a dummy interface, as kube-dummy-if) to a
    real server in another namespace shows in the service's counters."""
    backend = netns("backend")
    sh = ["ip", "netns", "exec"]
    for argv in (
        [
            "ip",
            "link",
            "add",
            "eth0",
            "netns",
            backend,
            "type",
            "veth",
            "peer",
            "name",
            "be",
            "netns",
            node,
        ],
        ["ip", "-n", backend, "addr", "add", "10.244.1.5/24", "dev", "eth0"],
        ["ip", "-n", backend, "link", "set", "eth0", "up"],
        ["ip", "-n", node, "addr", "add", "10.244.1.1/24", "dev", "be"],
        ["ip", "-n", node, "link", "set", "be", "up"],
        ["ip", "-n", node, "link", "add", "kube-dummy-if", "type", "dummy"],
        ["ip", "-n", node, "addr", "add", "10.96.0.10/32", "dev", "kube-dummy-if"],
        ["ip", "-n", node, "link", "set", "kube-dummy-if", "up"],
        ["ip", "-n", backend, "route", "add", "default", "via", "10.244.1.1"],
    ):
        subprocess.run(argv, check=True)
    server = subprocess.Popen(
        [*sh, backend, "python3", "-I", "-S", "-c", _ONE_SHOT_SERVER],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        await real.apply(
            Transaction().add_service(Service(VIP)).add_dest(VIP, Dest("10.244.1.5", 8080))
        )
        client = [*sh, node, "python3", "-I", "-S", "-c", _CLIENT]
        reply = subprocess.run(
            client, check=True, capture_output=True, text=True, timeout=60
        ).stdout
        assert reply.strip() == "hello"
    finally:
        server.kill()
        server.wait()
    # The kernel folds its per-CPU counters into the reported ones every 2 s (the estimator).
    deadline = time.monotonic() + STATS_WAIT_S
    while True:
        service, stats = (await real.service_stats())[VIP]
        if stats.conns or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert service.key == VIP and stats.conns == 1 and stats.packets_in > 0


_ONE_SHOT_SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); c.sendall(b"hello\\n"); c.close()
"""
_CLIENT = """
import socket
c = socket.create_connection(("10.96.0.10", 80), timeout=20); print(c.recv(64).decode().strip())
"""
