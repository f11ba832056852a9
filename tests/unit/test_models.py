"""Slim models decode every field the controllers read, by Kubernetes' exact JSON names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from kube_router.k8s import models

FIXTURES = yaml.safe_load((Path(__file__).parents[1] / "testdata/k8s/objects.yaml").read_text())
MODELS = {
    "Node": models.Node,
    "Pod": models.Pod,
    "Service": models.Service,
    "EndpointSlice": models.EndpointSlice,
    "NetworkPolicy": models.NetworkPolicy,
}


def _decode(kind: str) -> Any:
    (obj,) = [o for o in FIXTURES if o["kind"] == kind]
    return msgspec.json.decode(msgspec.json.encode(obj), type=MODELS[kind])


@pytest.mark.parametrize(
    ("kind", "path", "expected"),
    [
        ("Node", "metadata.annotations['kube-router.io/node.asn']", "64513"),
        ("Node", "spec.pod_cidr", "10.242.1.0/24"),
        ("Node", "spec.pod_cidrs[1]", "2001:db8:42:1001::/64"),
        ("Node", "spec.provider_id", "aws:///eu-west-1a/i-0123456789"),
        ("Node", "status.addresses[1].address", "2001:db8:ca2:2::21"),
        ("Pod", "spec.node_name", "worker-1"),
        ("Pod", "spec.termination_grace_period_seconds", 45),
        ("Pod", "spec.containers[0].ports[0].container_port", 8080),
        ("Pod", "spec.containers[0].ports[1].protocol", "TCP"),
        ("Pod", "status.host_ip", "10.241.0.21"),
        ("Pod", "status.pod_ip", "10.242.1.7"),
        ("Pod", "status.pod_ips[1].ip", "2001:db8:42:1001::7"),
        ("Pod", "status.container_statuses[0].container_id", "containerd://abc123"),
        ("Service", "spec.cluster_ips", ["10.96.0.20", "fd00:96::20"]),
        ("Service", "spec.external_ips", ["203.0.113.5"]),
        ("Service", "spec.ports[0].target_port", "http"),
        ("Service", "spec.ports[0].node_port", 30080),
        ("Service", "spec.session_affinity_config.client_ip.timeout_seconds", 600),
        ("Service", "spec.external_traffic_policy", "Local"),
        ("Service", "spec.health_check_node_port", 31999),
        ("Service", "spec.ip_family_policy", "PreferDualStack"),
        ("Service", "spec.load_balancer_class", "kube-router"),
        ("Service", "status.load_balancer.ingress[0].ip_mode", "VIP"),
        ("Service", "metadata.annotations['kube-router.io/service.dsr']", "tunnel"),
        ("EndpointSlice", "address_type", "IPv4"),
        ("EndpointSlice", "metadata.generate_name", "web-"),
        ("EndpointSlice", "metadata.owner_references[0].name", "web"),
        ("EndpointSlice", "endpoints[0].conditions.serving", True),
        ("EndpointSlice", "endpoints[0].conditions.ready", False),
        ("EndpointSlice", "endpoints[0].node_name", "worker-1"),
        ("NetworkPolicy", "spec.pod_selector.match_expressions[0].operator", "In"),
        (
            "NetworkPolicy",
            "spec.ingress[0].from_[0].namespace_selector.match_labels",
            {"team": "a"},
        ),
        ("NetworkPolicy", "spec.ingress[0].from_[1].ip_block.except_", ["10.1.0.0/16"]),
        ("NetworkPolicy", "spec.ingress[0].ports[0].end_port", 8080),
        ("NetworkPolicy", "spec.ingress[0].ports[1].port", "dns"),
        ("NetworkPolicy", "spec.egress[0].to[0].pod_selector", models.LabelSelector()),
    ],
)
def test_field(kind: str, path: str, expected: Any) -> None:
    assert eval(f"obj.{path}", {}, {"obj": _decode(kind)}) == expected


def test_defaults_when_absent() -> None:
    svc = msgspec.json.decode(b'{"metadata":{"name":"s"}}', type=models.Service)
    assert (svc.spec.type, svc.spec.session_affinity, svc.spec.load_balancer_class) == (
        "ClusterIP",
        "None",
        None,
    )
    es = msgspec.json.decode(
        b'{"endpoints":[{"addresses":["1.2.3.4"]}]}', type=models.EndpointSlice
    )
    assert es.endpoints[0].conditions.ready is None


def test_object_key() -> None:
    assert models.object_key(models.ObjectMeta(name="n")) == "n"
    assert models.object_key(models.ObjectMeta(name="p", namespace="x")) == "x/p"
