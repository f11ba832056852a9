"""What every controller shares: the run context, the barriers and the controller interface."""

from __future__ import annotations

import abc
import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kube_router.config import Config
    from kube_router.health import HealthChecker
    from kube_router.k8s.client import KubeClient
    from kube_router.k8s.informers import Informers
    from kube_router.metrics import Metrics
    from kube_router.node import NodeIdentity

log = logging.getLogger(__name__)


@dataclass
class Barriers:
    """Start-up ordering, as upstream's sync.Cond broadcasts.

    ``cni_firewall_setup``: set by the routing controller once its ipsets and FORWARD accepts
    exist (the policy controller waits for it). ``proxy_firewall_setup``: set by the service
    proxy once its firewall chain exists.
    """

    cni_firewall_setup: asyncio.Event = field(default_factory=asyncio.Event)
    proxy_firewall_setup: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class RunContext:
    """Dependencies handed to controllers; constructors store them, ``run`` uses them."""

    config: Config
    client: KubeClient
    informers: Informers
    node: NodeIdentity
    health: HealthChecker
    metrics: Metrics | None
    barriers: Barriers


class Controller(abc.ABC):
    """A controller: one serialized sync loop, heartbeating after each successful sync."""

    #: Health component name (upstream's).
    name: str = ""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    @property
    @abc.abstractmethod
    def sync_period(self) -> float:
        """Seconds between full syncs; also the component's health period."""

    @abc.abstractmethod
    async def run(self) -> None:
        """Run until cancelled. An exception escaping here ends the process (non-zero)."""

    def beat(self) -> None:
        self.ctx.health.beat(self.name)


class PendingController(Controller):
    """Stands in for a controller whose issue has not landed: beats and says so, nothing else.

    It releases the barriers it owns so the start-up order behaves as it will for real.
    """

    def __init__(self, ctx: RunContext, name: str, period: float, releases: list[asyncio.Event]):
        super().__init__(ctx)
        self.name = name
        self._period = period
        self._releases = releases

    @property
    def sync_period(self) -> float:
        return self._period

    async def run(self) -> None:
        log.warning("%s: not implemented yet; only sending heartbeats", self.name)
        for event in self._releases:
            event.set()
        while True:
            self.beat()
            await asyncio.sleep(self._period)
