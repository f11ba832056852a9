"""flush_udp against the kernel's conntrack table, in a namespace of the test's own.

UDP packets sent to VIPs on the namespace's loopback make real conntrack entries (a conntrack
match in OUTPUT makes the namespace track connections); the flush of one VIP and port must
delete exactly its entries, of either family.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
import sys

import pytest

from kube_router.dataplane.conntrack import ConntrackError, flush_udp
from kube_router.dataplane.exec import Executor

pytestmark = pytest.mark.skipif(shutil.which("conntrack") is None, reason="needs conntrack")

FLOWS = [("10.96.0.1", 53), ("10.96.0.1", 54), ("10.96.0.2", 53), ("fd00::a", 53), ("fd00::a", 54)]
ORIGINAL = re.compile(r"dst=(\S+) sport=\d+ dport=(\d+)")
SEND = """
import socket, sys
for spec in sys.argv[1:]:
    host, port = spec.rsplit(",", 1)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socket.socket(family, socket.SOCK_DGRAM).sendto(b"x", (host, int(port)))
"""


def _in(netns: str, *argv: str) -> str:
    done = subprocess.run(["ip", "netns", "exec", netns, *argv], check=True, capture_output=True)
    return done.stdout.decode()


@pytest.fixture
def flows(netns: str) -> str:
    """The namespace with one UDP conntrack entry per flow of FLOWS."""
    for vip in ("10.96.0.1/32", "10.96.0.2/32", "fd00::a/128"):
        subprocess.run(["ip", "-n", netns, "addr", "add", vip, "dev", "lo", "nodad"], check=True)
    for tool in ("iptables", "ip6tables"):
        _in(netns, tool, "-A", "OUTPUT", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT")
    _in(netns, sys.executable, "-c", SEND, *(f"{host},{port}" for host, port in FLOWS))
    assert _tracked(netns) == set(FLOWS)
    return netns


def _tracked(netns: str) -> set[tuple[str, int]]:
    """(original destination, port) of every UDP entry (the first tuple of each line)."""
    out: set[tuple[str, int]] = set()
    for line in _in(netns, "conntrack", "-L", "-p", "udp").splitlines():
        m = ORIGINAL.search(line)
        assert m, line
        out.add((m.group(1), int(m.group(2))))
    return out


@pytest.mark.parametrize(
    ("vip", "port"),
    [("10.96.0.1", 53), ("fd00::a", 53), ("fd00:0::A", 54)],
)
async def test_flush_deletes_only_that_vip_and_port(
    flows: str, ns_exec: Executor, vip: str, port: int
) -> None:
    await flush_udp(ns_exec, vip, port)
    gone = {(str(ipaddress.ip_address(vip)), port)}
    assert _tracked(flows) == set(FLOWS) - gone


async def test_nothing_to_delete_is_success(flows: str, ns_exec: Executor) -> None:
    await flush_udp(ns_exec, "10.96.0.1", 53)
    await flush_udp(ns_exec, "10.96.0.1", 53)  # "0 flow entries have been deleted", exit 1
    await flush_udp(ns_exec, "10.96.0.9", 53)
    assert _tracked(flows) == set(FLOWS) - {("10.96.0.1", 53)}


async def test_other_failures_raise_with_the_vip() -> None:
    missing_netns = Executor.in_netns("krt-no-such-namespace")
    with pytest.raises(ConntrackError, match=r"10\.96\.0\.1:53.*exit"):
        await flush_udp(missing_netns, "10.96.0.1", 53)
