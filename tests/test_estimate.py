"""ETA and rate (PROTOCOL.md 1.1): the pure estimator on a manual clock, the producer that
adds them to stored progress (coalesced or not), one real task on a real worker, and the
words ``taskcast watch`` shows."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable
from dataclasses import replace

import pytest
from helpers import ManualClock, TaskRun, events_of
from rich.console import Console

from taskcast.bridge import Bridge
from taskcast.client import TaskcastClient
from taskcast.estimate import Estimate, Estimates, Estimator
from taskcast.events import Event, progress_data, status_data
from taskcast.store import EventStore
from taskcast.tasks.producer import Producer
from taskcast.terminal import eta_text, follow
from taskcast.worker_config import Settings


def run_steps(
    durations: Iterable[float], clock: ManualClock
) -> list[tuple[float, Estimate | None]]:
    """Feed a task of ``durations`` (one step each) to an estimator; after each step, the
    true seconds left and the estimate."""
    durations = list(durations)
    estimator = Estimator()
    estimator.update(clock(), 0.0)
    seen = []
    for done, duration in enumerate(durations, 1):
        clock.now += duration
        estimate = estimator.update(clock(), done / len(durations))
        seen.append((sum(durations[done:]), estimate))
    return seen


def test_steady_steps_give_an_eta_within_a_fifth_of_the_truth_after_a_quarter() -> None:
    seen = run_steps([3.0] * 100, ManualClock())
    for truth, estimate in seen[24:99]:
        assert estimate is not None
        assert estimate.eta == pytest.approx(truth, rel=0.2)
    assert seen[24][1].eta == pytest.approx(225.0, rel=0.01)  # 75 steps of 3 s left
    assert seen[-1][1].eta == 0.0


def test_uneven_steps_still_give_a_sane_eta() -> None:
    """Steps alternate between 1 s and 5 s: the estimate follows the 3 s average instead of
    swinging with each step."""
    seen = run_steps([1.0, 5.0] * 30, ManualClock())
    for truth, estimate in seen[15:45]:
        assert estimate is not None
        assert estimate.eta == pytest.approx(truth, rel=0.35)


def test_a_burst_of_tiny_updates_does_not_outweigh_the_time_it_took() -> None:
    """Batches: a 10 s step, then ten updates within 0.1 s. After each batch the pace is
    11 updates per 10.1 s, and the estimate says so (an average of per-call rates would
    follow the burst and promise the end in under a second)."""
    seen = run_steps(([10.0] + [0.01] * 10) * 6, ManualClock())
    after_batches = seen[21:-1:11]  # the 2nd to 5th batches; the last ends the task
    assert len(after_batches) == 4
    for truth, estimate in after_batches:
        assert estimate is not None
        assert estimate.eta == pytest.approx(truth, rel=0.05)


def test_no_estimate_until_two_distinct_points_a_second_apart() -> None:
    clock = ManualClock()
    estimator = Estimator()
    assert estimator.update(clock(), 0.1) is None  # one point
    clock.now = 5.0
    assert estimator.update(clock(), 0.1) is None  # no progress yet
    clock.now = 5.5
    assert estimator.update(clock(), 0.12) is not None  # progress, 5.5 s after the first

    fresh = Estimator()
    fresh.update(10.0, 0.0)
    assert fresh.update(10.5, 0.1) is None  # half a second is too little to judge a pace
    assert fresh.update(11.0, 0.2) == Estimate(eta=4.0, rate=pytest.approx(0.2))


def test_counts_give_units_per_second_and_fractions_give_fraction_per_second() -> None:
    counted, fractional = Estimator(), Estimator()
    for second in range(11):
        by_count = counted.update(second, second * 4 / 200, total=200)
        by_fraction = fractional.update(second, second * 0.02)
    assert by_count == Estimate(eta=40.0, rate=pytest.approx(4.0))  # items per second
    assert by_fraction == Estimate(eta=40.0, rate=pytest.approx(0.02))  # fraction per second


def test_a_stall_makes_the_eta_grow_and_it_is_never_negative() -> None:
    estimator = Estimator()
    for second in range(11):
        steady = estimator.update(second, second / 20)
    assert steady is not None and steady.eta == pytest.approx(10.0)
    stalled = estimator.update(30.0, 0.5)  # twenty seconds without progress
    assert stalled is not None and stalled.eta > 2 * steady.eta
    done = estimator.update(31.0, 1.0)
    assert done is not None and done.eta == 0.0


def test_progress_going_backwards_starts_the_estimate_afresh() -> None:
    estimator = Estimator()
    for second in range(11):
        estimator.update(second, second / 100)  # slow: 1 % per second
    assert estimator.update(11.0, 0.0) is None  # a new phase counts from zero
    estimator.update(12.0, 0.2)
    again = estimator.update(13.0, 0.4)  # fast: 20 % per second
    assert again == Estimate(eta=3.0, rate=pytest.approx(0.2))


def test_estimates_are_per_operation_and_bounded() -> None:
    estimates = Estimates(limit=2)
    estimates.update("a", 0.0, 0.0)
    estimates.update("b", 0.0, 0.0)
    assert estimates.update("a", 2.0, 0.5) == Estimate(eta=2.0, rate=0.25)
    estimates.update("c", 2.0, 0.0)  # over the limit: "b", fed longest ago, goes
    assert len(estimates) == 2
    assert estimates.update("a", 4.0, 1.0) == Estimate(eta=0.0, rate=0.25)  # "a" kept its past
    assert estimates.update("b", 4.0, 0.5) is None  # "b" starts over
    estimates.forget("a")
    estimates.forget("b")
    assert len(estimates) == 0


def progress_at(when: float, done: int, total: int = 10) -> Event:
    return Event("progress", "op", progress_data(current=done, total=total), timestamp=when)


@pytest.fixture
def coalescing_producer(task_settings: Settings, prefix: str):
    """A producer whose coalescing runs on a manual clock (the events carry their own
    timestamps, which the estimate follows)."""
    clock = ManualClock()
    producer = Producer(replace(task_settings, prefix=prefix, progress_interval=0.05), clock=clock)
    yield producer, clock
    producer.close()


def test_stored_progress_carries_eta_and_rate_and_a_merged_value_the_latest(
    coalescing_producer: tuple[Producer, ManualClock], store: EventStore
) -> None:
    producer, clock = coalescing_producer
    producer.emit(progress_at(1000.0, 0))
    clock.now = 1.0
    producer.emit(progress_at(1001.0, 1))
    clock.now = 1.01  # within the interval: held back, the later one replacing the earlier
    producer.emit(progress_at(1002.0, 2))
    producer.emit(progress_at(1003.0, 3))
    producer.emit(Event("completed", "op", {"status": "completed"}, timestamp=1004.0))
    events = events_of(store, "op")
    assert [e["event_type"] for e in events] == ["progress", "progress", "progress", "completed"]
    first, second, merged = (e["data"] for e in events[:3])
    assert "eta" not in first and "rate" not in first  # not estimable from one point
    assert (second["eta"], second["rate"]) == (9.0, pytest.approx(1.0))
    assert merged["current"] == 3
    assert (merged["eta"], merged["rate"]) == (7.0, pytest.approx(1.0))  # 1 item/s, 7 left
    assert len(producer.estimates) == 0  # the operation ended: its estimator is gone


def test_a_restarted_operation_is_estimated_from_its_new_run_only(
    coalescing_producer: tuple[Producer, ManualClock], store: EventStore
) -> None:
    producer, clock = coalescing_producer
    for step in range(5):
        clock.now += 1
        producer.emit(progress_at(1000.0 + step * 10, step))  # 10 s per item
    producer.emit(Event("status", "op", status_data("running"), timestamp=1050.0))  # a retry
    for step in range(3):
        clock.now += 1
        producer.emit(progress_at(1060.0 + step, 5 + step))  # 1 s per item from here
    data = events_of(store, "op")[-1]["data"]
    assert (data["eta"], data["rate"]) == (3.0, pytest.approx(1.0))


def test_a_real_task_streams_an_eta_close_to_the_truth(
    run_task: Callable[..., TaskRun],
) -> None:
    """``test.sleep``: 40 steps of 0.1 s on the session's worker, each a progress call with
    counts. Its stored progress events carry eta and rate once estimable, near the truth."""
    run = run_task("test.sleep", {"seconds": 4.0, "steps": 40}, timeout=30)
    progress = [e for e in run.events if e["event_type"] == "progress"]
    end = progress[-1]["timestamp"]
    assert progress[-1]["data"]["current"] == 40
    estimated = [e for e in progress if "eta" in e["data"]]
    assert estimated and estimated[0]["data"]["current"] <= 20  # estimable by half way
    for event in estimated:
        data = event["data"]
        assert data["eta"] >= 0 and data["rate"] > 0
        truth = end - event["timestamp"]
        if 10 <= data["current"] <= 30:
            assert data["eta"] == pytest.approx(truth, rel=0.3, abs=0.3), data
            assert data["rate"] == pytest.approx(10.0, rel=0.3)  # steps per second


async def test_watch_shows_the_time_left_beside_the_bar_until_the_end(
    bridge: Bridge, store: EventStore
) -> None:
    """``taskcast watch``'s view of a running operation, through a real bridge: "~2 min
    left" once a progress event has an eta, and no time left on the final bar."""
    append = functools.partial(asyncio.to_thread, store.append)
    await append(Event("status", "op", status_data("running")))
    await append(Event("progress", "op", {**progress_data(0.5), "eta": 130.0, "rate": 0.004}))
    console = Console(record=True, force_terminal=True, width=100)
    async with TaskcastClient(bridge.url) as client:
        watching = asyncio.create_task(follow(client, "op", console))

        async def shown() -> None:
            while "~2 min left" not in console.export_text(clear=False):
                await asyncio.sleep(0.05)  # Rich redraws the bar 10 times a second

        await asyncio.wait_for(shown(), 10)
        await append(Event("completed", "op", {"status": "completed", "duration": 65.0}))
        assert await asyncio.wait_for(watching, 10) == 0
    bar = console.export_text().splitlines()[-2]
    last_frame = bar[bar.rindex("completed") :]
    assert "100%" in last_frame and "left" not in last_frame, bar


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, ""),
        (-1.0, ""),
        (0.0, "~1 s left"),
        (44.6, "~45 s left"),
        (59.5, "~1 min left"),
        (150.0, "~3 min left"),
        (5400.0, "~2 h left"),
        (3 * 86400.0, "~3 d left"),
    ],
)
def test_eta_text(seconds: float | None, text: str) -> None:
    assert eta_text(seconds) == text
