"""Smoke tests of the VM tier: the kernel features the proxy and routing controllers build on.

Every test builds its topology in network namespaces of its own (the ``netns`` fixture removes
them), so traffic never leaves them. Servers and clients are tiny Python programs started with
``-I -S``, which skips site-packages: under TCG that saves a second or more per process.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

NetnsFactory = Callable[[str], str]

VIP = "10.96.0.10"
SERVICE_PORT = 80
BACKEND_PORT = 8080
READY_TIMEOUT_S = 60.0
CONNECTIONS = 4

SERVER = """
import socket, sys
name, port = sys.argv[1], int(sys.argv[2])
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", port))
server.listen(16)
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    conn.sendall(name.encode() + b"\\n")
    conn.close()
"""

CLIENT = """
import socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(count):
    with socket.create_connection((host, port), timeout=10) as conn:
        print(conn.makefile().readline().strip(), flush=True)
"""


def run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def ip(ns: str, *args: str) -> str:
    return run("ip", "-n", ns, *args)


def in_ns(ns: str, *argv: str) -> str:
    return run("ip", "netns", "exec", ns, *argv)


def python(*args: str) -> list[str]:
    return [sys.executable, "-I", "-S", "-c", *args]


def veth(ns_a: str, name_a: str, addr_a: str, ns_b: str, name_b: str, addr_b: str) -> None:
    """A veth pair between two namespaces, addressed and up."""
    run(
        "ip",
        "link",
        "add",
        name_a,
        "netns",
        ns_a,
        "type",
        "veth",
        "peer",
        "name",
        name_b,
        "netns",
        ns_b,
    )
    for ns, name, addr in ((ns_a, name_a, addr_a), (ns_b, name_b, addr_b)):
        ip(ns, "addr", "add", addr, "dev", name)
        ip(ns, "link", "set", name, "up")


class Servers:
    """TCP servers in namespaces that answer their name to every connection."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, ns: str, name: str, port: int) -> None:
        argv = ["ip", "netns", "exec", ns, *python(SERVER, name, str(port))]
        self.procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True))

    def wait_ready(self) -> None:
        """Until every server listens: each prints "ready" then (no fixed sleeps under TCG)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        for proc in self.procs:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], max(0, deadline - time.monotonic()))
            if not ready or proc.stdout.readline().strip() != "ready":
                pytest.fail(f"server {proc.args} did not start listening")

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def servers() -> Iterator[Servers]:
    started = Servers()
    yield started
    started.stop()


@pytest.mark.vm(modules=["ip_vs", "ip_vs_rr", "dummy", "veth"])
def test_ipvs_nat_round_robin_reaches_both_backends(netns: NetnsFactory, servers: Servers) -> None:
    client, node = netns("client"), netns("node")
    backends = {"be1": netns("be1"), "be2": netns("be2")}
    veth(client, "eth0", "10.200.1.2/24", node, "client", "10.200.1.1/24")
    ip(client, "route", "add", "default", "via", "10.200.1.1")
    for i, (name, ns) in enumerate(backends.items(), start=2):
        veth(ns, "eth0", f"10.200.{i}.2/24", node, name, f"10.200.{i}.1/24")
        ip(ns, "route", "add", "default", "via", f"10.200.{i}.1")
        servers.start(ns, name, BACKEND_PORT)
    # The node holds the VIP on a dummy interface, as kube-router's kube-dummy-if does.
    ip(node, "link", "add", "kube-dummy-if", "type", "dummy")
    ip(node, "addr", "add", f"{VIP}/32", "dev", "kube-dummy-if")
    ip(node, "link", "set", "kube-dummy-if", "up")
    in_ns(node, "sysctl", "-qw", "net.ipv4.ip_forward=1")  # NAT replies pass through the node
    service = f"{VIP}:{SERVICE_PORT}"
    in_ns(node, "ipvsadm", "-A", "-t", service, "-s", "rr")
    for i in range(2, 2 + len(backends)):
        in_ns(node, "ipvsadm", "-a", "-t", service, "-r", f"10.200.{i}.2:{BACKEND_PORT}", "-m")
    servers.wait_ready()

    answers = in_ns(client, *python(CLIENT, VIP, str(SERVICE_PORT), str(CONNECTIONS))).split()

    assert sorted(answers) == ["be1", "be1", "be2", "be2"], answers
    listing = in_ns(node, "ipvsadm", "-Ln")
    assert f"TCP  {service} rr" in listing, listing
    assert listing.count("Masq") == len(backends), listing


@pytest.mark.vm(modules=["ipip", "fou"])
def test_ipip_tunnel_and_fou_port_can_be_created(netns: NetnsFactory) -> None:
    ns = netns("tun")
    ip(ns, "link", "add", "tun-ipip", "type", "ipip", "local", "10.0.0.1", "remote", "10.0.0.2")
    ip(ns, "fou", "add", "port", "5555", "ipproto", "4")
    encap = ("encap", "fou", "encap-sport", "auto", "encap-dport", "5555")
    ip(
        ns,
        "link",
        "add",
        "tun-fou",
        "type",
        "ipip",
        "local",
        "10.0.0.1",
        "remote",
        "10.0.0.3",
        *encap,
    )
    ip(ns, "link", "set", "tun-ipip", "up")
    ip(ns, "link", "set", "tun-fou", "up")

    assert "port 5555 ipproto 4" in ip(ns, "fou", "show")
    assert "remote 10.0.0.2 local 10.0.0.1" in ip(ns, "-d", "link", "show", "tun-ipip")
    details = ip(ns, "-d", "link", "show", "tun-fou")
    assert "encap fou" in details and "encap-dport 5555" in details, details


@pytest.mark.vm(modules=["ipip", "fou", "veth"])
def test_tcp_crosses_an_ipip_in_fou_tunnel(netns: NetnsFactory, servers: Servers) -> None:
    """Two "nodes" on one link reach each other's tunnel address only through ipip over FoU."""
    a, b = netns("a"), netns("b")
    veth(a, "eth0", "10.201.0.1/24", b, "eth0", "10.201.0.2/24")
    for ns, local, remote, inner, peer in (
        (a, "10.201.0.1", "10.201.0.2", "10.202.0.1", "10.202.0.2"),
        (b, "10.201.0.2", "10.201.0.1", "10.202.0.2", "10.202.0.1"),
    ):
        ip(ns, "fou", "add", "port", "5555", "ipproto", "4")
        encap = ("encap", "fou", "encap-sport", "auto", "encap-dport", "5555")
        ip(ns, "link", "add", "tun0", "type", "ipip", "local", local, "remote", remote, *encap)
        ip(ns, "addr", "add", f"{inner}/32", "dev", "tun0")
        ip(ns, "link", "set", "tun0", "up")
        ip(ns, "route", "add", f"{peer}/32", "dev", "tun0", "src", inner)
    servers.start(b, "b", BACKEND_PORT)
    servers.wait_ready()

    answers = in_ns(a, *python(CLIENT, "10.202.0.2", str(BACKEND_PORT), "1")).split()

    assert answers == ["b"]
    (stats,) = json.loads(ip(b, "-s", "-j", "link", "show", "tun0"))
    assert stats["stats64"]["rx"]["packets"] > 0, stats  # decapsulated by b's tunnel
