"""What every controller's sync loop is made of: a change tracker and a serialized runner.

Handlers record changes and poke the runner; they never touch the kernel or the API. The runner
runs one sync at a time, coalesces bursts (a minimum interval between syncs), runs a full
level-triggered sync every period and after any failure, retries failures with backoff, and
calls ``on_success`` (the heartbeat) after each successful sync. Time comes from a Clock so tests
drive it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")

BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 60.0


class Clock(Protocol):
    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FakeClock:
    """Time moves only when a test calls ``advance``; sleepers wake in deadline order."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._seq), fut))
        await fut

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking every sleeper that is due, letting tasks run between."""
        target = self.now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            self.now = max(self.now, deadline)
            if not fut.done():
                fut.set_result(None)
            await settle()
        self.now = target
        await settle()


async def settle(rounds: int = 20) -> None:
    """Let ready tasks run until the loop is quiet (for tests with a FakeClock)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class ChangeTracker(Generic[K, V]):
    """Pending changes per key: the value before the first change and the latest value.

    A change that returns to where it started (add then delete, or an update back to the old
    value) cancels out and is dropped.
    """

    def __init__(self) -> None:
        self._pending: dict[K, tuple[V | None, V | None]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def record(self, key: K, old: V | None, new: V | None) -> None:
        first_old = self._pending[key][0] if key in self._pending else old
        if first_old == new:
            self._pending.pop(key, None)
        else:
            self._pending[key] = (first_old, new)

    def drain(self) -> dict[K, tuple[V | None, V | None]]:
        changes, self._pending = self._pending, {}
        return changes


SyncFunc = Callable[[bool], Awaitable[None]]


@dataclass
class RunnerStats:
    syncs: int = 0
    full_syncs: int = 0
    failures: int = 0


class SyncRunner:
    """One serialized sync loop. ``sync(full)`` does the work; exceptions are retried."""

    def __init__(
        self,
        name: str,
        sync: SyncFunc,
        *,
        period: float,
        min_interval: float = 0.0,
        on_success: Callable[[], None] | None = None,
        clock: Clock | None = None,
        backoff_initial: float = BACKOFF_INITIAL_S,
        backoff_max: float = BACKOFF_MAX_S,
    ) -> None:
        self.name = name
        self._sync = sync
        self.period = period
        self.min_interval = min_interval
        self._on_success = on_success
        self.clock: Clock = clock or RealClock()
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._poked = asyncio.Event()
        self._full_requested = True  # the first sync is always full
        self.stats = RunnerStats()

    def poke(self) -> None:
        """Ask for a sync soon (incremental unless a full one is due)."""
        self._poked.set()

    def request_full(self) -> None:
        self._full_requested = True
        self._poked.set()

    async def _wait_poke(self, timeout: float) -> None:
        """Wait until poked or ``timeout`` passes, whichever is first."""
        if self._poked.is_set():
            return
        waiter = asyncio.ensure_future(self._poked.wait())
        sleeper = asyncio.ensure_future(self.clock.sleep(max(0.0, timeout)))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            sleeper.cancel()

    async def run(self) -> None:
        """Run until cancelled."""
        last_full = last_start = float("-inf")
        backoff = self._backoff_initial
        while True:
            if not self._full_requested:
                await self._wait_poke(last_full + self.period - self.clock.monotonic())
            wait = last_start + self.min_interval - self.clock.monotonic()
            if wait > 0:
                await self.clock.sleep(wait)  # coalesce a burst of pokes into one sync
            self._poked.clear()
            now = self.clock.monotonic()
            full = self._full_requested or now - last_full >= self.period
            self._full_requested = False
            last_start = now
            try:
                await self._sync(full)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats.failures += 1
                log.exception(
                    "%s: %s sync failed; full sync in %.1fs",
                    self.name,
                    "full" if full else "partial",
                    backoff,
                )
                self._full_requested = True
                await self.clock.sleep(backoff)
                backoff = min(backoff * 2, self._backoff_max)
                continue
            backoff = self._backoff_initial
            self.stats.syncs += 1
            if full:
                self.stats.full_syncs += 1
                last_full = now
            if self._on_success:
                self._on_success()
