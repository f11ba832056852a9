"""Overlay tunnels on a kernel with ipip and fou: the route injector over the real adapter.

Two "nodes" (namespaces) on different subnets, joined by a router namespace; each node has
``kube-bridge`` with a pod namespace on its pod CIDR. The router knows no pod CIDR, so pod
traffic crosses only through the tunnels the injectors make from the RouteEvents fed to them:
first IPIP, then FoU (GUE on port 5555) after an encap switch, and not at all once the peer is
removed. A second test holds the tunnel adapter to the fake (what each holds, the clashes).
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kube_router.bgp.model import RouteEvent
from kube_router.controllers.routing.injector import InjectorSettings, NodeInfo, RouteInjector
from kube_router.dataplane.routes import Encap, Tunnel, TunnelError, tunnel_name
from kube_router.dataplane.routes_fake import FakeRouteKernel, FakeRoutes
from kube_router.dataplane.routes_netlink import NetlinkRoutes

NetnsFactory = Callable[[str], str]

PORT = 8080
READY_TIMEOUT_S = 60.0
NODES = {  # name: (node IP, router side IP, pod CIDR prefix)
    "a": ("192.168.1.10", "192.168.1.1", "10.244.1"),
    "b": ("192.168.2.10", "192.168.2.1", "10.244.2"),
}
IPIP = InjectorSettings()
FOU = InjectorSettings(encap=Encap.FOU, encap_port=5555)

SERVER = """
import socket
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", 8080))
server.listen(8)
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    conn.sendall(b"pod-b\\n")
    conn.close()
"""

CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], 8080), timeout=5) as conn:
        print(conn.makefile().readline().strip())
except OSError as err:
    print("failed", type(err).__name__)
"""


def ip(ns: str, *args: str) -> str:
    done = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"ip -n {ns} {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def python(ns: str, program: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-I", "-S", "-c", program, *args]


def veth(ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
    ip(ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b)
    ip(ns_a, "link", "set", name_a, "up")
    ip(ns_b, "link", "set", name_b, "up")


def build(make: NetnsFactory) -> dict[str, str]:
    """router, a, b, pod-a, pod-b: namespace names."""
    ns = {role: make(role) for role in ("router", "a", "b", "pod-a", "pod-b")}
    ip(ns["router"], "netns", "exec", ns["router"], "sysctl", "-qw", "net.ipv4.ip_forward=1")
    for node, (node_ip, router_ip, pods) in NODES.items():
        n, pod = ns[node], ns[f"pod-{node}"]
        veth(n, "eth0", ns["router"], f"to-{node}")
        ip(ns["router"], "addr", "add", f"{router_ip}/24", "dev", f"to-{node}")
        ip(n, "addr", "add", f"{node_ip}/24", "dev", "eth0")
        ip(n, "route", "add", "default", "via", router_ip)
        ip(n, "netns", "exec", n, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        ip(n, "link", "add", "kube-bridge", "type", "bridge")
        ip(n, "addr", "add", f"{pods}.1/24", "dev", "kube-bridge")
        ip(n, "link", "set", "kube-bridge", "up")
        veth(pod, "eth0", n, "veth-pod")
        ip(n, "link", "set", "veth-pod", "master", "kube-bridge")
        ip(pod, "addr", "add", f"{pods}.2/24", "dev", "eth0")
        ip(pod, "route", "add", "default", "via", f"{pods}.1")
    return ns


def injector(netns: str, node: str, tmp: Path) -> RouteInjector:
    node_ip, _, pods = NODES[node]
    info = NodeInfo({"ipv4": node_ip}, subnets=(f"{node_ip}/24",), pod_cidrs=(f"{pods}.0/24",))
    port = NetlinkRoutes(netns, rt_tables=[tmp / f"rt_tables-{node}"])
    (tmp / f"rt_tables-{node}").write_text("255\tlocal\n254\tmain\n")
    return RouteInjector(port, IPIP, info)


def other(node: str) -> str:
    return "b" if node == "a" else "a"


def learned(node: str) -> RouteEvent:
    """What node's gobgpd would learn from the other node: its pod CIDR."""
    peer_ip, _, peer_pods = NODES[other(node)]
    return RouteEvent(f"{peer_pods}.0/24", peer_ip, False, peer_ip)


def ask(client_ns: str) -> str:
    argv = python(client_ns, CLIENT, "10.244.2.2")
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def rx_packets(netns: str, link: str) -> int:
    (stats,) = json.loads(ip(netns, "-s", "-j", "link", "show", link))
    return int(stats["stats64"]["rx"]["packets"])


@pytest.fixture
def server(netns: NetnsFactory) -> Iterator[dict[str, str]]:
    ns = build(netns)
    proc = subprocess.Popen(python(ns["pod-b"], SERVER), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT_S)
        assert ready and proc.stdout.readline().strip() == "ready", "pod-b's server"
        yield ns
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.vm(modules=["ipip", "fou", "veth", "bridge"])
async def test_pods_reach_each_other_over_ipip_then_fou(
    server: dict[str, str], tmp_path: Path
) -> None:
    ns = server
    injectors = {node: injector(ns[node], node, tmp_path) for node in NODES}
    tunnel_b = tunnel_name(NODES["a"][0])  # b's tunnel to a
    try:
        before = ask(ns["pod-a"])
        for node, inj in injectors.items():
            await inj.setup_overlay()
            assert (await inj.handle([learned(node)])).ok
        over_ipip = ask(ns["pod-a"])
        ipip_rx = rx_packets(ns["b"], tunnel_b)
        for inj in injectors.values():
            assert (await inj.update(FOU)).ok
        over_fou = ask(ns["pod-a"])
        (fou_tunnel,) = await injectors["b"].port.tunnels()
        fou_rx = rx_packets(ns["b"], tunnel_b)
        details = ip(ns["b"], "-d", "link", "show", tunnel_b)
        for node, inj in injectors.items():
            await inj.remove_peer(NODES[other(node)][0])
        after = ask(ns["pod-a"])
    finally:
        for inj in injectors.values():
            inj.port.close()

    assert before.startswith("failed"), before  # the router knows no pod CIDR
    assert over_ipip == "pod-b" and ipip_rx > 0
    assert over_fou == "pod-b" and fou_rx > 0
    assert fou_tunnel.encap is Encap.FOU and fou_tunnel.port == FOU.encap_port
    assert "encap gue" in details and "encap-dport 5555" in details and "ttl 225" in details
    assert after.startswith("failed"), after
    assert await injectors["a"].port.tunnels() == []


TUNNELS = [
    Tunnel("tun-v4", "10.0.0.1", "10.0.0.2"),
    Tunnel("tun-v6", "fd00::1", "fd00::2"),
    Tunnel("tun-fou4", "10.0.0.1", "10.0.0.3", Encap.FOU, 5555),
    Tunnel("tun-fou6", "fd00::1", "fd00::3", Encap.FOU, 5555),
]
CLASHES = [
    Tunnel("tun-v4", "10.0.0.1", "10.0.0.9"),  # the name
    Tunnel("tun-other", "10.0.0.1", "10.0.0.2"),  # the same ends
]


@pytest.mark.vm(modules=["ipip", "ip6_tunnel", "fou", "fou6"])
async def test_tunnel_adapter_agrees_with_the_fake(netns: NetnsFactory) -> None:
    real = NetlinkRoutes(netns("tunnels"))
    fake = FakeRoutes(FakeRouteKernel(modules={"fou", "fou6"}))
    seen: dict[str, object] = {}
    try:
        for name, port in (("kernel", real), ("fake", fake)):
            for tunnel in TUNNELS:
                await port.add_tunnel(tunnel)
            refused = []
            for tunnel in CLASHES:
                with pytest.raises(TunnelError) as caught:
                    await port.add_tunnel(tunnel)
                refused.append(caught.value.errno)
            listed = sorted(await port.tunnels(), key=lambda t: t.name)
            await port.delete_tunnel("tun-v6")
            await port.delete_tunnel("tun-v6")
            seen[name] = (listed, refused, len(await port.tunnels()))
    finally:
        real.close()

    assert seen["kernel"] == seen["fake"]
    assert seen["kernel"] == (sorted(TUNNELS, key=lambda t: t.name), [17, 17], 3)
