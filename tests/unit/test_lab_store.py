"""The lab API server's object store, used directly (no HTTP)."""

from __future__ import annotations

from typing import Any

import pytest

from kube_router_lab import errors
from kube_router_lab.resources import resource_info
from kube_router_lab.store import LabStore


def pod(name: str, ns: str = "default", **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "labels": labels}, "spec": {}}


@pytest.fixture
def store() -> LabStore:
    return LabStore()


def test_create_sets_metadata(store: LabStore) -> None:
    out = store.create("pods", {"metadata": {"name": "a"}, "spec": {"nodeName": "n"}})
    meta = out["metadata"]
    assert out["kind"] == "Pod"
    assert out["apiVersion"] == "v1"
    assert meta["namespace"] == "default"
    assert meta["resourceVersion"] == "1"
    assert meta["generation"] == 1
    assert len(meta["uid"]) == 36
    assert meta["creationTimestamp"].endswith("Z")
    assert out["status"] == {"phase": "Pending"}
    assert store.resource_version == 1


def test_returned_objects_are_copies(store: LabStore) -> None:
    body = pod("a", app="x")
    out = store.create("pods", body)
    out["metadata"]["labels"]["app"] = "changed"
    body["metadata"]["labels"]["app"] = "changed"
    assert store.get("pods", "default", "a")["metadata"]["labels"] == {"app": "x"}


def test_every_write_bumps_the_global_resource_version(store: LabStore) -> None:
    store.create("pods", pod("a"))
    store.create("namespaces", {"metadata": {"name": "ns1"}})
    lease = store.create(
        "leases", {"metadata": {"name": "l", "namespace": "kube-system"}, "spec": {}}
    )
    assert lease["metadata"]["resourceVersion"] == "3"
    deleted = store.delete("pods", "default", "a")
    assert deleted["metadata"]["resourceVersion"] == "4"
    assert store.resource_version == 4


@pytest.mark.parametrize(
    ("resource", "body", "code", "reason"),
    [
        ("pods", {"metadata": {}}, 422, "Invalid"),
        ("pods", {"metadata": {"name": "Bad_Name"}}, 422, "Invalid"),
        ("services", {"metadata": {"name": "1svc"}}, 422, "Invalid"),
        ("pods", {"kind": "Service", "metadata": {"name": "a"}}, 400, "BadRequest"),
        ("pods", {"metadata": "x"}, 400, "BadRequest"),
        ("pods", {"metadata": {"name": "a"}, "spec": {"x": object()}}, 400, "BadRequest"),
    ],
)
def test_create_rejects(
    store: LabStore, resource: str, body: dict[str, Any], code: int, reason: str
) -> None:
    with pytest.raises(errors.ApiError) as info:
        store.create(resource, body)
    assert (info.value.code, info.value.reason) == (code, reason)
    assert store.resource_version == 0


def test_create_duplicate_is_already_exists(store: LabStore) -> None:
    store.create("pods", pod("a"))
    with pytest.raises(errors.ApiError) as info:
        store.create("pods", pod("a"))
    assert info.value.code == 409
    assert info.value.reason == "AlreadyExists"
    assert info.value.message == 'pods "a" already exists'


def test_generate_name(store: LabStore) -> None:
    out = store.create("pods", {"metadata": {"generateName": "web-"}})
    name = out["metadata"]["name"]
    assert name.startswith("web-")
    assert len(name) == len("web-") + 5


def test_not_found_status(store: LabStore) -> None:
    with pytest.raises(errors.ApiError) as info:
        store.get("endpointslices", "default", "x")
    status = info.value.status()
    assert status["code"] == 404
    assert status["message"] == 'endpointslices.discovery.k8s.io "x" not found'
    assert status["details"] == {"name": "x", "group": "discovery.k8s.io", "kind": "endpointslices"}


def test_update_conflict_on_stale_resource_version(store: LabStore) -> None:
    first = store.create("pods", pod("a"))
    first["metadata"]["labels"] = {"v": "1"}
    store.update("pods", first)
    first["metadata"]["labels"] = {"v": "2"}
    with pytest.raises(errors.ApiError) as info:
        store.update("pods", first)
    assert info.value.code == 409
    assert info.value.reason == "Conflict"
    assert "the object has been modified" in info.value.message


def test_update_without_resource_version_is_unconditional(store: LabStore) -> None:
    store.create("pods", pod("a"))
    out = store.update("pods", pod("a", v="2"))
    assert out["metadata"]["labels"] == {"v": "2"}


def test_noop_update_does_not_bump(store: LabStore) -> None:
    created = store.create("pods", pod("a", app="x"))
    again = store.update("pods", created)
    assert again["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert store.resource_version == 1


def test_generation_bumps_on_spec_change_only(store: LabStore) -> None:
    svc = store.create("services", {"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}})
    svc["metadata"]["labels"] = {"a": "b"}
    svc = store.update("services", svc)
    assert svc["metadata"]["generation"] == 1
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}
    svc = store.update("services", svc)
    assert svc["metadata"]["generation"] == 1
    svc["spec"]["ports"][0]["port"] = 81
    svc = store.update("services", svc)
    assert svc["metadata"]["generation"] == 2


def test_update_keeps_uid_and_creation_timestamp(store: LabStore) -> None:
    created = store.create("pods", pod("a"))
    updated = store.update("pods", pod("a", x="y"))
    for field in ("uid", "creationTimestamp"):
        assert updated["metadata"][field] == created["metadata"][field]


def test_patch_directly(store: LabStore) -> None:
    store.create("pods", pod("a", app="x"))
    out = store.patch("pods", "default", "a", {"metadata": {"labels": {"app": None, "b": "c"}}})
    assert out["metadata"]["labels"] == {"b": "c"}
    out = store.patch("pods", "default", "a", {"status": {"phase": "Running"}}, status=True)
    assert out["status"]["phase"] == "Running"
    # the main resource ignores status changes
    out = store.patch("pods", "default", "a", {"status": {"phase": "Failed"}})
    assert out["status"]["phase"] == "Running"


def test_service_defaults_and_allocation(store: LabStore) -> None:
    a = store.create(
        "services",
        {"metadata": {"name": "a"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}},
    )
    b = store.create("services", {"metadata": {"name": "b"}, "spec": {"ports": [{"port": 53}]}})
    spec_a, spec_b = a["spec"], b["spec"]
    assert spec_a["clusterIP"] != spec_b["clusterIP"]
    assert spec_a["clusterIPs"] == [spec_a["clusterIP"]]
    assert spec_a["ports"][0] == {
        "port": 80,
        "protocol": "TCP",
        "targetPort": 80,
        "nodePort": 30000,
    }
    assert "nodePort" not in spec_b["ports"][0]
    assert spec_b["type"] == "ClusterIP"
    assert spec_b["sessionAffinity"] == "None"
    # an update without the allocated values keeps them
    updated = store.update(
        "services",
        {"metadata": {"name": "a"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}},
    )
    assert updated["spec"]["clusterIP"] == spec_a["clusterIP"]
    assert updated["spec"]["ports"][0]["nodePort"] == 30000


def test_service_cluster_ip_taken(store: LabStore) -> None:
    store.create("services", {"metadata": {"name": "a"}, "spec": {"clusterIP": "10.96.0.20"}})
    with pytest.raises(errors.ApiError) as info:
        store.create("services", {"metadata": {"name": "b"}, "spec": {"clusterIP": "10.96.0.20"}})
    assert info.value.code == 422
    store.delete("services", "default", "a")
    store.create("services", {"metadata": {"name": "b"}, "spec": {"clusterIP": "10.96.0.20"}})


def test_headless_and_external_name_services(store: LabStore) -> None:
    headless = store.create("services", {"metadata": {"name": "h"}, "spec": {"clusterIP": "None"}})
    assert headless["spec"]["clusterIPs"] == ["None"]
    ext = store.create(
        "services",
        {"metadata": {"name": "e"}, "spec": {"type": "ExternalName", "externalName": "x.org"}},
    )
    assert "clusterIP" not in ext["spec"]


def test_namespace_label_and_cascading_delete(store: LabStore) -> None:
    ns = store.create("namespaces", {"metadata": {"name": "team", "namespace": "ignored"}})
    assert ns["metadata"]["labels"] == {"kubernetes.io/metadata.name": "team"}
    assert "namespace" not in ns["metadata"]
    assert ns["status"] == {"phase": "Active"}
    store.create("pods", pod("a", ns="team"))
    store.create("pods", pod("a", ns="other"))
    store.delete("namespaces", None, "team")
    assert [p["metadata"]["namespace"] for p in store.list_objects("pods")] == ["other"]


def test_list_objects_with_selectors(store: LabStore) -> None:
    store.create("pods", pod("a", app="web"))
    store.create("pods", pod("b", app="db"))
    store.create("pods", pod("c", ns="z", app="web"))
    names = [p["metadata"]["name"] for p in store.list_objects("pods", label_selector="app=web")]
    assert names == ["a", "c"]
    only = store.list_objects("pods", "default", field_selector="metadata.name!=a")
    assert [p["metadata"]["name"] for p in only] == ["b"]
    with pytest.raises(errors.ApiError) as info:
        store.list_objects("pods", field_selector="spec.bogus=1")
    assert info.value.code == 400


def test_load_bulk(store: LabStore) -> None:
    store.load("pods", (pod(f"p{i}", ns=f"ns{i % 3}") for i in range(30)))
    assert store.resource_version == 30
    assert len(store.list_objects("pods", "ns1")) == 10
    # load overwrites existing objects and keeps their uid
    uid = store.get("pods", "ns0", "p0")["metadata"]["uid"]
    store.load("pods", [pod("p0", ns="ns0", v="2")])
    again = store.get("pods", "ns0", "p0")
    assert again["metadata"]["uid"] == uid
    assert again["metadata"]["labels"] == {"v": "2"}
    assert store.resource_version == 31


def test_load_keeps_given_uid(store: LabStore) -> None:
    store.load("nodes", [{"metadata": {"name": "n1", "uid": "u-1"}}])
    assert store.get("nodes", None, "n1")["metadata"]["uid"] == "u-1"


def test_pagination_snapshot_and_expiry(store: LabStore) -> None:
    info = resource_info("pods")
    store.load("pods", (pod(f"p{i:02d}") for i in range(5)))
    page = store.list_page(info, None, None, limit=2)
    assert len(page.items) == 2
    assert page.remaining == 3
    store.create("pods", pod("p99"))  # not seen: pages come from the first page's snapshot
    rest = store.list_page(info, None, None, limit=2, continue_token=page.continue_token)
    last = store.list_page(info, None, None, limit=2, continue_token=rest.continue_token)
    assert (len(rest.items), len(last.items), last.continue_token) == (2, 1, "")
    assert page.rv == rest.rv == last.rv == 5
    with pytest.raises(errors.ApiError) as info_err:
        store.list_page(info, None, None, limit=2, continue_token=rest.continue_token)
    assert info_err.value.code == 410
    with pytest.raises(errors.ApiError) as bad:
        store.list_page(info, None, None, limit=2, continue_token="!!not-a-token")
    assert bad.value.code == 400


def test_compact_expires_continue_tokens(store: LabStore) -> None:
    info = resource_info("pods")
    store.load("pods", (pod(f"p{i}") for i in range(3)))
    page = store.list_page(info, None, None, limit=1)
    store.compact()
    with pytest.raises(errors.ApiError) as info_err:
        store.list_page(info, None, None, limit=1, continue_token=page.continue_token)
    assert info_err.value.reason == "Expired"


def test_delete_preconditions(store: LabStore) -> None:
    store.create("pods", pod("a"))
    info = resource_info("pods")
    with pytest.raises(errors.ApiError) as err:
        store.delete_object(info, "default", "a", {"uid": "other"})
    assert err.value.code == 409
    assert "Precondition failed" in err.value.message
    store.delete_object(info, "default", "a", {"resourceVersion": "1"})


def test_cluster_scoped_get_ignores_namespace(store: LabStore) -> None:
    store.create("nodes", {"metadata": {"name": "n1"}})
    assert store.get("nodes", "whatever", "n1")["metadata"]["name"] == "n1"


def test_unknown_resource() -> None:
    with pytest.raises(KeyError, match="unknown lab resource"):
        LabStore().create("deployments", {"metadata": {"name": "x"}})
