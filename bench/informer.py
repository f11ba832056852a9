"""Informer benchmark: cold list of a large cluster and watch-event latency, over real HTTP.

The lab API server runs in its own process (as a real API server would) holding 10,000
Services, 10,000 EndpointSlices with 100,000 endpoints, 50,000 Pods, 1,000 NetworkPolicies and
1,000 Nodes. This process runs the agent's informer set against it and reports:

- cold list: time from starting the informers to every cache synced (paginated lists, decoded
  into the slim models and stored), and the resident memory the stores added;
- watch latency: time from sending a PATCH to the handler seeing the change, over many events
  (this includes the PATCH round trip, so it overstates the watch path alone).

Usage: ``python bench/informer.py [--scale 1.0] [--events 300]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any

BARS = {"cold_list_s": 5.0, "store_rss_mib": 250.0, "watch_p50_ms": 5.0}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_objects(scale: float) -> dict[str, list[dict[str, Any]]]:
    n_svc, n_pods = int(10_000 * scale), int(50_000 * scale)
    n_pol, n_nodes, n_ns = int(1_000 * scale), int(1_000 * scale), 100
    nodes = [
        {
            "metadata": {"name": f"node-{i}", "labels": {"kubernetes.io/hostname": f"node-{i}"}},
            "spec": {
                "podCIDR": f"10.{64 + i // 256}.{i % 256}.0/24",
                "podCIDRs": [f"10.{64 + i // 256}.{i % 256}.0/24"],
                "providerID": f"lab://node-{i}",
            },
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": f"172.16.{i // 256}.{i % 256}"},
                    {"type": "Hostname", "address": f"node-{i}"},
                ]
            },
        }
        for i in range(n_nodes)
    ]
    namespaces = [
        {"metadata": {"name": f"ns-{i}", "labels": {"team": f"t{i % 10}"}}} for i in range(n_ns)
    ]
    pods = [
        {
            "metadata": {
                "name": f"pod-{i}",
                "namespace": f"ns-{i % n_ns}",
                "labels": {"app": f"app-{i % n_svc}", "tier": "web"},
                "annotations": {"kubernetes.io/psp": "restricted"},
            },
            "spec": {
                "nodeName": f"node-{i % n_nodes}",
                "terminationGracePeriodSeconds": 30,
                "containers": [
                    {
                        "name": "main",
                        "image": "registry.example/app:1.0",
                        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                    }
                ],
            },
            "status": {
                "phase": "Running",
                "hostIP": f"172.16.{(i % n_nodes) // 256}.{i % 256}",
                "podIP": f"10.{64 + (i // 256) % 64}.{i % 256}.{i % 250 + 2}",
                "podIPs": [{"ip": f"10.{64 + (i // 256) % 64}.{i % 256}.{i % 250 + 2}"}],
                "containerStatuses": [
                    {
                        "name": "main",
                        "containerID": f"containerd://{i:064x}",
                        "ready": True,
                        "restartCount": 0,
                    }
                ],
            },
        }
        for i in range(n_pods)
    ]
    services = [
        {
            "metadata": {"name": f"svc-{i}", "namespace": f"ns-{i % n_ns}"},
            "spec": {
                "type": "ClusterIP",
                "selector": {"app": f"app-{i}"},
                "clusterIP": f"10.96.{i // 256}.{i % 256}",
                "clusterIPs": [f"10.96.{i // 256}.{i % 256}"],
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
                "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "SingleStack",
                "sessionAffinity": "None",
                "internalTrafficPolicy": "Cluster",
            },
        }
        for i in range(n_svc)
    ]
    slices = [
        {
            "metadata": {
                "name": f"svc-{i}-abcde",
                "namespace": f"ns-{i % n_ns}",
                "labels": {
                    "kubernetes.io/service-name": f"svc-{i}",
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                },
            },
            "addressType": "IPv4",
            "endpoints": [
                {
                    "addresses": [f"10.{64 + j}.{i // 256}.{i % 256}"],
                    "conditions": {"ready": True, "serving": True, "terminating": False},
                    "nodeName": f"node-{(i + j) % n_nodes}",
                    "targetRef": {
                        "kind": "Pod",
                        "name": f"pod-{i}-{j}",
                        "namespace": f"ns-{i % n_ns}",
                    },
                }
                for j in range(10)
            ],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }
        for i in range(n_svc)
    ]
    policies = [
        {
            "metadata": {"name": f"pol-{i}", "namespace": f"ns-{i % n_ns}"},
            "spec": {
                "podSelector": {"matchLabels": {"app": f"app-{i}"}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {
                        "from": [
                            {
                                "namespaceSelector": {"matchLabels": {"team": "t1"}},
                                "podSelector": {
                                    "matchExpressions": [
                                        {"key": "tier", "operator": "In", "values": ["web", "api"]}
                                    ]
                                },
                            },
                            {"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}},
                        ],
                        "ports": [
                            {"protocol": "TCP", "port": 8080},
                            {"protocol": "TCP", "port": "http"},
                        ],
                    }
                ],
                "egress": [
                    {"to": [{"podSelector": {}}], "ports": [{"protocol": "UDP", "port": 53}]}
                ],
            },
        }
        for i in range(n_pol)
    ]
    return {
        "nodes": nodes,
        "namespaces": namespaces,
        "pods": pods,
        "services": services,
        "endpointslices": slices,
        "networkpolicies": policies,
    }


def _serve(scale: float, conn: Any) -> None:
    from kube_router_lab.apiserver import LabServer

    async def main() -> None:
        server = LabServer("127.0.0.1", 0, bookmark_interval=5.0)
        for resource, objs in make_objects(scale).items():
            server.store.load(resource, objs)
        await server.start()
        conn.send(server.url)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # wait for "stop"
        await server.stop()

    asyncio.run(main())


async def measure(url: str, events: int) -> dict[str, float]:
    from kube_router.k8s import resources
    from kube_router.k8s.client import STRATEGIC_MERGE_PATCH, KubeClient
    from kube_router.k8s.informer import FuncHandler
    from kube_router.k8s.informers import Informers

    with tempfile.NamedTemporaryFile("w", suffix=".kubeconfig", delete=False) as f:
        json.dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "lab",
                "clusters": [{"name": "lab", "cluster": {"server": url}}],
                "users": [{"name": "lab", "user": {}}],
                "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}],
            },
            f,
        )
    client = await KubeClient.from_flags(kubeconfig=f.name)
    os.unlink(f.name)
    gc.collect()
    rss0 = _rss_mib()
    informers = Informers(client)
    t0 = time.perf_counter()
    informers.start()
    await informers.wait_for_cache_sync(120)
    cold = time.perf_counter() - t0
    gc.collect()
    rss1 = _rss_mib()
    counts = {inf.name: len(inf.store) for inf in informers.all()}

    seen: dict[str, float] = {}
    arrived = asyncio.Event()

    def on_update(_old: Any, new: Any) -> None:
        tag = new.metadata.labels.get("bench-seq")
        if tag is not None:
            seen[tag] = time.perf_counter()
            arrived.set()

    informers.pods.add_handler(FuncHandler(update=on_update))
    latencies = []
    for i in range(events):
        arrived.clear()
        sent = time.perf_counter()
        await client.patch(
            resources.PODS,
            "ns-0",
            "pod-0",
            {"metadata": {"labels": {"bench-seq": str(i)}}},
            content_type=STRATEGIC_MERGE_PATCH,
        )
        while str(i) not in seen:
            await asyncio.wait_for(arrived.wait(), 5)
            arrived.clear()
        latencies.append((seen[str(i)] - sent) * 1000)
    await informers.stop()
    await client.close()
    latencies.sort()
    return {
        "cold_list_s": cold,
        "store_rss_mib": rss1 - rss0,
        "watch_p50_ms": statistics.median(latencies),
        "watch_p99_ms": latencies[int(len(latencies) * 0.99) - 1],
        **{f"objects_{k}": float(v) for k, v in counts.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--events", type=int, default=300)
    args = parser.parse_args()
    parent, child = mp.Pipe()
    proc = mp.get_context("fork").Process(target=_serve, args=(args.scale, child), daemon=True)
    proc.start()
    url = parent.recv()
    try:
        result = asyncio.run(measure(url, args.events))
    finally:
        parent.send("stop")
        proc.join(30)
    print(
        f"# informer benchmark, {time.strftime('%Y-%m-%d')}, {platform.node()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(f"# command: python bench/informer.py --scale {args.scale} --events {args.events}")
    ok = True
    for key, value in result.items():
        bar = BARS.get(key)
        verdict = ""
        if bar is not None:
            verdict = f"  (bar <= {bar:g}: {'ok' if value <= bar else 'MISSED'})"
        ok &= bar is None or value <= bar
        print(f"{key:>28} = {value:10.2f}{verdict}")
    return 0 if ok or args.scale != 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
