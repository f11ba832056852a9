"""Store and indexes."""

from __future__ import annotations

from kube_router.k8s import models
from kube_router.k8s.informers import SERVICE_NAME_INDEX, endpointslice_service
from kube_router.k8s.store import Store


def _slice(name: str, svc: str | None, ns: str = "default") -> models.EndpointSlice:
    labels = {"kubernetes.io/service-name": svc} if svc else {}
    return models.EndpointSlice(metadata=models.SliceMeta(name=name, namespace=ns, labels=labels))


def test_index_follows_upserts_and_removals() -> None:
    store: Store[models.EndpointSlice] = Store({SERVICE_NAME_INDEX: endpointslice_service})
    store.upsert(_slice("a-1", "a"))
    store.upsert(_slice("a-2", "a"))
    store.upsert(_slice("b-1", "b", ns="x"))
    store.upsert(_slice("orphan", None))
    assert sorted(s.metadata.name for s in store.by_index(SERVICE_NAME_INDEX, "default/a")) == [
        "a-1",
        "a-2",
    ]
    assert [s.metadata.name for s in store.by_index(SERVICE_NAME_INDEX, "x/b")] == ["b-1"]
    # relabel a-2 to service b in default
    old = store.upsert(_slice("a-2", "b"))
    assert old is not None and old.metadata.labels["kubernetes.io/service-name"] == "a"
    assert [s.metadata.name for s in store.by_index(SERVICE_NAME_INDEX, "default/a")] == ["a-1"]
    store.remove("default/a-1")
    assert store.by_index(SERVICE_NAME_INDEX, "default/a") == []
    assert "default/a" not in store.index_values(SERVICE_NAME_INDEX)
    assert len(store) == 3 and "default/orphan" in store
    assert store.remove("default/missing") is None


def test_cluster_scoped_keys() -> None:
    store: Store[models.Node] = Store()
    store.upsert(models.Node(metadata=models.AnnotatedMeta(name="n1")))
    assert store.get("n1") is not None and store.key_list() == ["n1"]
