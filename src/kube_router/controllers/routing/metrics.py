"""The routing controller's metrics, with upstream's names (kube-router.md §3).

Histograms and gauges live on the registry. Upstream's counters (``*_advertisements_*``,
``host_routes_added``/``_removed``) carry no ``_total`` suffix, which prometheus_client always
adds; they are kept here as plain numbers and written at scrape time as Go writes them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import Gauge, Histogram

from kube_router.bgp.model import PeerStatus
from kube_router.metrics import NAMESPACE, Metrics, write_family

ROUTES_SYNC_TIME: Final = "controller_routes_sync_time"
PEERS_SYNC_TIME: Final = "controller_bgp_internal_peers_sync_time"
HOST_ROUTES_SYNC_TIME: Final = "host_routes_sync_time"
HOST_ROUTES_SYNCED: Final = "host_routes_synced"
PEER_INFO: Final = "bgp_peer_info"

#: ``controller_bgp_advertisements_sent`` label values (upstream's).
SENT_POD_ROUTE: Final = "pod-route"
SENT_ADVERTISE_VIP: Final = "advertise-vip"
SENT_WITHDRAW_VIP: Final = "withdraw-vip"


@dataclass
class Counters:
    """Monotonic counts, written as Go counters (no ``_total``) on every scrape."""

    received: int = 0
    sent: dict[str, int] = field(default_factory=dict)
    routes_added: int = 0
    routes_removed: int = 0

    def count_sent(self, kind: str, n: int = 1) -> None:
        self.sent[kind] = self.sent.get(kind, 0) + n

    def render(self) -> bytes:
        parts = [
            write_family(
                "controller_bgp_advertisements_received",
                "BGP advertisements received",
                "counter",
                [({}, float(self.received))],
            ),
            write_family(
                "controller_bgp_advertisements_sent",
                "BGP advertisements sent",
                "counter",
                [({"type": k}, float(v)) for k, v in sorted(self.sent.items())],
            ),
            write_family(
                "host_routes_added",
                "Number of routes added to the host",
                "counter",
                [({}, float(self.routes_added))],
            ),
            write_family(
                "host_routes_removed",
                "Number of routes removed from the host",
                "counter",
                [({}, float(self.routes_removed))],
            ),
        ]
        return "".join(parts).encode()


class RoutingMetrics:
    """Registered in the controller's ``start()``; ``close()`` takes them off again."""

    def __init__(self, metrics: Metrics, counters: Counters) -> None:
        self.metrics = metrics
        self.counters = counters
        reg = metrics.registry
        self.routes_sync_time = Histogram(
            ROUTES_SYNC_TIME,
            "Time it took for controller to sync routes",
            namespace=NAMESPACE,
            registry=reg,
        )
        self.peers_sync_time = Histogram(
            PEERS_SYNC_TIME,
            "Time it took to sync internal bgp peers",
            namespace=NAMESPACE,
            registry=reg,
        )
        self.host_sync_time = Histogram(
            HOST_ROUTES_SYNC_TIME,
            "Time it took for the bgp route server to sync routes to the host",
            namespace=NAMESPACE,
            registry=reg,
        )
        self.host_synced = Gauge(
            HOST_ROUTES_SYNCED,
            "Count of host routes currently synced",
            namespace=NAMESPACE,
            registry=reg,
        )
        self.peer_info = Gauge(
            PEER_INFO,
            "BGP peer information",
            ["address", "type", "asn", "state"],
            namespace=NAMESPACE,
            registry=reg,
        )
        metrics.add_scrape_hook(self.export)

    async def export(self) -> bytes:
        return self.counters.render()

    def close(self) -> None:
        self.metrics.remove_scrape_hook(self.export)
        for coll in (
            self.routes_sync_time,
            self.peers_sync_time,
            self.host_sync_time,
            self.host_synced,
            self.peer_info,
        ):
            self.metrics.registry.unregister(coll)

    def set_peers(self, peers: Iterable[PeerStatus]) -> None:
        """Reset and refill ``bgp_peer_info`` (upstream resets it on every loop)."""
        self.peer_info.clear()
        for p in peers:
            kind = "internal" if p.internal else "external"
            self.peer_info.labels(
                address=p.address, type=kind, asn=str(p.asn), state=p.state.value
            ).set(1)


@contextlib.contextmanager
def timed(hist: Histogram | None) -> Iterator[None]:
    """Observe the block's duration in ``hist`` (nothing when metrics are off)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if hist is not None:
            hist.observe(time.perf_counter() - start)
