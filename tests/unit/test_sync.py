"""The shared sync runner and change tracker, driven by a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kube_router.controllers.sync import ChangeTracker, FakeClock, SyncRunner, settle


class Work:
    def __init__(self) -> None:
        self.calls: list[bool] = []
        self.fail_next = 0
        self.beats = 0

    async def sync(self, full: bool) -> None:
        self.calls.append(full)
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("boom")

    def beat(self) -> None:
        self.beats += 1


@pytest.fixture
async def rig() -> AsyncIterator[tuple[SyncRunner, Work, FakeClock]]:
    clock, work = FakeClock(), Work()
    runner = SyncRunner(
        "t",
        work.sync,
        period=300,
        min_interval=1.0,
        on_success=work.beat,
        clock=clock,
        backoff_initial=2,
        backoff_max=8,
    )
    task = asyncio.create_task(runner.run())
    await settle()
    yield runner, work, clock
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_first_sync_is_full_then_pokes_are_partial(
    rig: tuple[SyncRunner, Work, FakeClock],
) -> None:
    runner, work, clock = rig
    assert work.calls == [True] and work.beats == 1
    await clock.advance(5)
    runner.poke()
    await settle()
    assert work.calls == [True, False]


async def test_burst_is_coalesced_by_min_interval(rig: tuple[SyncRunner, Work, FakeClock]) -> None:
    runner, work, clock = rig
    for _ in range(10):
        runner.poke()
        await settle()
    assert work.calls == [True]  # still inside the 1 s minimum interval
    await clock.advance(1.0)
    assert work.calls == [True, False]
    for _ in range(5):
        runner.poke()
    await clock.advance(1.0)
    assert work.calls == [True, False, False]


async def test_period_brings_a_full_sync(rig: tuple[SyncRunner, Work, FakeClock]) -> None:
    runner, work, clock = rig
    await clock.advance(299)
    assert work.calls == [True]
    await clock.advance(1)
    assert work.calls == [True, True]
    assert runner.stats.full_syncs == 2


async def test_failure_retries_full_with_backoff(rig: tuple[SyncRunner, Work, FakeClock]) -> None:
    runner, work, clock = rig
    work.fail_next = 3
    await clock.advance(5)
    runner.poke()
    await settle()
    assert work.calls == [True, False]  # the partial sync failed
    await clock.advance(2)  # backoff 2 s, then a full sync (fails again)
    assert work.calls == [True, False, True]
    await clock.advance(3.9)  # backoff doubled to 4 s
    assert work.calls == [True, False, True]
    await clock.advance(0.1)
    assert work.calls == [True, False, True, True]
    await clock.advance(8)  # third failure waited 8 s; this one succeeds
    assert work.calls[-1] is True and runner.stats.failures == 3
    assert work.beats == 2  # beats only after successes


async def test_request_full(rig: tuple[SyncRunner, Work, FakeClock]) -> None:
    runner, work, clock = rig
    await clock.advance(5)
    runner.request_full()
    await settle()
    assert work.calls == [True, True]


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([("a", None, 1)], {"a": (None, 1)}),
        ([("a", None, 1), ("a", 1, None)], {}),  # add then delete cancels out
        ([("a", 1, 2), ("a", 2, 1)], {}),  # update back to the start cancels out
        ([("a", 1, 2), ("a", 2, 3)], {"a": (1, 3)}),  # keeps the first old value
        ([("a", 1, None), ("b", None, 2)], {"a": (1, None), "b": (None, 2)}),
    ],
)
def test_change_tracker(
    steps: list[tuple[str, int | None, int | None]],
    expected: dict[str, tuple[int | None, int | None]],
) -> None:
    tracker: ChangeTracker[str, int] = ChangeTracker()
    for key, old, new in steps:
        tracker.record(key, old, new)
    assert len(tracker) == len(expected)
    assert tracker.drain() == expected
    assert tracker.drain() == {}
