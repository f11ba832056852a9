"""Slim typed models: only the fields the controllers read.

List and watch bytes are decoded straight into these structs with msgspec (the way client-go's
transform functions strip objects), so a 50,000-pod cluster costs a fraction of full objects.
Unknown fields are ignored by the decoder. Names follow Kubernetes' JSON spelling through
``rename="camel"``, with explicit names where Kubernetes capitalises acronyms (``podIP``).
"""

from __future__ import annotations

import msgspec


class _Base(msgspec.Struct, rename="camel", omit_defaults=True, gc=False):
    """Common options: camelCase JSON names, no GC tracking (no cycles), defaults omitted."""


class OwnerReference(_Base):
    kind: str = ""
    name: str = ""
    uid: str = ""


class ObjectMeta(_Base):
    """Metadata every kind keeps. Kinds whose annotations matter use AnnotatedMeta."""

    name: str = ""
    namespace: str = ""
    resource_version: str = ""
    labels: dict[str, str] = {}


class AnnotatedMeta(ObjectMeta):
    """Nodes and Services: kube-router's annotations live here."""

    annotations: dict[str, str] = {}


class SliceMeta(AnnotatedMeta):
    """EndpointSlices: the service is found by label, then owner reference, then generateName."""

    generate_name: str = ""
    owner_references: list[OwnerReference] = []


class ListMeta(_Base):
    resource_version: str = ""
    # "continue" is a Python keyword.
    continue_: str = msgspec.field(default="", name="continue")


class LabelSelectorRequirement(_Base):
    key: str = ""
    operator: str = ""
    values: list[str] = []


class LabelSelector(_Base):
    match_labels: dict[str, str] = {}
    match_expressions: list[LabelSelectorRequirement] = []


# --- Node ---------------------------------------------------------------------------------------


class NodeAddress(_Base):
    type: str = ""
    address: str = ""


class NodeSpec(_Base):
    pod_cidr: str = msgspec.field(default="", name="podCIDR")
    pod_cidrs: list[str] = msgspec.field(default_factory=list, name="podCIDRs")
    provider_id: str = msgspec.field(default="", name="providerID")


class NodeStatus(_Base):
    addresses: list[NodeAddress] = []


class Node(_Base):
    metadata: AnnotatedMeta = msgspec.field(default_factory=AnnotatedMeta)
    spec: NodeSpec = msgspec.field(default_factory=NodeSpec)
    status: NodeStatus = msgspec.field(default_factory=NodeStatus)


# --- Namespace ----------------------------------------------------------------------------------


class Namespace(_Base):
    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)


# --- Pod ----------------------------------------------------------------------------------------


class ContainerPort(_Base):
    name: str = ""
    container_port: int = 0
    protocol: str = "TCP"


class Container(_Base):
    name: str = ""
    ports: list[ContainerPort] = []


class PodSpec(_Base):
    node_name: str = ""
    host_network: bool = False
    containers: list[Container] = []
    termination_grace_period_seconds: int | None = None


class PodIP(_Base):
    ip: str = ""


class ContainerStatus(_Base):
    container_id: str = msgspec.field(default="", name="containerID")


class PodStatus(_Base):
    phase: str = ""
    pod_ip: str = msgspec.field(default="", name="podIP")
    pod_ips: list[PodIP] = msgspec.field(default_factory=list, name="podIPs")
    host_ip: str = msgspec.field(default="", name="hostIP")
    container_statuses: list[ContainerStatus] = []


class Pod(_Base):
    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)
    spec: PodSpec = msgspec.field(default_factory=PodSpec)
    status: PodStatus = msgspec.field(default_factory=PodStatus)


# --- Service ------------------------------------------------------------------------------------


class ServicePort(_Base):
    name: str = ""
    protocol: str = "TCP"
    port: int = 0
    target_port: int | str | None = None
    node_port: int = 0


class ClientIPConfig(_Base):
    timeout_seconds: int | None = None


class SessionAffinityConfig(_Base):
    client_ip: ClientIPConfig | None = msgspec.field(default=None, name="clientIP")


class ServiceSpec(_Base):
    type: str = "ClusterIP"
    selector: dict[str, str] = {}
    cluster_ip: str = msgspec.field(default="", name="clusterIP")
    cluster_ips: list[str] = msgspec.field(default_factory=list, name="clusterIPs")
    external_ips: list[str] = msgspec.field(default_factory=list, name="externalIPs")
    ports: list[ServicePort] = []
    session_affinity: str = "None"
    session_affinity_config: SessionAffinityConfig | None = None
    external_traffic_policy: str = ""
    internal_traffic_policy: str = ""
    health_check_node_port: int = 0
    ip_families: list[str] = []
    ip_family_policy: str = ""
    load_balancer_class: str | None = None
    external_name: str = ""


class LoadBalancerIngress(_Base):
    ip: str = ""
    hostname: str = ""
    ip_mode: str = ""


class LoadBalancerStatus(_Base):
    ingress: list[LoadBalancerIngress] = []


class ServiceStatus(_Base):
    load_balancer: LoadBalancerStatus = msgspec.field(default_factory=LoadBalancerStatus)


class Service(_Base):
    metadata: AnnotatedMeta = msgspec.field(default_factory=AnnotatedMeta)
    spec: ServiceSpec = msgspec.field(default_factory=ServiceSpec)
    status: ServiceStatus = msgspec.field(default_factory=ServiceStatus)


# --- EndpointSlice ------------------------------------------------------------------------------


class EndpointConditions(_Base):
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None


class Endpoint(_Base):
    addresses: list[str] = []
    conditions: EndpointConditions = msgspec.field(default_factory=EndpointConditions)
    node_name: str | None = None


class EndpointPort(_Base):
    name: str | None = None
    port: int | None = None
    protocol: str = "TCP"


class EndpointSlice(_Base):
    metadata: SliceMeta = msgspec.field(default_factory=SliceMeta)
    address_type: str = ""
    endpoints: list[Endpoint] = []
    ports: list[EndpointPort] = []


# --- NetworkPolicy ------------------------------------------------------------------------------


class IPBlock(_Base):
    cidr: str = ""
    # "except" is a Python keyword.
    except_: list[str] = msgspec.field(default_factory=list, name="except")


class NetworkPolicyPeer(_Base):
    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


class NetworkPolicyPort(_Base):
    protocol: str = "TCP"
    port: int | str | None = None
    end_port: int | None = None


class NetworkPolicyIngressRule(_Base):
    from_: list[NetworkPolicyPeer] = msgspec.field(default_factory=list, name="from")
    ports: list[NetworkPolicyPort] = []


class NetworkPolicyEgressRule(_Base):
    to: list[NetworkPolicyPeer] = []
    ports: list[NetworkPolicyPort] = []


class NetworkPolicySpec(_Base):
    pod_selector: LabelSelector = msgspec.field(default_factory=LabelSelector)
    policy_types: list[str] = []
    ingress: list[NetworkPolicyIngressRule] = []
    egress: list[NetworkPolicyEgressRule] = []


class NetworkPolicy(_Base):
    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)
    spec: NetworkPolicySpec = msgspec.field(default_factory=NetworkPolicySpec)


# --- Lease --------------------------------------------------------------------------------------


class LeaseSpec(_Base):
    holder_identity: str | None = None
    lease_duration_seconds: int | None = None
    acquire_time: str | None = None
    renew_time: str | None = None
    lease_transitions: int | None = None


class Lease(_Base):
    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)
    spec: LeaseSpec = msgspec.field(default_factory=LeaseSpec)


# --- Status (API errors) ------------------------------------------------------------------------


class Status(_Base):
    kind: str = ""
    status: str = ""
    message: str = ""
    reason: str = ""
    code: int = 0


KubeObject = Node | Namespace | Pod | Service | EndpointSlice | NetworkPolicy | Lease


def object_key(meta: ObjectMeta) -> str:
    """Return the cache key: ``namespace/name``, or ``name`` for cluster-scoped objects."""
    return f"{meta.namespace}/{meta.name}" if meta.namespace else meta.name
