"""A one-node cluster for NetworkPolicy tests with real packets (shared by the netpol test files).

Namespaces x, y, z with pods a, b, c (as the Kubernetes NetworkPolicy e2e tests arrange them) by
default. Local pods hang off the node namespace, which the real controller programs; remote pods
sit behind a route on a "remote" node. A lab API server feeds real informers. ``Cluster.check``
probes the whole reachability matrix (TCP and UDP, ports 80 and 81, real connections) and
demands that it equal the expected one, cell for cell.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ipaddress
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kube_router.config import parse
from kube_router.controllers.base import Barriers, RunContext
from kube_router.controllers.netpol.controller import NetworkPolicyController
from kube_router.controllers.netpol.names import IPV4, IPV6, Family
from kube_router.controllers.netpol.ports import Dataplane
from kube_router.dataplane.exec import Executor, Result
from kube_router.dataplane.iptables import RealIPTables
from kube_router.health import HealthChecker
from kube_router.k8s.client import KubeClient
from kube_router.k8s.informers import Informers
from kube_router.node import NodeIdentity
from kube_router_lab.apiserver import LabServer
from kube_router_lab.errors import ApiError as LabApiError
from kube_router_lab.podnet import LINK_NET, LINK_NET6, LabPod, PodNetwork

NODE_IP, REMOTE_IP = (str(h) for h in LINK_NET.hosts())
NODE_IP6, REMOTE_IP6 = (str(h) for h in LINK_NET6.hosts())
PROTOS = ("tcp", "udp")
PORTS = (80, 81)
POLL_S = 0.02
CONVERGE_POLLS = 500
Cell = tuple[str, str, str, int]


@dataclass(frozen=True)
class LabPodSpec:
    """A pod of the lab: its network always exists; its API object only when ``seeded``."""

    namespace: str
    name: str
    node: str = "local"  # or "remote"
    seeded: bool = True

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


# A smaller cluster for tests that need no full matrix: three pods in x, one in y, one remote.
FIVE_PODS: tuple[LabPodSpec, ...] = (
    LabPodSpec("x", "a"),
    LabPodSpec("x", "b"),
    LabPodSpec("x", "c"),
    LabPodSpec("y", "a"),
    LabPodSpec("z", "a", "remote"),
)

STANDARD_PODS: tuple[LabPodSpec, ...] = tuple(
    LabPodSpec(ns, name, node)
    for ns, node in (("x", "local"), ("y", "local"), ("z", "remote"))
    for name in ("a", "b", "c")
)


def pod_object(pod: LabPod) -> dict[str, Any]:
    """The API object of a lab pod: labelled pod=<name>, named ports serve-80 and serve-81."""
    host = NODE_IP if pod.node == "local" else REMOTE_IP
    return {
        "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": {"pod": pod.name}},
        "spec": {
            "nodeName": "n1" if pod.node == "local" else "n2",
            "containers": [
                {
                    "name": "c",
                    "ports": [
                        {"name": "serve-80", "containerPort": 80, "protocol": "TCP"},
                        {"name": "serve-81", "containerPort": 81, "protocol": "TCP"},
                    ],
                }
            ],
        },
        "status": {
            "phase": "Running",
            "hostIP": host,
            "podIP": pod.ip,
            "podIPs": [{"ip": ip} for ip in (pod.ip, pod.ip6) if ip],
        },
    }


def node_object(pod_cidrs: Sequence[str]) -> dict[str, Any]:
    spec = {"podCIDR": pod_cidrs[0], "podCIDRs": list(pod_cidrs)} if pod_cidrs else {}
    addresses = [{"type": "InternalIP", "address": NODE_IP}]
    if len(pod_cidrs) > 1:
        addresses.append({"type": "InternalIP", "address": NODE_IP6})
    return {"metadata": {"name": "n1"}, "spec": spec, "status": {"addresses": addresses}}


@dataclass
class Cluster:
    lab: LabServer
    net: PodNetwork
    ctrl: NetworkPolicyController
    informers: Informers
    ctx: RunContext
    dataplane: Dataplane
    task: asyncio.Task[None] | None = None
    workdir: Path = field(default_factory=Path)

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.net.pods]

    def ip(self, key: str) -> str:
        return self.pod(key).ip

    def pod(self, key: str) -> LabPod:
        return next(p for p in self.net.pods if p.key == key)

    @property
    def node_exec(self) -> Executor:
        return Executor.in_netns(self.net.node_netns)

    # -- the controller ------------------------------------------------------------------------

    def _sync_count(self) -> int:
        return self.ctrl.runner.stats.syncs + self.ctrl.runner.stats.failures

    async def _wait_sync_after(self, before: int) -> None:
        for _ in range(CONVERGE_POLLS):
            if self._sync_count() > before:
                break
            await asyncio.sleep(POLL_S)
        assert self._sync_count() > before, "no sync happened"
        assert self.ctrl.runner.stats.failures == 0, "a sync failed"

    async def converge(self, ready: Callable[[], bool]) -> None:
        """Wait until the caches show the change, then for a sync that started after it."""
        for _ in range(CONVERGE_POLLS):
            if ready():
                break
            await asyncio.sleep(POLL_S)
        assert ready(), "the informers never saw the change"
        before = self._sync_count()
        self.ctrl.runner.poke()
        await self._wait_sync_after(before)

    async def full_sync(self) -> None:
        """Ask for the periodic full sync now and wait until one has run."""
        runner = self.ctrl.runner
        before = runner.stats.full_syncs
        runner.request_full()
        for _ in range(CONVERGE_POLLS):
            if runner.stats.full_syncs > before:
                break
            await asyncio.sleep(POLL_S)
        assert runner.stats.full_syncs > before, "no full sync happened"
        assert runner.stats.failures == 0, "a sync failed"

    async def stop_controller(self) -> None:
        """Cancel the controller task (an agent going away: the kernel state stays)."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None

    def start_controller(self) -> NetworkPolicyController:
        """A fresh controller on the same dataplane and caches, as after an agent restart."""
        assert self.task is None, "stop the running controller first"
        self.ctrl = NetworkPolicyController(self.ctx, self.dataplane)
        self.task = asyncio.create_task(self.ctrl.run())
        return self.ctrl

    async def wait_first_sync(self) -> None:
        await self._wait_sync_after(0)

    # -- API objects ---------------------------------------------------------------------------

    def _informer_store(self, resource: str) -> Any:
        return getattr(self.informers, resource).store

    async def write(self, resource: str, obj: dict[str, Any]) -> None:
        """Create or replace an object in the lab, then converge on the informer seeing it."""
        meta = obj["metadata"]
        ns = meta.get("namespace")
        try:
            self.lab.store.get(resource, ns, meta["name"])
        except LabApiError:
            self.lab.store.create(resource, obj)
        else:
            current = self.lab.store.get(resource, ns, meta["name"])
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            self.lab.store.update(resource, obj)
        # The object's own version: an update that changes nothing keeps it (no event comes).
        rv = str(self.lab.store.get(resource, ns, meta["name"])["metadata"]["resourceVersion"])
        key = f"{ns}/{meta['name']}" if ns else meta["name"]
        store = self._informer_store(resource)
        await self.converge(
            lambda: (o := store.get(key)) is not None and o.metadata.resource_version == rv
        )

    async def remove(self, resource: str, ns: str | None, name: str) -> None:
        self.lab.store.delete(resource, ns, name)
        key = f"{ns}/{name}" if ns else name
        store = self._informer_store(resource)
        await self.converge(lambda: store.get(key) is None)

    def get(self, resource: str, ns: str | None, name: str) -> dict[str, Any]:
        return self.lab.store.get(resource, ns, name)

    async def apply_policy(self, policy: dict[str, Any]) -> None:
        await self.write("networkpolicies", policy)

    async def delete_policy(self, ns: str, name: str) -> None:
        await self.remove("networkpolicies", ns, name)

    async def add_pod_object(self, key: str) -> None:
        """Create the API object of a lab pod whose network exists (the CNI ran before)."""
        await self.write("pods", pod_object(self.pod(key)))

    async def update_pod(self, key: str, change: Callable[[dict[str, Any]], None]) -> None:
        ns, name = key.split("/", 1)
        obj = self.get("pods", ns, name)
        change(obj)
        await self.write("pods", obj)

    async def set_pod_labels(self, key: str, labels: dict[str, str]) -> None:
        def relabel(obj: dict[str, Any]) -> None:
            obj["metadata"]["labels"] = dict(labels)

        await self.update_pod(key, relabel)

    async def set_namespace_labels(self, name: str, labels: dict[str, str]) -> None:
        obj = self.get("namespaces", None, name)
        obj["metadata"]["labels"] = dict(labels)
        await self.write("namespaces", obj)

    # -- the node's kernel state ---------------------------------------------------------------

    @property
    def iptables_backend(self) -> str:
        tables = self.dataplane.iptables["IPv4"]
        assert isinstance(tables, RealIPTables)
        return tables.backend

    async def node_run(self, *argv: str, check: bool = True) -> Result:
        """Run a command in the node namespace; ``iptables`` means the backend in use."""
        args = list(argv)
        if args[0] == "iptables":
            args[0] = f"iptables-{self.iptables_backend}"
        return await self.node_exec.run(args, check=check)

    async def iptables_save(self) -> str:
        return (await self.node_run("iptables", "-t", "filter", "-S")).stdout

    async def ipset_members(self) -> dict[str, set[str]]:
        """Every ipset of the node namespace with its entries (``nomatch`` kept); a list:set
        (a policy set whose pool holds the addresses) with the entries of its members."""
        out = (await self.node_run("ipset", "save")).stdout
        sets: dict[str, set[str]] = {}
        lists: set[str] = set()
        for line in out.splitlines():
            parts = line.split()
            if parts[:1] == ["create"]:
                sets[parts[1]] = set()
                if parts[2:3] == ["list:set"]:
                    lists.add(parts[1])
            elif parts[:1] == ["add"]:
                entry = [p for p in parts[2:] if p != "timeout" and not p.isdigit()]
                sets[parts[1]].add(" ".join(entry))
        for name in lists:
            sets[name] = {e for member in sets[name] for e in sets.get(member, set())}
        return sets

    # -- probes --------------------------------------------------------------------------------

    async def check(self, denied: Iterable[Cell], family: str = "ipv4") -> None:
        """The whole matrix over ``family`` ("ipv4" or "ipv6") equals the expected one.

        The node's conntrack entries of the family are forgotten first: a UDP probe that happens
        to reuse an earlier probe's source port would ride that entry past a policy that now
        denies it (established flows outliving a policy change is the kernel's, not ours)."""
        await self.node_run("conntrack", "-F", "-f", family)
        expected_denied = set(denied)
        matrix = await self.net.matrix(PROTOS, PORTS, timeout=1.0, family=family)
        wrong = sorted(c for c, ok in matrix.items() if ok == (c in expected_denied))
        # A cell that should pass but timed out may be a slow answer on a loaded machine (a
        # pass is never a timing artifact): probe those again, more patiently, before judging.
        for cell in [c for c in wrong if c not in expected_denied]:
            src, dst, proto, port = cell
            for _ in range(RETRIES):
                if await self.net.probe(
                    self.pod(src), self.pod(dst), proto, port, RETRY_TIMEOUT_S, family
                ):
                    wrong.remove(cell)
                    break
        assert not wrong, f"{len(wrong)} wrong cells: {wrong[:20]}"

    async def reaches(self, src: str, dst: str, proto: str = "tcp", port: int = 80) -> bool:
        return await self.net.probe(self.pod(src), self.pod(dst), proto, port, timeout=1.0)


RETRIES = 2
RETRY_TIMEOUT_S = 3.0


def cells(
    srcs: Iterable[str],
    dsts: Iterable[str],
    protos: Iterable[str] = PROTOS,
    ports: Iterable[int] = PORTS,
) -> set[Cell]:
    dst_list = list(dsts)
    proto_list, port_list = list(protos), list(ports)
    return {
        (s, d, pr, po)
        for s in srcs
        for d in dst_list
        for pr in proto_list
        for po in port_list
        if s != d
    }


def policy(ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def _seed(lab: LabServer, net: PodNetwork, specs: Sequence[LabPodSpec], pod_cidr: bool) -> None:
    cidrs = [net.local_cidr, *([net.local_cidr6] if net.ipv6 else [])] if pod_cidr else []
    lab.store.create("nodes", node_object(cidrs))
    for ns in dict.fromkeys(s.namespace for s in specs):
        lab.store.create("namespaces", {"metadata": {"name": ns, "labels": {"ns": ns}}})
    seeded = {s.key for s in specs if s.seeded}
    for p in net.pods:
        if p.key in seeded:
            lab.store.create("pods", pod_object(p))


@contextlib.asynccontextmanager
async def open_cluster(
    tmp_path: Path,
    flags: Sequence[str] = (),
    pods: Sequence[LabPodSpec] = STANDARD_PODS,
    pod_cidr: bool = True,
    ipv6: bool = False,
) -> AsyncIterator[Cluster]:
    """The topology, the lab API server, informers and a running controller (after its first
    sync). ``flags`` are extra agent flags; ``pod_cidr`` says whether the Node has spec.podCIDR;
    ``ipv6`` makes everything dual-stack (``--enable-ipv6``)."""
    net = PodNetwork(f"kc{uuid.uuid4().hex[:5]}", tmp_path, ipv6=ipv6)
    lab = LabServer("127.0.0.1", 0, bookmark_interval=0.2)
    await lab.start()
    cluster: Cluster | None = None
    informers: Informers | None = None
    client: KubeClient | None = None
    try:
        net.build_nodes()
        for spec in pods:
            net.add_pod(spec.namespace, spec.name, spec.node)
        await net.start_agents()
        _seed(lab, net, pods, pod_cidr)
        lab.write_kubeconfig(tmp_path / "kubeconfig")
        client = await KubeClient.from_flags(str(tmp_path / "kubeconfig"))
        informers = Informers(client)
        informers.start()
        await informers.wait_for_cache_sync(10)
        ident = NodeIdentity(
            "n1",
            ipaddress.ip_address(NODE_IP),
            ipaddress.ip_address(NODE_IP),
            ipaddress.ip_address(NODE_IP6) if ipv6 else None,
            None,
        )
        family_flags = ["--enable-ipv6=true"] if ipv6 else []
        ctx = RunContext(
            parse(["--iptables-sync-period=5m", *family_flags, *flags], {}),
            client,
            informers,
            ident,
            HealthChecker(),
            None,
            Barriers(),
        )
        ctx.health.register(NetworkPolicyController.name, 300)
        families: list[Family] = [IPV4, IPV6] if ipv6 else [IPV4]
        dataplane = await Dataplane.real(Executor.in_netns(net.node_netns), families)
        ctrl = NetworkPolicyController(ctx, dataplane)
        cluster = Cluster(lab, net, ctrl, informers, ctx, dataplane, workdir=tmp_path)
        cluster.task = asyncio.create_task(ctrl.run())
        await cluster.wait_first_sync()
        yield cluster
    finally:
        if cluster is not None:
            await cluster.stop_controller()
        if informers is not None:
            await informers.stop()
        if client is not None:
            await client.close()
        await lab.stop()
        net.teardown()


@dataclass
class StreamPeer:
    """A line-oriented helper process in a pod namespace (stdin/stdout pipes)."""

    proc: asyncio.subprocess.Process

    @classmethod
    async def start(cls, netns: str, script: str, *args: str) -> StreamPeer:
        proc = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            netns,
            sys.executable,
            "-c",
            script,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return cls(proc)

    async def line(self, timeout: float = 5.0) -> str:
        assert self.proc.stdout is not None
        return (await asyncio.wait_for(self.proc.stdout.readline(), timeout)).decode().strip()

    async def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


_ECHO_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
while data := c.recv(4096):
    c.sendall(data)
"""

_ECHO_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print("connected", flush=True)
for line in sys.stdin:
    c.sendall(line.encode())
    print(c.recv(4096).decode().strip(), flush=True)
"""


@dataclass
class LongConnection:
    """One long-lived TCP connection between two pods, carrying echoed lines."""

    server: StreamPeer
    client: StreamPeer

    @classmethod
    async def open(cls, src: LabPod, dst: LabPod, port: int) -> LongConnection:
        server = await StreamPeer.start(dst.netns, _ECHO_SERVER, str(port))
        assert await server.line() == "listening"
        client = await StreamPeer.start(src.netns, _ECHO_CLIENT, dst.ip, str(port))
        conn = cls(server, client)
        try:
            assert await client.line() == "connected"
        except BaseException:
            await conn.close()
            raise
        return conn

    async def echo(self, text: str, timeout: float = 3.0) -> bool:
        """Whether ``text`` went over the connection and came back within ``timeout``."""
        try:
            await self.client.send(text)
            return await self.client.line(timeout) == text
        except (TimeoutError, ConnectionError, OSError):
            return False

    async def close(self) -> None:
        await self.client.stop()
        await self.server.stop()


X, Y, Z = (["x/a", "x/b", "x/c"], ["y/a", "y/b", "y/c"], ["z/a", "z/b", "z/c"])
ALL = X + Y + Z
