"""A lab cluster on one machine: nodes on an underlay, the lab API server, CNI pods, BGP routers.

Everything lives in network namespaces named ``<prefix>-*`` (see :mod:`.underlay`), nothing in
the host's own; the API server listens inside the underlay namespace, where every node reaches
it. Usage::

    spec = ClusterSpec("kc1", nodes=3, two_subnets=False, ipv6=False,
                       annotations={"node1": {"kube-router.io/node.asn": "64512"}})
    async with Cluster(spec, workdir) as cluster:        # up() ... down()
        node = cluster.node("node1")                     # ClusterNode: ip, netns, pod_cidrs,
                                                         # cni_conf, ipam_dir, run_dir, env()
        proc = cluster.start_agent(node, "--run-firewall=false")   # the real agent, in the
                                                         # node's netns; env() and kubeconfig
        pod = await cluster.add_pod(node, "default", "web", {"app": "web"})
        await cluster.reaches(pod, other_pod)            # real packets, podagent probe
        ext = await cluster.add_external_router(asn=64999)   # gobgpd, neighbours = the nodes
        ext.rib()                                        # [RibPath(prefix, nexthop, ...)]
        ext.advertise("192.0.2.0/24", communities=["64999:1"])

Per node (``workdir/<node>/``): ``cni/10-kuberouter.conflist`` is where the agent writes the
CNI configuration (handed to it as ``KUBE_ROUTER_CNI_CONF_FILE``), ``ipam/`` keeps host-local's
allocations, ``run/`` is bind-mounted on ``/run/kube-router`` for processes started with
:meth:`Cluster.spawn` (in their own mount namespace, made by ``ip netns exec``), and logs go
to ``<name>.log``. :meth:`Cluster.add_pod` waits for the CNI configuration to carry a pod
range, so pods can be added while the agent is still starting.

After a crash, :func:`down` with the prefix removes what is left (processes in the lab's
namespaces first).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import shlex
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from kube_router_lab import cnipods, underlay
from kube_router_lab.apiserver import LabServer
from kube_router_lab.bgprouter import ExternalRouter, Neighbor
from kube_router_lab.cluster_spec import ClusterNode, ClusterSpec
from kube_router_lab.cnipods import CniPod
from kube_router_lab.errors import ApiError
from kube_router_lab.netns import ip
from kube_router_lab.underlay import Host, Underlay

log = logging.getLogger(__name__)

CLUSTER_ASN = 64512
EXTERNAL_ASN = 64999
EXTERNAL_HOST = 250  # host number of the first external router on its subnet
CONF_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
HTTP_CONFLICT = 409
NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
RUN_DIR = "/run/kube-router"
EBGP_MULTIHOP_TTL = 2  # one router between the subnets

__all__ = ["Cluster", "ClusterNode", "ClusterSpec", "CniPod", "ExternalRouter", "down"]


class Cluster:
    """Build with :meth:`up` (or ``async with``), remove with :meth:`down`."""

    def __init__(self, spec: ClusterSpec, workdir: Path) -> None:
        self.spec = spec
        self.workdir = workdir.resolve()
        self.underlay: Underlay = underlay.plan(spec.underlay())
        self.nodes: list[ClusterNode] = [
            self._node(h, i) for i, h in enumerate(self.underlay.nodes, 1)
        ]
        self.server = LabServer(host=self.underlay.api_ip, port=spec.api_port)
        self.pods: list[CniPod] = []
        self.routers: dict[str, ExternalRouter] = {}
        self.procs: list[subprocess.Popen[bytes]] = []
        self._pod_ids = itertools.count(1)

    def _node(self, host: Host, i: int) -> ClusterNode:
        cidrs = [self.spec.pod_cidr.format(i=i)]
        if self.spec.ipv6:
            cidrs.append(self.spec.pod_cidr6.format(i=i))
        directory = self.workdir / host.name
        conf = directory / "cni" / self.spec.cni_conf_name
        return ClusterNode(i, host, tuple(cidrs), directory, conf)

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    def node(self, node: ClusterNode | str) -> ClusterNode:
        if isinstance(node, ClusterNode):
            return node
        for n in self.nodes:
            if n.name == node:
                return n
        raise KeyError(f"no node {node!r} in cluster {self.spec.prefix}")

    # -- lifecycle -------------------------------------------------------------------------

    async def up(self) -> None:
        """Build the underlay, start the API server in it, register namespaces and nodes."""
        down(self.spec.prefix)
        try:
            for node in self.nodes:
                for d in (node.cni_conf.parent, node.ipam_dir, node.run_dir):
                    d.mkdir(parents=True, exist_ok=True)
            (self.workdir / "pods").mkdir(parents=True, exist_ok=True)
            underlay.create(self.underlay)
            with underlay.entered(self.underlay.netns):  # the listening socket is made there
                await self.server.start()
            self.server.write_kubeconfig(self.kubeconfig)
            for ns in NAMESPACES:
                self.server.store.create("namespaces", {"metadata": {"name": ns}})
            for node in self.nodes:
                self.server.store.create("nodes", self.node_object(node))
        except BaseException:
            await self.down()
            raise

    async def down(self) -> None:
        """Stop every process, the routers and the API server; remove every namespace."""
        for pod in self.pods:
            cnipods.stop_podagent(pod)
        self.pods.clear()
        for router in self.routers.values():
            router.stop()
        self.routers.clear()
        await asyncio.gather(*(asyncio.to_thread(_stop, p) for p in self.procs))
        self.procs.clear()
        await self.server.stop()
        down(self.spec.prefix)

    async def __aenter__(self) -> Cluster:
        await self.up()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.down()

    # -- API objects -----------------------------------------------------------------------

    def node_object(self, node: ClusterNode) -> dict[str, Any]:
        """The Node as a cloud would register it: InternalIP(s), pod CIDRs, providerID."""
        addresses = [{"type": "InternalIP", "address": a} for a in node.host.addresses()]
        labels = {"kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux"}
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": node.name,
                "labels": {**labels, **self.spec.labels.get(node.name, {})},
                "annotations": dict(self.spec.annotations.get(node.name, {})),
            },
            "spec": {
                "podCIDR": node.pod_cidrs[0],
                "podCIDRs": list(node.pod_cidrs),
                "providerID": f"lab://{self.spec.prefix}/{node.name}",
            },
            "status": {
                "addresses": [*addresses, {"type": "Hostname", "address": node.name}],
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }

    def annotate_node(self, node: ClusterNode | str, annotations: Mapping[str, str | None]) -> None:
        """Merge ``annotations`` into the Node's (None removes one)."""
        patch = {"metadata": {"annotations": dict(annotations)}}
        self.server.store.patch("nodes", None, self.node(node).name, patch)

    def _ensure_namespace(self, name: str) -> None:
        try:
            self.server.store.create("namespaces", {"metadata": {"name": name}})
        except ApiError as err:
            if err.code != HTTP_CONFLICT:
                raise

    # -- CNI configuration -----------------------------------------------------------------

    def write_cni_conf(
        self, node: ClusterNode | str, conf: Mapping[str, Any] | None = None
    ) -> Path:
        """Write the node's CNI configuration (default: upstream's conflist with the node's
        pod CIDRs, as the agent would) and return its path."""
        n = self.node(node)
        body = dict(conf) if conf is not None else cnipods.default_conflist(n.pod_cidrs)
        tmp = n.cni_conf.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
        tmp.replace(n.cni_conf)
        return n.cni_conf

    def write_cni_template(self, node: ClusterNode | str) -> Path:
        """The configuration an init container installs: no pod ranges yet (the agent adds
        them; upstream's agent needs the file to exist when it starts)."""
        return self.write_cni_conf(node, cnipods.default_conflist())

    # -- pods ------------------------------------------------------------------------------

    async def add_pod(
        self,
        node: ClusterNode | str,
        namespace: str,
        name: str,
        labels: Mapping[str, str] | None = None,
        *,
        conf_timeout: float = CONF_TIMEOUT_S,
        ports: Sequence[int] = cnipods.DEFAULT_PORTS,
    ) -> CniPod:
        """A pod on ``node``: namespace, CNI ADD with the node's configuration (waiting up to
        ``conf_timeout`` for it), the Pod object (Running) and its probe agent, ready."""
        n = self.node(node)
        conf = await cnipods.wait_conf(n.cni_conf, conf_timeout)
        i = next(self._pod_ids)
        pod = CniPod(
            namespace,
            name,
            n.name,
            f"{self.spec.prefix}-pod{i}",
            uuid.uuid4().hex,
            (),
            self.workdir / "pods" / f"p{i}.sock",
            conf,
        )
        underlay.netns_add(pod.netns, ipv6=True)
        try:
            pod.result = await cnipods.cni_add(
                n.netns, conf, pod.netns, pod.container_id, n.ipam_dir
            )
            pod.ips = cnipods.result_ips(pod.result)
            self._ensure_namespace(namespace)
            obj = cnipods.pod_object(pod, n.host.addresses(), labels or {}, ports)
            self.server.store.create("pods", obj)
            self.pods.append(pod)
            cnipods.start_podagent(pod, ports)
            await cnipods.wait_podagent(pod)
        except BaseException:
            await self._forget_pod(pod, n)
            raise
        return pod

    async def remove_pod(self, pod: CniPod) -> None:
        """Stop its agent, CNI DEL (releasing its addresses), delete the object and netns."""
        await self._forget_pod(pod, self.node(pod.node))

    async def _forget_pod(self, pod: CniPod, node: ClusterNode) -> None:
        cnipods.stop_podagent(pod)
        if pod in self.pods:
            self.pods.remove(pod)
        try:
            if pod.result:
                await cnipods.cni_del(
                    node.netns,
                    pod.conf,
                    pod.netns,
                    pod.container_id,
                    node.ipam_dir,
                    result=pod.result,
                )
            with contextlib.suppress(ApiError):
                self.server.store.delete("pods", pod.namespace, pod.name)
        finally:
            ip("netns", "del", pod.netns, check=False)

    def pod(self, namespace: str, name: str) -> CniPod:
        for p in self.pods:
            if (p.namespace, p.name) == (namespace, name):
                return p
        raise KeyError(f"no pod {namespace}/{name}")

    async def ask(self, src: CniPod, dst: str, proto: str = "tcp", port: int = 80) -> str | None:
        """Which pod answers ``src`` on ``dst``:``port`` (None: nobody)."""
        return await cnipods.ask(src, dst, proto, port)

    async def reaches(
        self, src: CniPod, dst: CniPod, proto: str = "tcp", port: int = 80, family: str = "ipv4"
    ) -> bool:
        return await cnipods.reaches(src, dst, proto, port, family)

    # -- processes in node namespaces ------------------------------------------------------

    def node_argv(
        self, node: ClusterNode | str, argv: Sequence[str], mounts: Mapping[str, Path] | None = None
    ) -> list[str]:
        """``argv`` wrapped to run in the node's namespace, with ``mounts`` (default
        ``{"/run/kube-router": run_dir}``) bind-mounted in its own mount namespace (made by
        ``ip netns exec``; the mount points are created on the host if missing)."""
        n = self.node(node)
        mounts = {RUN_DIR: n.run_dir} if mounts is None else mounts
        script = "".join(
            f"mkdir -p {shlex.quote(t)} && mount --bind {shlex.quote(str(s))} {shlex.quote(t)} && "
            for t, s in mounts.items()
        )
        wrapped = ["sh", "-c", f'{script}exec "$@"', "sh", *argv] if mounts else list(argv)
        return ["ip", "netns", "exec", n.netns, *wrapped]

    def run(
        self,
        node: ClusterNode | str,
        *argv: str,
        check: bool = True,
        mounts: Mapping[str, Path] | None = None,
    ) -> str:
        """Run a short command in the node (as :meth:`spawn` would, blocking); its stdout."""
        proc = subprocess.run(
            self.node_argv(node, argv, mounts), capture_output=True, text=True, check=False
        )
        if check and proc.returncode != 0:
            raise underlay.UnderlayError(
                f"{' '.join(argv)} in {self.node(node).name}: exit {proc.returncode}: "
                f"{proc.stderr.strip()}"
            )
        return proc.stdout

    def spawn(
        self,
        node: ClusterNode | str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_name: str = "proc",
        mounts: Mapping[str, Path] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the node (see :meth:`node_argv` for ``mounts``) with
        ``node.env()`` and ``env`` added to this process's environment, output appended to
        ``<node dir>/<log_name>.log``, in a session of its own. :meth:`down` stops it."""
        n = self.node(node)
        with (n.dir / f"{log_name}.log").open("ab") as out:
            proc = subprocess.Popen(
                self.node_argv(n, argv, mounts),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **n.env(), **(env or {})},
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def agent_argv(self, node: ClusterNode | str, *extra: str) -> list[str]:
        """``python -m kube_router`` against the lab API server as this node."""
        n = self.node(node)
        return [
            *(sys.executable, "-m", "kube_router", f"--kubeconfig={self.kubeconfig}"),
            f"--hostname-override={n.name}",
            *extra,
        ]

    def start_agent(
        self, node: ClusterNode | str, *extra: str, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """The real agent in the node's namespace; log ``<node dir>/agent.log``."""
        return self.spawn(node, self.agent_argv(node, *extra), env=env, log_name="agent")

    # -- routing by hand -------------------------------------------------------------------

    def install_static_routes(self) -> None:
        """Routes to every node's pod CIDRs on every other node (and the router): what BGP
        would install, for tests of the lab itself."""
        for n in self.nodes:
            for m in self.nodes:
                if m is n:
                    continue
                for cidr in m.pod_cidrs:
                    v6 = ":" in cidr
                    same = m.host.subnet == n.host.subnet
                    via = (
                        (m.ip6 if v6 else m.ip)
                        if same
                        else (n.host.gateway6 if v6 else n.host.gateway)
                    )
                    ip("route", "replace", cidr, "via", str(via), netns=n.netns)
        if self.underlay.router is not None:
            for m in self.nodes:
                for cidr in m.pod_cidrs:
                    via = m.ip6 if ":" in cidr else m.ip
                    ip("route", "replace", cidr, "via", str(via), netns=self.underlay.router)

    # -- external BGP routers --------------------------------------------------------------

    async def add_external_router(
        self,
        name: str = "ext",
        asn: int = EXTERNAL_ASN,
        *,
        subnet: int = 0,
        host: int | None = None,
        neighbors: Sequence[Neighbor] | None = None,
        node_asn: int | Mapping[str, int] = CLUSTER_ASN,
        password: str | None = None,
        api_port: int = 50051,
    ) -> ExternalRouter:
        """A namespace ``<prefix>-<name>`` on ``subnet`` running gobgpd; neighbours default to
        every node (ASN ``node_asn``, eBGP multihop for nodes behind the router, both families
        with IPv6), started and answering its API."""
        h = self.underlay.plan_host(name, host or EXTERNAL_HOST - len(self.routers), subnet)
        underlay.add_host(self.underlay, h)
        if neighbors is None:
            neighbors = [self._neighbor(n, h, asn, node_asn, password) for n in self.nodes]
        router = ExternalRouter(h.netns, h.ip, asn, self.workdir, list(neighbors), api_port)
        self.routers[name] = router
        await router.start()
        return router

    def _neighbor(
        self, n: ClusterNode, h: Host, asn: int, node_asn: int | Mapping[str, int], pw: str | None
    ) -> Neighbor:
        peer_asn = node_asn if isinstance(node_asn, int) else node_asn[n.name]
        ebgp_far = peer_asn != asn and n.host.subnet != h.subnet
        families = ("ipv4-unicast", "ipv6-unicast") if self.spec.ipv6 else ("ipv4-unicast",)
        return Neighbor(
            n.ip,
            peer_asn,
            pw,
            multihop_ttl=EBGP_MULTIHOP_TTL if ebgp_far else None,
            families=families,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.warning("process %d ignored SIGTERM for %g s; killing it", proc.pid, STOP_TIMEOUT_S)
        proc.kill()
        proc.wait()


def down(prefix: str) -> list[str]:
    """Remove whatever a cluster with ``prefix`` left (also after a crash): processes inside
    its namespaces, then the namespaces. Returns the namespaces removed."""
    removed = underlay.destroy(prefix)
    if removed:
        log.info("removed lab namespaces %s", ", ".join(removed))
    return removed
