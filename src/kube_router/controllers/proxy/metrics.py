"""Upstream's service proxy metrics: per-Service IPVS counters read at scrape time, and timings.

On every scrape :meth:`ProxyMetrics.export` (a :meth:`Metrics.add_scrape_hook` hook) lists the
IPVS services with their counters in one dump and writes, for each one that belongs to a
Service, the ``kube_router_service_*`` families with labels ``svc_namespace``, ``service_name``,
``service_vip``, ``protocol`` (``tcp``, ``udp``, ``sctp``) and ``port`` (the IPVS port: the
NodePort for a NodePort service), then ``kube_router_controller_ipvs_services`` (every IPVS
service on the node, kube-router's or not). The time that takes is observed in
``kube_router_controller_ipvs_metrics_export_time``. When IPVS cannot be listed the error is
logged and none of those families is written, as upstream.

Which IPVS services belong to which Service comes from the controller (:func:`owners_of` builds
it the way upstream does: cluster IPs, external IPs and LoadBalancer IPs on the Service port,
NodePorts on the node's IP only, fwmark (DSR) services never).

The text is written as Go's client writes it (no ``_total`` added to counter names, Go's number
format, families by name and series by labels), so dashboards made for upstream work unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from prometheus_client import Histogram

from kube_router.controllers.proxy.compile import VirtualService
from kube_router.dataplane import ipvs
from kube_router.dataplane.ipvs import Service, ServiceKey, Stats
from kube_router.metrics import NAMESPACE, Metrics, write_family

log = logging.getLogger(__name__)

SERVICE_LABELS: Final = ("svc_namespace", "service_name", "service_vip", "protocol", "port")

Owner = tuple[str, str]  # namespace, name
OwnerMap = Mapping[ServiceKey, Owner]
Owners = OwnerMap | Callable[[], OwnerMap]


class StatsSource(Protocol):
    """The part of an IPVS port metrics need (``RealIPVS`` and ``FakeIPVS`` have it)."""

    async def service_stats(self) -> dict[ServiceKey, tuple[Service, Stats]]: ...


@dataclass(frozen=True)
class Family:
    name: str  # without the kube_router_ prefix
    help: str
    type: Literal["counter", "gauge"]
    stat: str  # the Stats field


# Upstream's names, help texts and types (pkg/metrics/metrics_controller.go), sorted by name.
SERVICE_FAMILIES: Final = (
    Family("service_bps_in", "Incoming bytes per second", "gauge", "bps_in"),
    Family("service_bps_out", "Outgoing bytes per second", "gauge", "bps_out"),
    Family("service_bytes_in", "Total incoming bytes", "counter", "bytes_in"),
    Family("service_bytes_out", "Total outgoing bytes", "counter", "bytes_out"),
    Family("service_cps", "Service connections per second", "gauge", "cps"),
    Family("service_packets_in", "Total incoming packets", "counter", "packets_in"),
    Family("service_packets_out", "Total outgoing packets", "counter", "packets_out"),
    Family("service_pps_in", "Incoming packets per second", "gauge", "pps_in"),
    Family("service_pps_out", "Outgoing packets per second", "gauge", "pps_out"),
    Family("service_total_connections", "Total incoming connections made", "counter", "conns"),
)
SERVICES_NAME: Final = "controller_ipvs_services"
SERVICES_HELP: Final = "Number of ipvs services in the instance"


def split_owner(owner: str) -> Owner:
    """``namespace/name:port`` (:attr:`VirtualService.owner`) -> (namespace, name)."""
    service = owner.rsplit(":", 1)[0]
    namespace, _, name = service.partition("/")
    return namespace, name


def owners_of(
    virtual: Mapping[ServiceKey, VirtualService], node_ips: Collection[str]
) -> dict[ServiceKey, Owner]:
    """The Service of each virtual service that gets series, as upstream picks them.

    Upstream maps NodePorts on its primary node IP only (not the other addresses of
    ``--nodeport-bindon-all-ip``); pass that one address in ``node_ips`` to match it exactly.
    """
    out: dict[ServiceKey, Owner] = {}
    for key, vs in virtual.items():
        if key.fwmark or (vs.kind == "nodeport" and key.address not in node_ips):
            continue
        out[key] = split_owner(vs.owner)
    return out


def service_labels(key: ServiceKey, owner: Owner) -> dict[str, str]:
    protocol = ipvs.PROTOCOL_NAMES.get(key.protocol, str(key.protocol))
    values = (owner[0], owner[1], key.address, protocol, str(key.port))
    return dict(zip(SERVICE_LABELS, values, strict=True))


def render(services: Mapping[ServiceKey, tuple[Service, Stats]], owners: OwnerMap) -> bytes:
    """The service families and the IPVS service count for one listing of IPVS."""
    rows = [
        (service_labels(key, owners[key]), stats)
        for key, (_service, stats) in services.items()
        if not key.fwmark and key in owners
    ]
    parts = [write_family(SERVICES_NAME, SERVICES_HELP, "gauge", [({}, len(services))])]
    for fam in SERVICE_FAMILIES:
        series = [(labels, float(getattr(stats, fam.stat))) for labels, stats in rows]
        parts.append(write_family(fam.name, fam.help, fam.type, series))
    return "".join(parts).encode()


class ProxyMetrics:
    """The proxy's metrics on ``metrics``' registry; build it in the controller's ``start()``.

    ``owners`` is the virtual service -> (namespace, name) map, or a callable returning the
    current one (called on every scrape).
    """

    def __init__(self, metrics: Metrics, source: StatsSource, owners: Owners) -> None:
        self.metrics = metrics
        self.source = source
        self.owners = owners
        self.sync_time = Histogram(
            "controller_ipvs_services_sync_time",
            "Time it took for controller to sync ipvs services",
            namespace=NAMESPACE,
            registry=metrics.registry,
        )
        self.export_time = Histogram(
            "controller_ipvs_metrics_export_time",
            "Time it took to export metrics",
            namespace=NAMESPACE,
            registry=metrics.registry,
        )
        metrics.add_scrape_hook(self.export)

    def close(self) -> None:
        """Unregister everything (the controller stopped)."""
        self.metrics.remove_scrape_hook(self.export)
        for hist in (self.sync_time, self.export_time):
            self.metrics.registry.unregister(hist)

    @contextlib.contextmanager
    def timed_sync(self) -> Iterator[None]:
        """Observe the duration of an IPVS sync (partial or full) in the sync-time histogram."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync_time.observe(time.perf_counter() - start)

    def _owner_map(self) -> OwnerMap:
        return self.owners() if callable(self.owners) else self.owners

    async def export(self) -> bytes:
        """The scrape hook: list IPVS now and write the families (timed)."""
        start = time.perf_counter()
        try:
            services = await self.source.service_stats()
        except (ipvs.IPVSError, OSError) as err:
            log.error("metrics: listing IPVS services: %s", err)
            return b""
        else:
            return render(services, self._owner_map())
        finally:
            self.export_time.observe(time.perf_counter() - start)
