"""The routing controller's metrics: upstream's names, Go-style counters, peer info resets."""

from __future__ import annotations

import pytest

from kube_router.bgp.model import PeerStatus, SessionState
from kube_router.controllers.routing.metrics import (
    SENT_ADVERTISE_VIP,
    SENT_POD_ROUTE,
    Counters,
    RoutingMetrics,
    timed,
)
from kube_router.metrics import Metrics


async def test_counters_are_written_without_total_suffix() -> None:
    metrics = Metrics()
    counters = Counters()
    rm = RoutingMetrics(metrics, counters)
    counters.received += 3
    counters.count_sent(SENT_POD_ROUTE)
    counters.count_sent(SENT_ADVERTISE_VIP, 2)
    counters.routes_added = 5
    text = (await metrics.scrape()).decode()
    assert "kube_router_controller_bgp_advertisements_received 3\n" in text
    assert 'kube_router_controller_bgp_advertisements_sent{type="advertise-vip"} 2\n' in text
    assert 'kube_router_controller_bgp_advertisements_sent{type="pod-route"} 1\n' in text
    assert "kube_router_host_routes_added 5\n" in text
    assert "_total" not in text.split("kube_router_controller_bgp")[1]
    rm.close()
    assert "advertisements_received" not in (await metrics.scrape()).decode()


@pytest.mark.parametrize(("internal", "kind"), [(True, "internal"), (False, "external")])
async def test_peer_info_is_reset_each_time(internal: bool, kind: str) -> None:
    metrics = Metrics()
    rm = RoutingMetrics(metrics, Counters())
    rm.set_peers([PeerStatus("10.0.0.2", 64512, SessionState.ACTIVE, internal=internal)])
    rm.set_peers([PeerStatus("10.0.0.3", 64513, SessionState.ESTABLISHED, internal=internal)])
    text = (await metrics.scrape()).decode()
    assert "10.0.0.2" not in text
    assert (
        f'kube_router_bgp_peer_info{{address="10.0.0.3",asn="64513",state="established",'
        f'type="{kind}"}} 1.0' in text
    )


async def test_timed_observes_and_tolerates_no_histogram() -> None:
    metrics = Metrics()
    rm = RoutingMetrics(metrics, Counters())
    with timed(rm.routes_sync_time):
        pass
    with timed(None):
        pass
    assert "kube_router_controller_routes_sync_time_count 1.0" in (await metrics.scrape()).decode()
