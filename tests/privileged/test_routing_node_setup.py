"""The routing controller's node set-up on a real kernel, in namespaces the test makes.

A "node" namespace gets kube-bridge (sized to its uplink's MTU), the bridge sysctls, the CNI conf
MTU, the two ipsets and the FORWARD and MASQUERADE rules, over real iptables (nft and legacy) and
ipset. Two pods hang off kube-bridge; an "outside" namespace beyond the uplink holds a host on
the internet, another node's address and another node's pod. The node's FORWARD policy is DROP,
so only our accepts let anything through. A pod reaching the internet arrives with the node's
address; pod to pod (same node or another) and pod to another node keep the pod's address.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kube_router.controllers.routing.bridge import (
    BRIDGE_NF_CALL_IPTABLES,
    setup_bridge_netfilter,
    setup_kube_bridge,
)
from kube_router.controllers.routing.cni import CniConf
from kube_router.controllers.routing.node_firewall import NodeFirewall, build_spec
from kube_router.dataplane import ipset
from kube_router.dataplane.bridge import NetlinkBridges
from kube_router.dataplane.exec import Executor
from kube_router.dataplane.iptables import Backend, RealIPTables
from kube_router.dataplane.netlink import in_netns
from kube_router.dataplane.sysctl import Sysctls
from kube_router.k8s import models

pytestmark = pytest.mark.privileged

CNI_FIXTURE = (
    Path(__file__).parent.parent / "testdata" / "routing" / "cni" / "10-kuberouter.conflist"
)
UPLINK_MTU = 1450
NODE_IP, OUTSIDE_IP, OTHER_NODE_IP = "192.168.50.1", "192.168.50.2", "192.168.50.3"
POD1, POD2, GATEWAY = "10.1.0.5", "10.1.0.6", "10.1.0.1"
REMOTE_POD, INTERNET = "10.1.1.7", "203.0.113.9"
PORT = 8080
FOREIGN_FORWARD = "-p tcp -m tcp --dport 22 -j ACCEPT"
FOREIGN_SET = "KUBE-DST-FOREIGN"
COUNTERS = re.compile(r"\[\d+:\d+\]")


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@dataclass
class Lab:
    node: str
    outside: str
    pod1: str
    pod2: str

    def exec(self, netns: str, *argv: str) -> str:
        return sh("ip", "netns", "exec", netns, *argv)


def _veth(a_ns: str, a: str, b_ns: str, b: str) -> None:
    sh(
        "ip",
        "link",
        "add",
        "krtmp0",
        "netns",
        a_ns,
        "type",
        "veth",
        "peer",
        "name",
        b,
        "netns",
        b_ns,
    )
    sh("ip", "-n", a_ns, "link", "set", "krtmp0", "name", a)


def _build(lab: Lab) -> None:
    _veth(lab.node, "eth0", lab.outside, "eth0")
    sh("ip", "-n", lab.node, "link", "set", "eth0", "mtu", str(UPLINK_MTU), "up")
    sh("ip", "-n", lab.node, "addr", "add", f"{NODE_IP}/24", "dev", "eth0")
    sh("ip", "-n", lab.outside, "link", "set", "eth0", "up")
    for addr in (f"{OUTSIDE_IP}/24", f"{OTHER_NODE_IP}/24"):
        sh("ip", "-n", lab.outside, "addr", "add", addr, "dev", "eth0")
    for addr in (f"{REMOTE_POD}/32", f"{INTERNET}/32"):
        sh("ip", "-n", lab.outside, "addr", "add", addr, "dev", "lo")
    sh("ip", "-n", lab.outside, "route", "add", "10.1.0.0/24", "via", NODE_IP)
    sh("ip", "-n", lab.node, "route", "add", "10.1.1.0/24", "via", OUTSIDE_IP)
    sh("ip", "-n", lab.node, "route", "add", "default", "via", OUTSIDE_IP)
    lab.exec(lab.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")


def _attach_pods(lab: Lab) -> None:
    """What the CNI bridge plugin does: a veth per pod on kube-bridge, gateway on the bridge."""
    sh("ip", "-n", lab.node, "addr", "add", f"{GATEWAY}/24", "dev", "kube-bridge")
    for i, (netns, ip) in enumerate(((lab.pod1, POD1), (lab.pod2, POD2))):
        _veth(lab.node, f"veth{i}", netns, "eth0")
        sh("ip", "-n", lab.node, "link", "set", f"veth{i}", "mtu", str(UPLINK_MTU))
        sh("ip", "-n", lab.node, "link", "set", f"veth{i}", "master", "kube-bridge", "up")
        sh("ip", "-n", netns, "link", "set", "eth0", "mtu", str(UPLINK_MTU), "up")
        sh("ip", "-n", netns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", netns, "route", "add", "default", "via", GATEWAY)


@pytest.fixture
def lab() -> Iterator[Lab]:
    tag = uuid.uuid4().hex[:6]
    made = Lab(*(f"krn-{tag}-{role}" for role in ("node", "out", "p1", "p2")))
    names = [made.node, made.outside, made.pod1, made.pod2]
    try:
        for name in names:
            sh("ip", "netns", "add", name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        _build(made)
        yield made
    finally:
        for name in names:
            destroy = ["ip", "netns", "exec", name, "ipset", "destroy"]
            subprocess.run(destroy, check=False, capture_output=True)
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def node(name: str, ip: str, cidr: str) -> models.Node:
    return models.Node(
        metadata=models.AnnotatedMeta(name=name),
        spec=models.NodeSpec(pod_cidrs=[cidr]),
        status=models.NodeStatus(addresses=[models.NodeAddress(type="InternalIP", address=ip)]),
    )


NODES = [node("me", NODE_IP, "10.1.0.0/24"), node("other", OTHER_NODE_IP, "10.1.1.0/24")]


def seen_source(server_ns: str, client_ns: str, target: str) -> str:
    """Connect from ``client_ns`` to ``target`` (served in ``server_ns``); the source the server
    saw."""

    def listen() -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", PORT))
        sock.listen(1)
        sock.settimeout(5)
        return sock

    server = in_netns(server_ns, listen)
    try:
        client = in_netns(client_ns, lambda: socket.create_connection((target, PORT), timeout=5))
        conn, (peer, _port) = server.accept()
        conn.close()
        client.close()
        return str(peer)
    finally:
        server.close()


async def setup_node(lab: Lab, backend: Backend, tmp_path: Path) -> tuple[NodeFirewall, Path]:
    """The start-up steps in the controller's order; the firewall and the CNI conf's path."""
    conf_path = tmp_path / "10-kuberouter.conflist"
    shutil.copy(CNI_FIXTURE, conf_path)
    conf = CniConf.load(conf_path)
    conf.insert_pod_cidrs(["10.1.0.0/24"])
    conf.set_mtu(UPLINK_MTU)
    ex = Executor.in_netns(lab.node)
    tables = {f: RealIPTables(ex, f, backend) for f in ("ipv4", "ipv6")}
    fw = NodeFirewall(tables, ipset.RealIPSets(ex))
    assert await fw.apply(build_spec(NODES, ("ipv4", "ipv6"), "eth0"))
    mtu = await setup_kube_bridge(NetlinkBridges(lab.node), UPLINK_MTU)
    if mtu is not None:
        conf.set_mtu(mtu)
    conf.write()
    await setup_bridge_netfilter(ex, Sysctls(), ipv6=True, netns=lab.node)
    return fw, conf_path


def save(lab: Lab, backend: Backend, table: str) -> str:
    """The table without comments and packet counters."""
    text = lab.exec(lab.node, f"iptables-{backend}-save", "-t", table)
    lines = (COUNTERS.sub("[0:0]", line) for line in text.splitlines())
    return "\n".join(line for line in lines if not line.startswith("#"))


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_node_setup_on_a_real_kernel(lab: Lab, backend: Backend, tmp_path: Path) -> None:
    lab.exec(lab.node, f"iptables-{backend}", "-A", "FORWARD", *FOREIGN_FORWARD.split())
    lab.exec(lab.node, f"iptables-{backend}", "-P", "FORWARD", "DROP")
    lab.exec(lab.node, "ipset", "create", FOREIGN_SET, "hash:ip")
    fw, conf_path = run(setup_node(lab, backend, tmp_path))

    # kube-bridge, sysctls, CNI conf
    assert f"mtu {UPLINK_MTU} " in lab.exec(lab.node, "ip", "link", "show", "kube-bridge")
    assert in_netns(lab.node, lambda: Sysctls().read(BRIDGE_NF_CALL_IPTABLES)) == "1"
    assert CniConf.load(conf_path).mtu == UPLINK_MTU

    # sets and rules as the kernel reports them
    members = lab.exec(lab.node, "ipset", "list", "kube-router-pod-subnets")
    assert "10.1.0.0/24" in members and "10.1.1.0/24" in members
    assert OTHER_NODE_IP in lab.exec(lab.node, "ipset", "list", "kube-router-node-ips")
    filt, nat = save(lab, backend, "filter"), save(lab, backend, "nat")
    assert (
        '-i kube-bridge -m comment --comment "allow outbound traffic from pods" -j ACCEPT' in filt
    )
    assert "--match-set kube-router-node-ips dst -j MASQUERADE --random-fully" in nat
    assert "inet6:kube-router-pod-subnets" in lab.exec(
        lab.node, f"ip6tables-{backend}-save", "-t", "nat"
    )

    # real packets
    _attach_pods(lab)
    assert seen_source(lab.outside, lab.pod1, INTERNET) == NODE_IP  # masqueraded
    assert seen_source(lab.outside, lab.pod1, REMOTE_POD) == POD1  # another node's pod
    assert seen_source(lab.outside, lab.pod1, OTHER_NODE_IP) == POD1  # another node
    assert seen_source(lab.pod2, lab.pod1, POD2) == POD1  # bridged, same node

    # a second apply is a no-op
    spec = build_spec(NODES, ("ipv4", "ipv6"), "eth0")
    assert not run(fw.apply(spec))
    assert (save(lab, backend, "filter"), save(lab, backend, "nat")) == (filt, nat)

    # cleanup removes only ours
    run(fw.cleanup())
    filt_after, nat_after = save(lab, backend, "filter"), save(lab, backend, "nat")
    assert "kube-bridge" not in filt_after and FOREIGN_FORWARD in filt_after
    assert "MASQUERADE" not in nat_after
    sets = lab.exec(lab.node, "ipset", "list", "-n").split()
    assert sets == [FOREIGN_SET]
    assert "kube-bridge" in lab.exec(lab.node, "ip", "-o", "link", "show")  # as upstream, kept


def test_refused_bridge_mtu_keeps_the_current_one(lab: Lab) -> None:
    bridges = NetlinkBridges(lab.node)
    assert run(setup_kube_bridge(bridges, 1400)) == 1400
    assert run(setup_kube_bridge(bridges, 70000)) == 1400  # above the kernel's maximum
    assert "mtu 1400 " in lab.exec(lab.node, "ip", "link", "show", "kube-bridge")
    assert "UP" in lab.exec(lab.node, "ip", "link", "show", "kube-bridge")
