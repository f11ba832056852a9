"""What a lab cluster is made of: its spec and its nodes (plain values; see ``cluster.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kube_router_lab import underlay
from kube_router_lab.underlay import Host, UnderlaySpec

API_PORT = 6443


DEFAULT_CONF_NAME = "10-kuberouter.conflist"


@dataclass(frozen=True)
class ClusterSpec:
    """What :class:`Cluster` builds. ``pod_cidr``/``pod_cidr6`` are formats of the node's
    1-based index ``i``; ``annotations`` and ``labels`` map node names to extra metadata."""

    prefix: str
    nodes: int = 3
    two_subnets: bool = False
    split: int | None = None  # nodes on subnet A with two subnets (default: half, rounded up)
    ipv6: bool = False
    subnets: tuple[str, str] = underlay.DEFAULT_SUBNETS
    subnets6: tuple[str, str] = underlay.DEFAULT_SUBNETS6
    pod_cidr: str = "10.244.{i}.0/24"
    pod_cidr6: str = "fd00:244:{i}::/64"
    api_port: int = API_PORT
    cni_conf_name: str = DEFAULT_CONF_NAME
    annotations: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def underlay(self) -> UnderlaySpec:
        return UnderlaySpec(
            self.prefix,
            self.nodes,
            self.two_subnets,
            self.split,
            self.ipv6,
            self.subnets,
            self.subnets6,
        )


@dataclass(frozen=True)
class ClusterNode:
    """A node: its namespace and underlay address, pod CIDRs and per-node paths."""

    index: int
    host: Host
    pod_cidrs: tuple[str, ...]
    dir: Path
    cni_conf: Path

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def netns(self) -> str:
        return self.host.netns

    @property
    def ip(self) -> str:
        return self.host.ip

    @property
    def ip6(self) -> str | None:
        return self.host.ip6

    @property
    def ipam_dir(self) -> Path:
        return self.dir / "ipam"

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    def env(self) -> dict[str, str]:
        """What the node's agent gets on top of the caller's environment."""
        return {"NODE_NAME": self.name, "KUBE_ROUTER_CNI_CONF_FILE": str(self.cni_conf)}
