"""The outbox without Redis: order, bounds, what is merged, dropped and reported."""

from __future__ import annotations

from taskcast.events import Event, error_data, log_data, progress_data, status_data
from taskcast.tasks.outbox import Outbox
from taskcast.tasks.redelivery import judge


def progress(op: str, value: float) -> Event:
    return Event("progress", op, progress_data(value))


def log(op: str, n: int) -> Event:
    return Event("log", op, log_data("info", f"line {n}"))


def drain(box: Outbox) -> list[Event]:
    taken = []
    while (event := box.take()) is not None:
        taken.append(event)
    return taken


def test_events_come_out_in_the_order_they_went_in_and_a_failed_one_goes_back_first() -> None:
    box = Outbox(100)
    events = [log("a", 1), log("b", 1), log("a", 2)]
    for event in events:
        box.put(event)
    first = box.take()
    assert first is events[0]
    box.put_back(first)
    assert drain(box) == events and len(box) == 0


def test_over_capacity_older_progress_is_merged_first_and_the_latest_value_kept() -> None:
    box = Outbox(10)
    for i in range(11):
        box.put(progress("a", i / 10))
    kept = drain(box)
    assert [e.data["progress"] for e in kept] == [1.0]
    assert box.stats.merged == 10 and box.stats.dropped == 0 and box.take_dropped("a") == 0


def test_then_the_oldest_other_events_are_dropped_counted_per_operation() -> None:
    box = Outbox(10)
    box.put(Event("status", "a", status_data("running")))
    for i in range(5):
        box.put(log("a", i))
    for i in range(5):
        box.put(log("b", i))
    kept = drain(box)
    assert len(kept) == 9  # room made down to 90% of the capacity
    assert box.stats.dropped == 2 and box.take_dropped("a") == 2 and box.take_dropped("a") == 0
    assert [e.data.get("message") for e in kept[:2]] == ["line 1", "line 2"]


def test_outcomes_are_never_dropped_even_past_the_capacity() -> None:
    box = Outbox(4)
    outcomes = []
    for op in "abcdef":
        outcomes += [Event("result", op, {"result": op}), Event("error", op, error_data("x"))]
    for event in outcomes:
        box.put(event)
    assert drain(box) == outcomes and box.stats.peak == len(outcomes)


def test_a_warning_that_could_not_be_stored_is_reported_later() -> None:
    box = Outbox(10)
    box.report_later("a", 3)
    box.report_later("a", 0)
    assert box.take_dropped("a") == 3
    box.report_later("a", 3)
    assert box.take_dropped("a") == 3


def snapshot(status: str, redeliveries: int = 0) -> dict:
    return {"status": status, "redeliveries": redeliveries}


def test_a_redelivery_of_a_started_task_is_a_worker_lost_retry_until_the_limit() -> None:
    first = judge("op", snapshot("running"), limit=3)
    assert first is not None and not first.stop and first.redeliveries == 1
    assert first.event.data["status"] == "retrying" and first.event.data["reason"] == "worker lost"
    assert first.event.data["details"] == {"redeliveries": 1} and first.event.kind == b"r"
    swept = judge("op", snapshot("lost", 2), limit=3)
    assert swept is not None and swept.redeliveries == 3 and not swept.stop
    last = judge("op", snapshot("Crunching", 3), limit=3)
    assert last is not None and last.stop and last.event.data["status"] == "lost"


def test_a_redelivery_of_a_task_that_never_started_or_ended_on_its_own_is_not_judged() -> None:
    for status in ("queued", "retrying", "completed", "failed", "revoked"):
        assert judge("op", snapshot(status), limit=3) is None
    assert judge("op", None, limit=3) is None
