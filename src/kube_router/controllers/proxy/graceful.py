"""Graceful termination (``--ipvs-graceful-termination``): drained real servers deleted later.

The planner sets a real server that is no longer wanted to weight 0 instead of deleting it
(:attr:`plan.Plan.drained`); the controller queues each one here with its grace period: the
``terminationGracePeriodSeconds`` of the pod holding the endpoint's IP, else
``--ipvs-graceful-period``. Every :data:`GRACEFUL_SCAN_S` the controller dumps IPVS and applies
:meth:`GracefulQueue.due`: a queued server is deleted once it has no active or inactive
connection, or once its period has passed. Queueing a server twice keeps the first deadline, so
the full syncs that report the same drained server again do not extend it.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

from kube_router.controllers.sync import Clock
from kube_router.dataplane.ipvs import IPVS, Dest, ServiceKey, ServiceState, Transaction
from kube_router.k8s.models import Pod

log = logging.getLogger(__name__)

GRACEFUL_SCAN_S: Final = 5.0  # upstream's gracefulTermServiceTickTime
TERMINAL_PHASES: Final = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class Pending:
    """A drained real server waiting for deletion."""

    key: ServiceKey
    dest: Dest
    queued: float  # clock time it was queued
    period: float  # seconds it may keep its connections

    @property
    def deadline(self) -> float:
        return self.queued + self.period


def _canonical(ip: str) -> str | None:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return None


def _pod_ips(pod: Pod) -> set[str]:
    raw = [p.ip for p in pod.status.pod_ips] or [pod.status.pod_ip]
    return {c for c in map(_canonical, raw) if c}


def grace_period(pods: Iterable[Pod], ip: str, default: float) -> float:
    """The ``terminationGracePeriodSeconds`` of the pod with endpoint address ``ip``.

    Pods that ended (Succeeded, Failed) may still list an address now reused, so a live pod is
    preferred; ``default`` (``--ipvs-graceful-period``) when no pod has the address or the pod
    has no period set.
    """
    want = _canonical(ip)
    if want is None:
        return default
    matches = [p for p in pods if want in _pod_ips(p)]
    live = [p for p in matches if p.status.phase not in TERMINAL_PHASES]
    chosen = live or matches
    if not chosen or chosen[0].spec.termination_grace_period_seconds is None:
        return default
    return float(chosen[0].spec.termination_grace_period_seconds)


class GracefulQueue:
    """Drained real servers by (virtual service, address, port), each with its deadline."""

    def __init__(self, clock: Clock, default_period: float) -> None:
        self.clock = clock
        self.default_period = default_period
        self._pending: dict[tuple[ServiceKey, tuple[str, int]], Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __iter__(self) -> Iterator[Pending]:
        return iter(list(self._pending.values()))

    def __contains__(self, item: tuple[ServiceKey, Dest]) -> bool:
        key, dest = item
        return (key, dest.key) in self._pending

    def add(self, key: ServiceKey, dest: Dest, period: float | None = None) -> bool:
        """Queue a drained server (``period`` None: the default); False if it was queued."""
        slot = (key, dest.key)
        if slot in self._pending:
            log.debug("graceful: %s -> %s:%d already queued", key, dest.address, dest.port)
            return False
        seconds = self.default_period if period is None else period
        self._pending[slot] = Pending(key, dest, self.clock.monotonic(), seconds)
        log.info(
            "graceful: %s -> %s:%d drained, deleted within %.0fs",
            key,
            dest.address,
            dest.port,
            seconds,
        )
        return True

    def discard(self, key: ServiceKey, dest: Dest) -> None:
        """The endpoint is wanted again: forget it (it is no longer deleted)."""
        self._pending.pop((key, dest.key), None)

    def due(self, dump: Mapping[ServiceKey, ServiceState]) -> Transaction:
        """Deletions for the queued servers that may go now, forgotten once returned.

        ``dump`` is the kernel's state. A server goes when it has no active and no inactive
        connection or when its period has passed (strictly, as upstream). Entries whose service
        or server is gone, or whose server has a weight again (someone re-added the endpoint),
        are dropped without an operation.
        """
        tx = Transaction()
        now = self.clock.monotonic()
        for slot, item in list(self._pending.items()):
            service = dump.get(item.key)
            state = service.dests.get(item.dest.key) if service is not None else None
            if state is None or state.dest.weight != 0:
                del self._pending[slot]
                continue
            idle = state.active_conns + state.inactive_conns == 0
            if idle or now - item.queued > item.period:
                tx.del_dest(item.key, *item.dest.key)
                del self._pending[slot]
                log.info(
                    "graceful: deleting %s -> %s:%d (%s)",
                    item.key,
                    item.dest.address,
                    item.dest.port,
                    "no connections left" if idle else f"{item.period:.0f}s passed",
                )
        return tx

    async def scan(self, port: IPVS) -> Transaction:
        """One pass (every :data:`GRACEFUL_SCAN_S`): dump IPVS, apply :meth:`due`, return it.

        An :class:`~kube_router.dataplane.ipvs.IPVSError` from the apply propagates; the
        entries are forgotten all the same (as upstream), and a full sync drains and queues
        again whatever is left.
        """
        if not self._pending:
            return Transaction()  # nothing queued: not even a dump
        tx = self.due(await port.dump())
        if tx.ops:
            await port.apply(tx)
        return tx
