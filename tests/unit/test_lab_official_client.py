"""Conformance of the lab API server with the official (sync) `kubernetes` Python client.

The server runs on the test's event loop; blocking client calls run in threads.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from kube_router_lab.apiserver import LabServer

T = TypeVar("T")


@pytest.fixture
async def lab() -> AsyncIterator[LabServer]:
    srv = LabServer(bookmark_interval=0.2)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def make_client(lab: LabServer, path: Path, token: str | None = None) -> client.ApiClient:
    lab.write_kubeconfig(path, token=token)
    cfg = client.Configuration()
    await asyncio.to_thread(
        config.load_kube_config, config_file=str(path), client_configuration=cfg
    )
    return client.ApiClient(cfg)


@pytest.fixture
async def api(lab: LabServer, tmp_path: Path) -> AsyncIterator[client.ApiClient]:
    api_client = await make_client(lab, tmp_path / "kubeconfig")
    try:
        yield api_client
    finally:
        api_client.close()


async def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(fn, *args, **kwargs)


def pod(name: str, node: str = "n1", **labels: str) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels or None),
        spec=client.V1PodSpec(
            node_name=node, containers=[client.V1Container(name="c", image="busybox")]
        ),
    )


async def wait_for_watches(lab: LabServer, count: int = 1) -> None:
    for _ in range(200):
        if lab.watch_count >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the watch never reached the server")


async def test_kubeconfig_and_discovery(lab: LabServer, api: client.ApiClient) -> None:
    assert api.configuration.host == lab.url
    version = await run(client.VersionApi(api).get_code)
    assert version.git_version == "v1.31.0"
    versions = await run(client.CoreApi(api).get_api_versions)
    assert versions.versions == ["v1"]
    resources = await run(client.CoreV1Api(api).get_api_resources)
    assert "services/status" in {r.name for r in resources.resources}
    groups = await run(client.ApisApi(api).get_api_versions)
    assert "coordination.k8s.io" in {g.name for g in groups.groups}
    disco = await run(client.DiscoveryV1Api(api).get_api_resources)
    assert [r.name for r in disco.resources] == ["endpointslices"]


async def test_create_and_list_pods_with_selectors(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    created = await run(core.create_namespaced_pod, "default", pod("a", app="web"))
    assert created.metadata.uid
    assert created.metadata.resource_version == "1"
    assert created.metadata.creation_timestamp is not None
    await run(core.create_namespaced_pod, "default", pod("b", node="n2", app="db"))
    await run(core.create_namespaced_pod, "other", pod("c", app="web"))

    listed = await run(core.list_namespaced_pod, "default", label_selector="app=web")
    assert [p.metadata.name for p in listed.items] == ["a"]
    assert listed.metadata.resource_version == "3"
    listed = await run(core.list_namespaced_pod, "default", field_selector="spec.nodeName=n2")
    assert [p.metadata.name for p in listed.items] == ["b"]
    everywhere = await run(core.list_pod_for_all_namespaces, label_selector="app in (web)")
    assert [p.metadata.name for p in everywhere.items] == ["a", "c"]


async def test_list_limit_and_continue(lab: LabServer, api: client.ApiClient) -> None:
    lab.store.load(
        "pods", ({"metadata": {"name": f"p{i:02d}", "labels": {"n": str(i % 2)}}} for i in range(9))
    )
    core = client.CoreV1Api(api)
    names: list[str] = []
    token = None
    while True:
        page = await run(
            core.list_namespaced_pod, "default", label_selector="n=0", limit=2, _continue=token
        )
        names += [p.metadata.name for p in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert names == ["p00", "p02", "p04", "p06", "p08"]


async def test_conflict_and_not_found(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    first = await run(core.create_namespaced_pod, "default", pod("a"))
    first.metadata.labels = {"v": "1"}
    await run(core.replace_namespaced_pod, "a", "default", first)
    first.metadata.labels = {"v": "2"}
    with pytest.raises(ApiException) as conflict:
        await run(core.replace_namespaced_pod, "a", "default", first)
    assert conflict.value.status == 409
    assert json.loads(conflict.value.body)["reason"] == "Conflict"
    with pytest.raises(ApiException) as missing:
        await run(core.read_namespaced_pod, "nope", "default")
    assert missing.value.status == 404
    assert json.loads(missing.value.body)["message"] == 'pods "nope" not found'
    with pytest.raises(ApiException) as exists:
        await run(core.create_namespaced_pod, "default", pod("a"))
    assert exists.value.status == 409


async def test_delete_pod_returns_the_pod(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    await run(core.create_namespaced_pod, "default", pod("a"))
    deleted = await run(core.delete_namespaced_pod, "a", "default")
    assert deleted.metadata.name == "a"
    assert (await run(core.list_namespaced_pod, "default")).items == []


async def test_service_status_and_strategic_merge_patch(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    svc = client.V1Service(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1ServiceSpec(
            type="LoadBalancer",
            selector={"app": "web"},
            ports=[
                client.V1ServicePort(name="http", port=80),
                client.V1ServicePort(name="https", port=443),
            ],
        ),
    )
    created = await run(core.create_namespaced_service, "default", svc)
    assert created.spec.cluster_ip.startswith("10.96.")
    assert all(p.node_port for p in created.spec.ports)

    created.status = client.V1ServiceStatus(
        load_balancer=client.V1LoadBalancerStatus(
            ingress=[client.V1LoadBalancerIngress(ip="192.0.2.10")]
        )
    )
    replaced = await run(core.replace_namespaced_service_status, "web", "default", created)
    assert replaced.status.load_balancer.ingress[0].ip == "192.0.2.10"

    # a dict body goes as a strategic merge patch: ports merge by port
    patch = {
        "metadata": {"labels": {"team": "net"}},
        "spec": {"ports": [{"port": 80, "targetPort": 8080}]},
    }
    patched = await run(core.patch_namespaced_service, "web", "default", patch)
    assert patched.metadata.labels == {"team": "net"}
    ports = {p.port: p.target_port for p in patched.spec.ports}
    assert ports == {80: 8080, 443: 443}
    assert patched.status.load_balancer.ingress[0].ip == "192.0.2.10"
    assert patched.metadata.generation == 2

    # a list body goes as a JSON patch
    ops = [{"op": "replace", "path": "/spec/selector", "value": {"app": "api"}}]
    patched = await run(core.patch_namespaced_service, "web", "default", ops)
    assert patched.spec.selector == {"app": "api"}

    status_patch = {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.11"}]}}}
    patched = await run(core.patch_namespaced_service_status, "web", "default", status_patch)
    assert [i.ip for i in patched.status.load_balancer.ingress] == ["192.0.2.10", "192.0.2.11"]


async def test_watch_stream(lab: LabServer, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    await run(core.create_namespaced_pod, "default", pod("a"))

    def collect() -> list[tuple[str, str, str]]:
        w = watch.Watch()
        seen: list[tuple[str, str, str]] = []
        for event in w.stream(core.list_namespaced_pod, "default", timeout_seconds=10):
            obj = event["object"]
            seen.append((event["type"], obj.metadata.name, obj.metadata.resource_version))
            if len(seen) == 4:
                w.stop()
        return seen

    collector = asyncio.create_task(run(collect))
    await wait_for_watches(lab)
    await run(core.create_namespaced_pod, "default", pod("b"))
    await run(core.patch_namespaced_pod, "b", "default", {"metadata": {"labels": {"x": "y"}}})
    await run(core.delete_namespaced_pod, "b", "default")
    seen = await asyncio.wait_for(collector, 15)
    assert seen == [
        ("ADDED", "a", "1"),
        ("ADDED", "b", "2"),
        ("MODIFIED", "b", "3"),
        ("DELETED", "b", "4"),
    ]


async def test_watch_with_bookmarks_and_selector(lab: LabServer, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)

    def collect() -> list[str]:
        w = watch.Watch()
        kinds: list[str] = []
        for event in w.stream(
            core.list_pod_for_all_namespaces,
            label_selector="app=web",
            allow_watch_bookmarks=True,
            resource_version="0",
            timeout_seconds=10,
        ):
            kinds.append(event["type"])
            if event["type"] == "ADDED":
                assert event["object"].metadata.name == "match"
            if "ADDED" in kinds and "BOOKMARK" in kinds:
                w.stop()
        return kinds

    collector = asyncio.create_task(run(collect))
    await wait_for_watches(lab)
    lab.store.create("pods", {"metadata": {"name": "skip", "labels": {"app": "db"}}})
    lab.store.create("pods", {"metadata": {"name": "match", "labels": {"app": "web"}}})
    kinds = await asyncio.wait_for(collector, 15)
    assert "ADDED" in kinds
    assert "BOOKMARK" in kinds


async def test_watch_too_old_resource_version(lab: LabServer, api: client.ApiClient) -> None:
    lab.store.create("pods", {"metadata": {"name": "a"}})
    lab.store.create("pods", {"metadata": {"name": "b"}})
    lab.compact()
    core = client.CoreV1Api(api)

    def stream() -> None:
        w = watch.Watch()
        for _ in w.stream(
            core.list_namespaced_pod, "default", resource_version="1", timeout_seconds=2
        ):
            pass

    with pytest.raises(ApiException) as gone:
        await run(stream)
    assert gone.value.status == 410


async def test_leases(api: client.ApiClient) -> None:
    coord = client.CoordinationV1Api(api)
    lease = client.V1Lease(
        metadata=client.V1ObjectMeta(name="kube-router", namespace="kube-system"),
        spec=client.V1LeaseSpec(holder_identity="node-a", lease_duration_seconds=15),
    )
    created = await run(coord.create_namespaced_lease, "kube-system", lease)
    assert created.spec.holder_identity == "node-a"
    created.spec.holder_identity = "node-b"
    replaced = await run(coord.replace_namespaced_lease, "kube-router", "kube-system", created)
    assert replaced.spec.holder_identity == "node-b"
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)
    created.spec.holder_identity = "node-c"  # stale resourceVersion: someone else won
    with pytest.raises(ApiException) as conflict:
        await run(coord.replace_namespaced_lease, "kube-router", "kube-system", created)
    assert conflict.value.status == 409
    got = await run(coord.read_namespaced_lease, "kube-router", "kube-system")
    assert got.spec.holder_identity == "node-b"


async def test_endpoint_slices(api: client.ApiClient) -> None:
    disco = client.DiscoveryV1Api(api)
    eps = client.V1EndpointSlice(
        metadata=client.V1ObjectMeta(name="web-abc", labels={"kubernetes.io/service-name": "web"}),
        address_type="IPv4",
        endpoints=[
            client.V1Endpoint(
                addresses=["10.0.0.5"],
                conditions=client.V1EndpointConditions(ready=True),
                node_name="n1",
            )
        ],
        ports=[client.DiscoveryV1EndpointPort(name="http", port=8080, protocol="TCP")],
    )
    await run(disco.create_namespaced_endpoint_slice, "default", eps)
    listed = await run(
        disco.list_endpoint_slice_for_all_namespaces,
        label_selector="kubernetes.io/service-name=web",
    )
    (got,) = listed.items
    assert got.endpoints[0].addresses == ["10.0.0.5"]
    assert got.endpoints[0].conditions.ready is True
    assert got.ports[0].port == 8080
    await run(disco.delete_namespaced_endpoint_slice, "web-abc", "default")
    assert (await run(disco.list_namespaced_endpoint_slice, "default")).items == []


async def test_network_policies(api: client.ApiClient) -> None:
    net = client.NetworkingV1Api(api)
    policy = client.V1NetworkPolicy(
        metadata=client.V1ObjectMeta(name="deny"),
        spec=client.V1NetworkPolicySpec(
            pod_selector=client.V1LabelSelector(match_labels={"app": "web"}),
            policy_types=["Ingress"],
            ingress=[
                client.V1NetworkPolicyIngressRule(
                    _from=[
                        client.V1NetworkPolicyPeer(
                            ip_block=client.V1IPBlock(cidr="10.0.0.0/8", _except=["10.1.0.0/16"])
                        )
                    ],
                    ports=[client.V1NetworkPolicyPort(port=80, protocol="TCP")],
                )
            ],
        ),
    )
    await run(net.create_namespaced_network_policy, "default", policy)
    listed = await run(net.list_network_policy_for_all_namespaces)
    (got,) = listed.items
    assert got.spec.ingress[0]._from[0].ip_block._except == ["10.1.0.0/16"]
    assert got.spec.ingress[0].ports[0].port == 80
    status = await run(net.delete_namespaced_network_policy, "deny", "default")
    assert status["kind"] == "Status"  # this client returns untyped dicts for deletes
    assert status["status"] == "Success"


async def test_nodes_and_namespaces(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    node = client.V1Node(
        metadata=client.V1ObjectMeta(name="n1", labels={"kubernetes.io/hostname": "n1"}),
        spec=client.V1NodeSpec(pod_cidr="10.244.1.0/24"),
    )
    await run(core.create_node, node)
    patch = {"status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}}
    patched = await run(core.patch_node_status, "n1", patch)
    assert patched.status.addresses[0].address == "192.0.2.1"
    nodes = await run(core.list_node, field_selector="metadata.name=n1")
    assert [n.spec.pod_cidr for n in nodes.items] == ["10.244.1.0/24"]
    ns = await run(
        core.create_namespace, client.V1Namespace(metadata=client.V1ObjectMeta(name="t"))
    )
    assert ns.metadata.labels == {"kubernetes.io/metadata.name": "t"}
    assert ns.status.phase == "Active"
    await run(core.delete_namespace, "t")
    assert [n.metadata.name for n in (await run(core.list_namespace)).items] == []


async def test_bearer_token(tmp_path: Path) -> None:
    srv = LabServer(token="t0ken")
    await srv.start()
    try:
        good = await make_client(srv, tmp_path / "good")
        bad = await make_client(srv, tmp_path / "bad", token="wrong")
        try:
            assert (await run(client.CoreV1Api(good).list_node)).items == []
            with pytest.raises(ApiException) as denied:
                await run(client.CoreV1Api(bad).list_node)
            assert denied.value.status == 401
        finally:
            good.close()
            bad.close()
    finally:
        await srv.stop()
