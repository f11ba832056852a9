"""Defaulting the lab server applies on writes, a small subset of the real server's.

* Services: `type` ClusterIP, `sessionAffinity` None, port `protocol` TCP and `targetPort` =
  `port`, traffic policies Cluster, single-stack IPv4, a cluster IP allocated from the service
  CIDR (sequentially, not randomly), node ports for NodePort/LoadBalancer services and a health
  check node port for `externalTrafficPolicy: Local` load balancers. On update, allocated values
  missing from the new object are copied from the old one, as the real server does.
* Namespaces: the `kubernetes.io/metadata.name` label and `status.phase: Active`.
* Pods: `status.phase: Pending` when created without a status.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Collection
from typing import Any

import msgspec

from kube_router_lab import errors
from kube_router_lab.resources import ResourceInfo, resource_info

__all__ = ["Defaulter"]

Key = tuple[str, str]
_NS_LABEL = "kubernetes.io/metadata.name"


class _Allocator:
    """Sequential allocation of ints in [low, high] with an owner per value."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high
        self.next = low
        self.owner: dict[int, Key] = {}

    def claim(self, value: int, owner: Key) -> bool:
        """Record `value` for `owner`; False when someone else holds it."""
        held = self.owner.get(value)
        if held is not None and held != owner:
            return False
        self.owner[value] = owner
        return True

    def allocate(self, owner: Key) -> int | None:
        size = self.high - self.low + 1
        for _ in range(size):
            value = self.next
            self.next = self.low if value >= self.high else value + 1
            if value not in self.owner:
                self.owner[value] = owner
                return value
        return None

    def release_all(self, owner: Key, keep: Collection[int] = ()) -> None:
        for value in [v for v, o in self.owner.items() if o == owner and v not in keep]:
            del self.owner[value]

    def in_range(self, value: int) -> bool:
        return self.low <= value <= self.high


class Defaulter:
    """Applies defaults and allocates service cluster IPs and node ports."""

    def __init__(
        self,
        service_cidr: str = "10.96.0.0/12",
        node_port_range: tuple[int, int] = (30000, 32767),
    ) -> None:
        net = ipaddress.IPv4Network(service_cidr)
        base = int(net.network_address)
        # Skip .1 (kubernetes.default) and a few more, like the real static range.
        self._ips = _Allocator(base + 10, int(net.broadcast_address) - 1)
        self._ports = _Allocator(*node_port_range)
        self._services = resource_info("services")

    def prepare(self, info: ResourceInfo, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        """Default `obj` (owned, mutated) before it is stored; `old` is the stored version."""
        if info.name == "services":
            self._service(obj, old)
        elif info.name == "namespaces":
            meta = obj["metadata"]
            meta["labels"] = {**(meta.get("labels") or {}), _NS_LABEL: meta["name"]}
            status = obj.setdefault("status", {})
            if isinstance(status, dict):
                status.setdefault("phase", "Active")
        elif info.name == "pods" and old is None and "status" not in obj:
            obj["status"] = {"phase": "Pending"}

    def release(self, info: ResourceInfo, obj: dict[str, Any]) -> None:
        """Free what a deleted object held."""
        if info.name == "services":
            key = _key(obj)
            self._ips.release_all(key)
            self._ports.release_all(key)

    def restore(self, info: ResourceInfo, old: dict[str, Any]) -> None:
        """Re-claim exactly what stored `old` holds, after a failed update of it."""
        self.release(info, old)
        self.prepare(info, copy.deepcopy(old), None)

    # -- services ---------------------------------------------------------------------------

    def _service(self, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        spec = obj.get("spec")
        # Own copy: the object may share nested values with the caller's input.
        spec = obj["spec"] = _own_copy(spec) if spec else {}
        if not isinstance(spec, dict):
            raise errors.bad_request("spec must be a JSON object")
        if old is not None:
            _copy_allocated(spec, old.get("spec") or {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        for port in spec.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")
                if "port" in port:
                    port.setdefault("targetPort", port["port"])
        key = _key(obj)
        if spec["type"] == "ExternalName":
            for field in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                spec.pop(field, None)
            self.release(self._services, obj)
            return
        spec.setdefault("internalTrafficPolicy", "Cluster")
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        obj.setdefault("status", {"loadBalancer": {}})
        self._cluster_ip(spec, key, obj["metadata"]["name"])
        external = spec["type"] in ("NodePort", "LoadBalancer")
        if external:
            spec.setdefault("externalTrafficPolicy", "Cluster")
        self._node_ports(spec, key, obj["metadata"]["name"], external)

    def _invalid(self, name: str, field: str, detail: str) -> errors.ApiError:
        return errors.invalid(self._services, name, field, "FieldValueInvalid", detail)

    def _cluster_ip(self, spec: dict[str, Any], key: Key, name: str) -> None:
        ip = spec.get("clusterIP") or (spec.get("clusterIPs") or [None])[0]
        if ip == "None":
            spec["clusterIP"], spec["clusterIPs"] = "None", ["None"]
            return
        if ip:
            try:
                value = int(ipaddress.IPv4Address(ip))
            except ValueError as err:
                raise self._invalid(
                    name, "spec.clusterIP", f"Invalid value: {ip!r}: {err}"
                ) from err
            if self._ips.in_range(value) and not self._ips.claim(value, key):
                detail = f'Invalid value: "{ip}": provided IP is already allocated'
                raise self._invalid(name, "spec.clusterIPs", detail)
            self._ips.release_all(key, keep={value})
        else:
            allocated = self._ips.allocate(key)
            if allocated is None:
                raise self._invalid(name, "spec.clusterIPs", "range is full")
            ip = str(ipaddress.IPv4Address(allocated))
        spec["clusterIP"], spec["clusterIPs"] = ip, [ip]

    def _node_ports(self, spec: dict[str, Any], key: Key, name: str, external: bool) -> None:
        wanted: set[int] = set()
        allocate = external and spec.get("allocateLoadBalancerNodePorts", True)
        for port in spec.get("ports") or []:
            if not isinstance(port, dict):
                continue
            if not external:
                port.pop("nodePort", None)
            elif port.get("nodePort"):
                wanted.add(self._claim_port(int(port["nodePort"]), key, name))
            elif allocate:
                port["nodePort"] = self._new_port(key, name)
                wanted.add(port["nodePort"])
        local_lb = spec["type"] == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local"
        if not local_lb:
            spec.pop("healthCheckNodePort", None)
        elif spec.get("healthCheckNodePort"):
            wanted.add(self._claim_port(int(spec["healthCheckNodePort"]), key, name))
        else:
            spec["healthCheckNodePort"] = self._new_port(key, name)
            wanted.add(spec["healthCheckNodePort"])
        self._ports.release_all(key, keep=wanted)

    def _claim_port(self, value: int, key: Key, name: str) -> int:
        if self._ports.in_range(value) and not self._ports.claim(value, key):
            detail = f"Invalid value: {value}: provided port is already allocated"
            raise self._invalid(name, "spec.ports[].nodePort", detail)
        return value

    def _new_port(self, key: Key, name: str) -> int:
        value = self._ports.allocate(key)
        if value is None:
            raise self._invalid(name, "spec.ports[].nodePort", "node port range is full")
        return value


def _own_copy(value: Any) -> Any:
    try:
        return msgspec.json.decode(msgspec.json.encode(value))
    except (msgspec.EncodeError, TypeError, ValueError) as err:
        raise errors.bad_request(f"the object is not valid JSON data: {err}") from err


def _key(obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    return (meta.get("namespace") or "", meta["name"])


def _copy_allocated(spec: dict[str, Any], old: dict[str, Any]) -> None:
    """Keep allocated values the client left out of an update (real `patchAllocatedValues`)."""
    if not spec.get("clusterIP") and not spec.get("clusterIPs") and old.get("clusterIP"):
        spec["clusterIP"] = old["clusterIP"]
        spec["clusterIPs"] = list(old.get("clusterIPs") or [old["clusterIP"]])
    if not spec.get("healthCheckNodePort") and old.get("healthCheckNodePort"):
        spec["healthCheckNodePort"] = old["healthCheckNodePort"]
    old_ports = {
        (p.get("port"), p.get("protocol", "TCP")): p.get("nodePort")
        for p in old.get("ports") or []
        if isinstance(p, dict)
    }
    for port in spec.get("ports") or []:
        if isinstance(port, dict) and not port.get("nodePort"):
            node_port = old_ports.get((port.get("port"), port.get("protocol", "TCP")))
            if node_port:
                port["nodePort"] = node_port
