"""NetworkPolicy conformance with real packets.

Namespaces x, y, z with pods a, b, c (as the Kubernetes NetworkPolicy e2e tests arrange them).
x and y run on this node, whose namespace the real controller programs; z runs on a "remote"
node reached through a route. After every step the full reachability matrix (TCP and UDP, ports
80 and 81, real connections) must equal the expected one, cell for cell.
"""

from __future__ import annotations

import asyncio
import ipaddress
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kube_router.config import parse
from kube_router.controllers.base import Barriers, RunContext
from kube_router.controllers.netpol.controller import Dataplane, NetworkPolicyController
from kube_router.dataplane.exec import Executor
from kube_router.health import HealthChecker
from kube_router.k8s.client import KubeClient
from kube_router.k8s.informers import Informers
from kube_router.lab.apiserver import LabServer
from kube_router.lab.errors import ApiError as LabApiError
from kube_router.lab.podnet import LINK_NET, PodNetwork
from kube_router.node import NodeIdentity

NODE_IP, REMOTE_IP = (str(h) for h in LINK_NET.hosts())
PROTOS = ("tcp", "udp")
PORTS = (80, 81)
Cell = tuple[str, str, str, int]


@dataclass
class Cluster:
    lab: LabServer
    net: PodNetwork
    ctrl: NetworkPolicyController
    informers: Informers

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.net.pods]

    def ip(self, key: str) -> str:
        return next(p.ip for p in self.net.pods if p.key == key)

    async def converge(self, ready: Callable[[], bool]) -> None:
        """Wait until the caches show the change, then for a sync that started after it."""
        for _ in range(200):
            if ready():
                break
            await asyncio.sleep(0.02)
        assert ready(), "the informers never saw the change"
        runner = self.ctrl.runner
        before = runner.stats.syncs + runner.stats.failures
        runner.poke()
        for _ in range(500):
            if runner.stats.syncs + runner.stats.failures > before:
                break
            await asyncio.sleep(0.02)
        assert runner.stats.failures == 0, "a sync failed"

    async def apply_policy(self, policy: dict[str, Any]) -> None:
        meta = policy["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        store = self.informers.networkpolicies.store
        try:
            self.lab.store.get("networkpolicies", meta["namespace"], meta["name"])
        except LabApiError:
            self.lab.store.create("networkpolicies", policy)
        else:
            self.lab.store.update("networkpolicies", policy)
        rv = str(self.lab.store.resource_version)
        await self.converge(
            lambda: (o := store.get(key)) is not None and o.metadata.resource_version == rv
        )

    async def delete_policy(self, ns: str, name: str) -> None:
        self.lab.store.delete("networkpolicies", ns, name)
        await self.converge(
            lambda: self.informers.networkpolicies.store.get(f"{ns}/{name}") is None
        )

    async def check(self, denied: Iterable[Cell]) -> None:
        expected_denied = set(denied)
        matrix = await self.net.matrix(PROTOS, PORTS, timeout=1.0)
        wrong = sorted(c for c, ok in matrix.items() if ok == (c in expected_denied))
        assert not wrong, f"{len(wrong)} wrong cells: {wrong[:20]}"


def cells(
    srcs: Iterable[str],
    dsts: Iterable[str],
    protos: Iterable[str] = PROTOS,
    ports: Iterable[int] = PORTS,
) -> set[Cell]:
    dst_list = list(dsts)
    return {
        (s, d, pr, po) for s in srcs for d in dst_list for pr in protos for po in ports if s != d
    }


def policy(ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


async def _seed(lab: LabServer, net: PodNetwork) -> None:
    lab.store.create(
        "nodes",
        {
            "metadata": {"name": "n1"},
            "spec": {"podCIDR": net.local_cidr},
            "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]},
        },
    )
    for ns in ("x", "y", "z"):
        lab.store.create("namespaces", {"metadata": {"name": ns, "labels": {"ns": ns}}})
    for p in net.pods:
        host = NODE_IP if p.node == "local" else REMOTE_IP
        lab.store.create(
            "pods",
            {
                "metadata": {"name": p.name, "namespace": p.namespace, "labels": {"pod": p.name}},
                "spec": {
                    "nodeName": "n1" if p.node == "local" else "n2",
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
                    "podIP": p.ip,
                    "podIPs": [{"ip": p.ip}],
                },
            },
        )


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    net = PodNetwork(f"kc{uuid.uuid4().hex[:5]}", tmp_path)
    lab = LabServer("127.0.0.1", 0, bookmark_interval=0.2)
    await lab.start()
    task: asyncio.Task[None] | None = None
    informers: Informers | None = None
    client: KubeClient | None = None
    try:
        net.build_nodes()
        for ns, node in (("x", "local"), ("y", "local"), ("z", "remote")):
            for name in ("a", "b", "c"):
                net.add_pod(ns, name, node)
        await net.start_agents()
        await _seed(lab, net)
        lab.write_kubeconfig(tmp_path / "kubeconfig")
        client = await KubeClient.from_flags(str(tmp_path / "kubeconfig"))
        informers = Informers(client)
        informers.start()
        await informers.wait_for_cache_sync(10)
        ident = NodeIdentity(
            "n1", ipaddress.ip_address(NODE_IP), ipaddress.ip_address(NODE_IP), None, None
        )
        ctx = RunContext(
            parse(["--iptables-sync-period=5m"], {}),
            client,
            informers,
            ident,
            HealthChecker(),
            None,
            Barriers(),
        )
        ctx.health.register(NetworkPolicyController.name, 300)
        dataplane = await Dataplane.real(Executor.in_netns(net.node_netns), ["IPv4"])
        ctrl = NetworkPolicyController(ctx, dataplane)
        task = asyncio.create_task(ctrl.run())
        cluster = Cluster(lab, net, ctrl, informers)
        await cluster.converge(lambda: True)
        yield cluster
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if informers is not None:
            await informers.stop()
        if client is not None:
            await client.close()
        await lab.stop()
        net.teardown()


X, Y, Z = (["x/a", "x/b", "x/c"], ["y/a", "y/b", "y/c"], ["z/a", "z/b", "z/c"])
ALL = X + Y + Z


async def test_netpol_conformance_sequence(cluster: Cluster) -> None:
    c = cluster
    # 1. No policies: everything reaches everything.
    await c.check(set())

    # 2. Default deny ingress in x: nothing reaches x's pods, x's pods still reach out.
    await c.apply_policy(policy("x", "deny", {"podSelector": {}, "policyTypes": ["Ingress"]}))
    await c.check(cells(ALL, X))

    # 3. Plus: x/a accepts pods labelled pod=b in its own namespace on TCP 80 only.
    await c.apply_policy(
        policy(
            "x",
            "allow-b",
            {
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [
                    {
                        "from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                        "ports": [{"protocol": "TCP", "port": 80}],
                    }
                ],
            },
        )
    )
    await c.check(cells(ALL, X) - {("x/b", "x/a", "tcp", 80)})

    # 4. Policy update: named port serve-81 instead; now TCP 81 from x/b.
    await c.apply_policy(
        policy(
            "x",
            "allow-b",
            {
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [
                    {
                        "from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                        "ports": [{"protocol": "TCP", "port": "serve-81"}],
                    }
                ],
            },
        )
    )
    await c.check(cells(ALL, X) - {("x/b", "x/a", "tcp", 81)})

    # 5. namespaceSelector: x/a also accepts everything from namespace z (the remote node).
    await c.apply_policy(
        policy(
            "x",
            "allow-z",
            {
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}],
            },
        )
    )
    await c.check(cells(ALL, X) - {("x/b", "x/a", "tcp", 81)} - cells(Z, ["x/a"]))

    # 6. Deleting policies reopens exactly what they closed.
    for name in ("deny", "allow-b", "allow-z"):
        await c.delete_policy("x", name)
    await c.check(set())

    # 7. namespaceSelector AND podSelector in one peer: y/c accepts only pod=a from ns z.
    await c.apply_policy(
        policy(
            "y",
            "and",
            {
                "podSelector": {"matchLabels": {"pod": "c"}},
                "ingress": [
                    {
                        "from": [
                            {
                                "namespaceSelector": {"matchLabels": {"ns": "z"}},
                                "podSelector": {"matchLabels": {"pod": "a"}},
                            }
                        ]
                    }
                ],
            },
        )
    )
    await c.check(cells([k for k in ALL if k != "z/a"], ["y/c"]))
    await c.delete_policy("y", "and")

    # 8. ipBlock with except: x/b accepts the remote pod CIDR except z/b.
    await c.apply_policy(
        policy(
            "x",
            "cidr",
            {
                "podSelector": {"matchLabels": {"pod": "b"}},
                "ingress": [
                    {
                        "from": [
                            {
                                "ipBlock": {
                                    "cidr": c.net.remote_cidr,
                                    "except": [f"{c.ip('z/b')}/32"],
                                }
                            }
                        ]
                    }
                ],
            },
        )
    )
    await c.check(cells([k for k in ALL if k not in ("z/a", "z/c")], ["x/b"]))
    await c.delete_policy("x", "cidr")

    # 9. Egress deny in y: y's local pods reach nobody; replies to others' connections still flow.
    await c.apply_policy(policy("y", "no-egress", {"podSelector": {}, "policyTypes": ["Egress"]}))
    await c.check(cells(Y, ALL))

    # 10. Egress allowed to UDP only (both ports), plus the deny above: union of policies.
    await c.apply_policy(
        policy(
            "y",
            "udp-out",
            {
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [{"ports": [{"protocol": "UDP"}]}],
            },
        )
    )
    await c.check(cells(Y, ALL, protos=["tcp"]))
    for name in ("no-egress", "udp-out"):
        await c.delete_policy("y", name)
    await c.check(set())
