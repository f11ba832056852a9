"""Pods for real-packet tests: a node namespace with kube-bridge, pods on it, and a remote node.

The node namespace is where the agent under test programs iptables. Local pods hang off its
``kube-bridge`` (bridged traffic passes the FORWARD chain through br_netfilter, as on a real
node); pods of the "remote" node sit behind a second namespace reached through a routed link, so
their traffic is forwarded, not bridged. Every pod runs ``kube_router_lab.podagent``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import subprocess
import sys
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

from kube_router_lab import podagent
from kube_router_lab.netns import ip

BRIDGE = "kube-bridge"
LINK_NET = ipaddress.IPv4Network("10.255.255.0/30")
LINK_NET6 = ipaddress.IPv6Network("fd00:ffff::/127")  # RFC 6164 point-to-point
AGENT_START_TIMEOUT_S = 30.0
PROBE_CONCURRENCY = 64


@dataclass
class LabPod:
    namespace: str
    name: str
    node: str  # "local" or "remote"
    netns: str
    ip: str
    control: Path
    proc: subprocess.Popen[bytes] | None = None
    ip6: str | None = None  # with a dual-stack network

    def address(self, family: str = "ipv4") -> str:
        if family == "ipv4":
            return self.ip
        if self.ip6 is None:
            raise ValueError(f"pod {self.key} has no IPv6 address")
        return self.ip6

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class PodNetwork:
    """Builds and tears down the topology; probes between pods."""

    prefix: str
    workdir: Path
    local_cidr: str = "10.244.1.0/24"
    remote_cidr: str = "10.244.2.0/24"
    pods: list[LabPod] = field(default_factory=list)
    ipv6: bool = False  # dual-stack: the IPv6 CIDRs below too
    local_cidr6: str = "fd00:10:244:1::/64"
    remote_cidr6: str = "fd00:10:244:2::/64"

    @property
    def node_netns(self) -> str:
        return f"{self.prefix}-node"

    @property
    def remote_netns(self) -> str:
        return f"{self.prefix}-remote"

    def _gateway(self, cidr: str) -> str:
        return str(next(ipaddress.ip_network(cidr).hosts()))

    def build_nodes(self) -> None:
        """The two node namespaces, their bridges and the routed link between them."""
        node_ip, remote_ip = (str(h) for h in LINK_NET.hosts())
        for ns, cidr in ((self.node_netns, self.local_cidr), (self.remote_netns, self.remote_cidr)):
            ip("netns", "add", ns)
            ip("link", "set", "lo", "up", netns=ns)
            ip("link", "add", BRIDGE, "type", "bridge", netns=ns)
            prefixlen = ipaddress.IPv4Network(cidr).prefixlen
            ip("addr", "add", f"{self._gateway(cidr)}/{prefixlen}", "dev", BRIDGE, netns=ns)
            ip("link", "set", BRIDGE, "up", netns=ns)
            _sysctl(ns, "net.ipv4.ip_forward", "1")
        ip(
            "link",
            "add",
            "to-remote",
            "type",
            "veth",
            "peer",
            "name",
            "to-node",
            "netns",
            self.remote_netns,
            netns=self.node_netns,
        )
        ip("addr", "add", f"{node_ip}/30", "dev", "to-remote", netns=self.node_netns)
        ip("addr", "add", f"{remote_ip}/30", "dev", "to-node", netns=self.remote_netns)
        ip("link", "set", "to-remote", "up", netns=self.node_netns)
        ip("link", "set", "to-node", "up", netns=self.remote_netns)
        ip("route", "add", self.remote_cidr, "via", remote_ip, netns=self.node_netns)
        ip("route", "add", self.local_cidr, "via", node_ip, netns=self.remote_netns)
        _sysctl(self.node_netns, "net.bridge.bridge-nf-call-iptables", "1")
        if self.ipv6:
            self._build_ipv6()

    def _build_ipv6(self) -> None:
        """IPv6 on the same topology: bridge gateways, the link, routes (no DAD: no waiting)."""
        node_ip, remote_ip = (str(h) for h in LINK_NET6.hosts())
        for ns, cidr in (
            (self.node_netns, self.local_cidr6),
            (self.remote_netns, self.remote_cidr6),
        ):
            _sysctl(ns, "net.ipv6.conf.all.forwarding", "1")
            gateway = f"{self._gateway(cidr)}/{ipaddress.ip_network(cidr).prefixlen}"
            ip("addr", "add", gateway, "dev", BRIDGE, "nodad", netns=ns)
        link = LINK_NET6.prefixlen
        ip("addr", "add", f"{node_ip}/{link}", "dev", "to-remote", "nodad", netns=self.node_netns)
        ip("addr", "add", f"{remote_ip}/{link}", "dev", "to-node", "nodad", netns=self.remote_netns)
        ip("route", "add", self.remote_cidr6, "via", remote_ip, netns=self.node_netns)
        ip("route", "add", self.local_cidr6, "via", node_ip, netns=self.remote_netns)
        _sysctl(self.node_netns, "net.bridge.bridge-nf-call-ip6tables", "1")

    def add_pod(self, namespace: str, name: str, node: str = "local") -> LabPod:
        """A pod namespace wired to its node's bridge (not started yet)."""
        i = len(self.pods) + 1
        cidr = self.local_cidr if node == "local" else self.remote_cidr
        host_ns = self.node_netns if node == "local" else self.remote_netns
        net = ipaddress.IPv4Network(cidr)
        pod_ip = str(net.network_address + 10 + i)
        pod = LabPod(
            namespace, name, node, f"{self.prefix}-p{i}", pod_ip, self.workdir / f"p{i}.sock"
        )
        ip("netns", "add", pod.netns)
        ip("link", "set", "lo", "up", netns=pod.netns)
        host_if = f"veth{self.prefix[:6]}{i}"[:15]
        ip(
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            host_if,
            "netns",
            host_ns,
            netns=pod.netns,
        )
        ip("link", "set", host_if, "master", BRIDGE, "up", netns=host_ns)
        ip("addr", "add", f"{pod_ip}/{net.prefixlen}", "dev", "eth0", netns=pod.netns)
        ip("link", "set", "eth0", "up", netns=pod.netns)
        ip("route", "add", "default", "via", self._gateway(cidr), netns=pod.netns)
        if self.ipv6:
            cidr6 = self.local_cidr6 if node == "local" else self.remote_cidr6
            net6 = ipaddress.IPv6Network(cidr6)
            pod.ip6 = str(net6.network_address + 10 + i)
            addr6 = f"{pod.ip6}/{net6.prefixlen}"
            ip("addr", "add", addr6, "dev", "eth0", "nodad", netns=pod.netns)
            ip("route", "add", "default", "via", self._gateway(cidr6), netns=pod.netns)
        self.pods.append(pod)
        return pod

    async def start_agents(self) -> None:
        for pod in self.pods:
            pod.proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    pod.netns,
                    sys.executable,
                    "-m",
                    "kube_router_lab.podagent",
                    "--name",
                    pod.key,
                    "--control",
                    str(pod.control),
                    *(["--ipv6"] if self.ipv6 else []),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        await asyncio.gather(*(self._wait_ready(p) for p in self.pods))

    async def _wait_ready(self, pod: LabPod) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + AGENT_START_TIMEOUT_S
        while loop.time() < deadline:
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_unix_connection(str(pod.control))
                writer.close()
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"pod agent {pod.key} did not start")

    async def ask(
        self, src: LabPod, dst: str, proto: str, port: int, timeout: float = 1.0, sport: int = 0
    ) -> str | None:
        """Which pod answers ``src`` on ``dst`` (any address, a VIP too); None: nobody."""
        return await podagent.ask_control(str(src.control), dst, proto, port, timeout, sport)

    async def probe(
        self,
        src: LabPod,
        dst: LabPod,
        proto: str,
        port: int,
        timeout: float = 1.0,
        family: str = "ipv4",
    ) -> bool:
        """Whether ``src`` reaches ``dst`` (its ``family`` address) on proto/port and the answer
        came from ``dst``."""
        reader, writer = await asyncio.open_unix_connection(str(src.control))
        try:
            req = {"dst": dst.address(family), "proto": proto, "port": port, "timeout": timeout}
            writer.write(json.dumps(req).encode() + b"\n")
            await writer.drain()
            answer = json.loads(await reader.readline())
        finally:
            writer.close()
        return bool(answer["ok"]) and answer["peer"] == dst.key

    async def matrix(
        self,
        protos: tuple[str, ...] = ("tcp", "udp"),
        ports: tuple[int, ...] = (80, 81),
        timeout: float = 1.0,
        family: str = "ipv4",
    ) -> dict[tuple[str, str, str, int], bool]:
        """Every (src, dst, proto, port) reachability over ``family``, probed concurrently."""
        sem = asyncio.Semaphore(PROBE_CONCURRENCY)
        cells = [c for c in product(self.pods, self.pods, protos, ports) if c[0] is not c[1]]

        async def one(src: LabPod, dst: LabPod, proto: str, port: int) -> bool:
            async with sem:
                return await self.probe(src, dst, proto, port, timeout, family)

        results = await asyncio.gather(*(one(*c) for c in cells))
        return {
            (s.key, d.key, pr, po): ok for (s, d, pr, po), ok in zip(cells, results, strict=True)
        }

    def teardown(self) -> None:
        for pod in self.pods:
            if pod.proc is not None and pod.proc.poll() is None:
                pod.proc.kill()
                pod.proc.wait()
        for ns in [p.netns for p in self.pods] + [self.node_netns, self.remote_netns]:
            ip("netns", "del", ns, check=False)


def _sysctl(netns: str, key: str, value: str) -> None:
    path = "/proc/sys/" + key.replace(".", "/")
    subprocess.run(
        ["ip", "netns", "exec", netns, "sh", "-c", f"echo {value} > {path}"],
        check=True,
        capture_output=True,
    )
