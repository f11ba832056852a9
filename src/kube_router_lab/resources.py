"""The resource types the lab API server knows, with their real API coordinates.

Every resource is described once here; the store, the HTTP routes and the discovery documents are
all derived from this table, so adding a resource is a one-line change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["RESOURCES", "ResourceInfo", "groups", "lookup", "resource_info"]

_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True, slots=True)
class ResourceInfo:
    """One API resource (plural name, group, version, kind, scope)."""

    name: str
    group: str
    version: str
    kind: str
    namespaced: bool
    singular: str
    short_names: tuple[str, ...] = ()
    has_status: bool = False
    # Extra field selectors beyond metadata.name / metadata.namespace (dotted paths).
    field_labels: tuple[str, ...] = ()
    # How object names are validated: "subdomain", "label" (RFC 1123) or "label1035".
    name_format: str = "subdomain"
    verbs: tuple[str, ...] = field(default=_VERBS)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """`pods` or `endpointslices.discovery.k8s.io`, as the real server names it in errors."""
        return f"{self.name}.{self.group}" if self.group else self.name

    @property
    def field_paths(self) -> tuple[str, ...]:
        """Every path a field selector may use on this resource."""
        return ("metadata.name", "metadata.namespace", *self.field_labels)

    @property
    def split_field_labels(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """(path, path parts) of the resource-specific selectable fields."""
        return tuple((path, tuple(path.split("."))) for path in self.field_labels)

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def item_prefix(self) -> bytes:
        """JSON prefix turning an encoded list item (no kind/apiVersion) into a full object."""
        return f'{{"kind":"{self.kind}","apiVersion":"{self.api_version}",'.encode()


RESOURCES: tuple[ResourceInfo, ...] = (
    ResourceInfo(
        "namespaces",
        "",
        "v1",
        "Namespace",
        namespaced=False,
        singular="namespace",
        short_names=("ns",),
        has_status=True,
        field_labels=("status.phase",),
        name_format="label",
    ),
    ResourceInfo(
        "nodes",
        "",
        "v1",
        "Node",
        namespaced=False,
        singular="node",
        short_names=("no",),
        has_status=True,
        field_labels=("spec.unschedulable",),
    ),
    ResourceInfo(
        "pods",
        "",
        "v1",
        "Pod",
        namespaced=True,
        singular="pod",
        short_names=("po",),
        has_status=True,
        field_labels=(
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ),
    ),
    ResourceInfo(
        "services",
        "",
        "v1",
        "Service",
        namespaced=True,
        singular="service",
        short_names=("svc",),
        has_status=True,
        field_labels=("spec.clusterIP", "spec.type"),
        name_format="label1035",
    ),
    ResourceInfo(
        "endpointslices",
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        namespaced=True,
        singular="endpointslice",
        field_labels=("addressType",),
    ),
    ResourceInfo(
        "networkpolicies",
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        namespaced=True,
        singular="networkpolicy",
        short_names=("netpol",),
    ),
    ResourceInfo(
        "leases",
        "coordination.k8s.io",
        "v1",
        "Lease",
        namespaced=True,
        singular="lease",
    ),
)

_BY_NAME = {info.name: info for info in RESOURCES}
_BY_PATH = {(info.group, info.version, info.name): info for info in RESOURCES}


def resource_info(resource: str) -> ResourceInfo:
    """The resource named `resource` (plural, e.g. "pods"); KeyError names the known ones."""
    try:
        return _BY_NAME[resource]
    except KeyError:
        known = ", ".join(sorted(_BY_NAME))
        raise KeyError(f"unknown lab resource {resource!r} (known: {known})") from None


def lookup(group: str, version: str, resource: str) -> ResourceInfo | None:
    """The resource served at /api(s)/{group}/{version}/{resource}, or None."""
    return _BY_PATH.get((group, version, resource))


def groups() -> dict[str, list[ResourceInfo]]:
    """Resources grouped by API group (core group is "")."""
    out: dict[str, list[ResourceInfo]] = {}
    for info in RESOURCES:
        out.setdefault(info.group, []).append(info)
    return out
