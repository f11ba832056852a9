"""The API resources the agent reads and writes, with their REST paths and slim model types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kube_router.k8s import models


@dataclass(frozen=True)
class Resource:
    """One API resource: enough to build its REST paths and decode it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    model: type[Any]

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def _prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def collection_path(self, namespace: str | None = None) -> str:
        """Path of the collection, across namespaces when ``namespace`` is None."""
        if self.namespaced and namespace:
            return f"{self._prefix()}/namespaces/{namespace}/{self.plural}"
        return f"{self._prefix()}/{self.plural}"

    def object_path(self, namespace: str | None, name: str, subresource: str = "") -> str:
        """Path of one object, optionally of one of its subresources (``status``)."""
        path = f"{self.collection_path(namespace)}/{name}"
        return f"{path}/{subresource}" if subresource else path


NODES = Resource("", "v1", "nodes", "Node", False, models.Node)
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", False, models.Namespace)
PODS = Resource("", "v1", "pods", "Pod", True, models.Pod)
SERVICES = Resource("", "v1", "services", "Service", True, models.Service)
ENDPOINTSLICES = Resource(
    "discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True, models.EndpointSlice
)
NETWORKPOLICIES = Resource(
    "networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, models.NetworkPolicy
)
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease", True, models.Lease)

ALL = (NODES, NAMESPACES, PODS, SERVICES, ENDPOINTSLICES, NETWORKPOLICIES, LEASES)
