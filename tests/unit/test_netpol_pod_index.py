"""The pod index: actionable pods by namespace, remembered selections, IP owner counts."""

from __future__ import annotations

import msgspec

from kube_router.controllers.netpol.resolve import PodIndex
from kube_router.k8s import models


def _pod(name: str, ns: str, labels: dict[str, str], ip: str, phase: str = "Running") -> models.Pod:
    return msgspec.convert(
        {
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]},
        },
        models.Pod,
    )


WEB = models.LabelSelector(match_labels={"app": "web"})


def _names(pods: list[models.Pod]) -> list[str]:
    return [p.metadata.name for p in pods]


def test_selection_follows_pod_changes_in_its_namespace_only() -> None:
    index = PodIndex(
        [_pod("a", "x", {"app": "web"}, "10.0.0.1"), _pod("b", "y", {"app": "web"}, "10.0.0.2")]
    )
    assert _names(index.select("x", WEB)) == ["a"]
    remembered_y = index.select("y", WEB)
    index.put(_pod("c", "x", {"app": "web"}, "10.0.0.3"))
    assert _names(index.select("x", WEB)) == ["a", "c"]
    assert index.select("y", WEB) is remembered_y  # y untouched: still the remembered answer
    index.put(_pod("a", "x", {"app": "db"}, "10.0.0.1"))  # relabelled
    assert _names(index.select("x", WEB)) == ["c"]
    index.remove("x", "c")
    assert index.select("x", WEB) == []
    assert index.select("nowhere", WEB) == []


def test_finished_pods_leave_the_index_and_ip_owners_are_counted() -> None:
    index = PodIndex([_pod("a", "x", {}, "10.0.0.1"), _pod("b", "y", {}, "10.0.0.1")])
    assert index.ip_owners == {"10.0.0.1": 2}
    index.put(_pod("a", "x", {}, "10.0.0.1", phase="Succeeded"))
    assert index.ip_owners == {"10.0.0.1": 1}
    assert list(index) == ["x", "y"] and index["x"] == [] and len(index["y"]) == 1
    index.remove("y", "b")
    index.remove("y", "b")  # already gone: nothing happens
    assert index.ip_owners == {}
