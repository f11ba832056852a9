"""Builders shared by the routing controller's pure-logic tests (test_routing_*.py)."""

from __future__ import annotations

from typing import Any

import msgspec

from kube_router import node as node_info
from kube_router.config import Config, parse
from kube_router.controllers.routing.compile.settings import RoutingSettings, build_settings
from kube_router.k8s.models import EndpointSlice, Node, Service


def make_node(
    name: str,
    *ips: str,
    annotations: dict[str, str] | None = None,
    pod_cidrs: list[str] | None = None,
) -> Node:
    """A Node with InternalIPs ``ips`` (the first is the primary IP)."""
    body: dict[str, Any] = {
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {"podCIDRs": pod_cidrs or [], "podCIDR": (pod_cidrs or [""])[0]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip} for ip in ips]},
    }
    return msgspec.convert(body, Node)


def make_config(*argv: str) -> Config:
    return parse(list(argv), env={})


def make_settings(node: Node, *argv: str) -> RoutingSettings:
    config = make_config(*argv)
    identity = node_info.identify(node, config.enable_ipv4, config.enable_ipv6)
    return build_settings(config, identity, node)


def make_service(
    spec: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    ingress: list[dict[str, str]] | None = None,
) -> Service:
    body: dict[str, Any] = {
        "metadata": {"name": "web", "namespace": "x", "annotations": annotations or {}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10"],
            "ports": [{"name": "http", "protocol": "TCP", "port": 80}],
            **(spec or {}),
        },
        "status": {"loadBalancer": {"ingress": ingress or []}},
    }
    return msgspec.convert(body, Service)


def make_slice(
    *endpoints: tuple[str, str | None], annotations: dict[str, str] | None = None
) -> EndpointSlice:
    """A slice of ``(address, nodeName)`` endpoints (nodeName None: not set)."""
    eps: list[dict[str, Any]] = []
    for address, node_name in endpoints:
        ep: dict[str, Any] = {"addresses": [address], "conditions": {"ready": True}}
        if node_name is not None:
            ep["nodeName"] = node_name
        eps.append(ep)
    body = {
        "metadata": {
            "name": "web-abc",
            "namespace": "x",
            "labels": {"kubernetes.io/service-name": "web"},
            "annotations": annotations or {},
        },
        "addressType": "IPv4",
        "endpoints": eps,
    }
    return msgspec.convert(body, EndpointSlice)
