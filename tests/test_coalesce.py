"""Progress coalescing: the pure rules with a fake clock, then the bound through a real task."""

from __future__ import annotations

import pytest

from taskcast.events import Event, progress_data
from taskcast.tasks.coalesce import Coalescer


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def progress(op: str, value: float) -> Event:
    return Event("progress", op, progress_data(value))


def test_first_progress_passes_then_the_interval_holds_back_and_keeps_the_latest() -> None:
    clock = FakeClock()
    c = Coalescer(0.05, clock)
    first = progress("a", 0.1)
    assert c.offer(first) is first
    clock.now += 0.01
    assert c.offer(progress("a", 0.2)) is None
    clock.now += 0.01
    assert c.offer(progress("a", 0.3)) is None
    assert c.merged == 1
    assert c.due() == []
    assert c.next_due() == pytest.approx(100.05)
    clock.now = 100.06
    assert c.due() == ["a"]
    assert c.take("a").data["progress"] == 0.3
    assert c.due() == [] and c.next_due() is None


def test_a_progress_after_the_interval_supersedes_the_held_one() -> None:
    clock = FakeClock()
    c = Coalescer(0.05, clock)
    c.offer(progress("a", 0.1))
    clock.now += 0.01
    c.offer(progress("a", 0.2))
    clock.now += 0.1
    latest = progress("a", 0.9)
    assert c.offer(latest) is latest
    assert c.take("a") is None and c.merged == 1


def test_take_returns_the_pending_value_once_and_restarts_the_interval() -> None:
    clock = FakeClock()
    c = Coalescer(0.05, clock)
    c.offer(progress("a", 0.1))
    c.offer(progress("a", 0.2))
    assert c.take("a").data["progress"] == 0.2
    assert c.take("a") is None
    assert c.offer(progress("a", 0.3)) is None  # still within the interval of the take


def test_operations_are_limited_independently() -> None:
    clock = FakeClock()
    c = Coalescer(0.05, clock)
    assert c.offer(progress("a", 0.1)) is not None
    assert c.offer(progress("b", 0.1)) is not None
    assert c.offer(progress("a", 0.2)) is None
    assert c.take("b") is None
    assert c.take("a").operation_id == "a"


def test_zero_interval_stores_everything() -> None:
    c = Coalescer(0.0, FakeClock())
    events = [progress("a", i / 10) for i in range(10)]
    assert [c.offer(e) for e in events] == events
    assert len(c) == 0


def test_quiet_operations_are_forgotten_and_forget_drops_state() -> None:
    clock = FakeClock()
    c = Coalescer(0.05, clock)
    c.offer(progress("a", 0.1))
    c.offer(progress("b", 0.1))
    c.offer(progress("b", 0.2))
    clock.now += 1
    assert c.due() == ["b"]
    c.take("b")
    clock.now += 1
    c.due()
    assert len(c) == 0
    c.offer(progress("c", 0.1))
    c.forget("c")
    assert len(c) == 0


def test_a_flush_before_shutdown_finds_every_held_value() -> None:
    clock = FakeClock()
    c = Coalescer(10.0, clock)
    for op in "abc":
        c.offer(progress(op, 0.1))
        c.offer(progress(op, 0.5))
    assert sorted(c.operations()) == ["a", "b", "c"]
    assert [c.take(op).data["progress"] for op in "abc"] == [0.5, 0.5, 0.5]
    assert [c.take(op) for op in c.operations()] == [None, None, None]


def test_a_hundred_thousand_progress_calls_store_a_few_hundred_and_the_final_value(
    run_task,
) -> None:
    run = run_task("test.hammer_progress", {"calls": 100_000}, timeout=60)
    progress_events = [e for e in run.events if e["event_type"] == "progress"]
    assert 1 <= len(progress_events) <= 400
    assert progress_events[-1]["data"]["current"] == 100_000
    assert progress_events[-1]["data"]["progress"] == 1.0
    assert run.events[-3] is progress_events[-1]  # then result, completed
    assert run.result.get(timeout=5) == 100_000
