"""The BGP engine port: what the routing controller needs from gobgpd.

Implementations: ``bgp/grpc_engine.py`` (gobgpd over gRPC) and ``bgp/fake.py`` (in memory,
strict, tested against the real one). Every ``sync_*`` method is level-triggered: it reads what
the engine holds and changes only the difference, so it is safe after an agent restart (gobgpd
kept its state) and after a gobgpd restart (it holds nothing).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Protocol

from kube_router.bgp.model import (
    GlobalSpec,
    PathSpec,
    PeerEvent,
    PeerSpec,
    PeerStatus,
    PolicyState,
    RouteEvent,
)


class EngineError(Exception):
    """gobgpd refused a request or cannot be reached; the message names the request."""


class EngineUnavailable(EngineError):
    """gobgpd is not running (or restarting); the caller retries after it is back."""


class BgpEngine(Protocol):
    async def ensure_global(self, spec: GlobalSpec) -> None:
        """Start BGP with ``spec`` unless it already runs with it (restarting it if different)."""

    async def sync_peers(self, peers: Iterable[PeerSpec]) -> None:
        """Make gobgpd's neighbours exactly ``peers`` (add, update changed, delete the rest)."""

    async def sync_paths(self, paths: Iterable[PathSpec]) -> None:
        """Make the locally originated paths exactly ``paths``."""

    async def sync_policies(self, state: PolicyState) -> None:
        """Defined sets, and export/import policies replaced by version (upstream's names)."""

    async def peer_status(self) -> list[PeerStatus]:
        """Every neighbour with its session state (for metrics and the demo)."""

    def watch_routes(self) -> AsyncIterator[RouteEvent]:
        """Best paths learned from peers, the current ones first; ends when gobgpd goes."""

    def watch_peers(self) -> AsyncIterator[PeerEvent]:
        """Session state changes, on their own stream; ends when gobgpd goes."""

    async def stop_bgp(self) -> None:
        """Stop BGP (withdraws our routes from the peers)."""
