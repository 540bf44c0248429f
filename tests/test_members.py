"""Group and chord aggregation: the pure mapping of member events, and the store's script
driven event by event against a real redis-server (no Celery: every order is chosen here)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis

from taskcast.events import Event, Parent, error_data, progress_data, status_data
from taskcast.members import CHORD_TYPE, GROUP_TYPE, member_change
from taskcast.store import EventStore

GROUP = "g1"


def member(kind: str, op: str, data: dict[str, Any], parent: Parent) -> Event:
    return Event(kind, op, data, operation_type="test.member", parent=parent)


def queued(op: str, size: int = 0, body: str = "", kind: str = GROUP_TYPE) -> Event:
    parent = Parent(GROUP, operation_type=kind, size=size, body_id=body)
    return member("status", op, status_data("queued"), parent)


def running(op: str) -> Event:
    return member("status", op, status_data("running"), Parent(GROUP))


def progress(op: str, value: float) -> Event:
    return member("progress", op, progress_data(value), Parent(GROUP))


def completed(op: str) -> Event:
    return member("completed", op, {"status": "completed", "duration": 1.0}, Parent(GROUP))


def failed(op: str) -> Event:
    return member("error", op, error_data("boom", "ValueError"), Parent(GROUP))


def parent_events(store: EventStore) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for _, raw in store.history(GROUP)]


def progresses(store: EventStore) -> list[float]:
    return [e["data"]["progress"] for e in parent_events(store) if e["event_type"] == "progress"]


def kinds(store: EventStore) -> list[str]:
    return [
        e["data"]["status"] if e["event_type"] == "status" else e["event_type"]
        for e in parent_events(store)
    ]


# --- pure -----------------------------------------------------------------------------------


def test_only_events_that_move_an_aggregating_parent_are_member_changes() -> None:
    group = Parent(GROUP)
    assert member_change(queued("a")) == ("q", "", "")
    assert member_change(running("a")) == ("r", "", "")
    assert member_change(progress("a", 0.25)) == ("p", "0.25", "")
    assert member_change(completed("a")) == ("c", "", "")
    assert member_change(failed("a")) == ("f", "boom", "ValueError")
    assert member_change(member("log", "a", {"level": "info", "message": "x"}, group)) is None
    assert member_change(member("progress", "a", progress_data(), group)) is None
    assert member_change(member("status", "a", status_data("processing"), group)) is None
    assert member_change(Event("progress", "a", progress_data(0.5))) is None
    chain_link = Parent("first", aggregates=False)
    assert member_change(member("completed", "a", {}, chain_link)) is None


def test_a_member_event_writes_its_parent_id_into_its_snapshot() -> None:
    overwrite, _ = progress("a", 0.5).snapshot_changes()
    assert overwrite["parent_id"] == b'"g1"'
    assert "parent_id" not in Event("progress", "a", progress_data(0.5)).snapshot_changes()[0]


# --- the store's script ---------------------------------------------------------------------


def test_group_progress_is_the_mean_and_completes_with_its_last_member(store: EventStore) -> None:
    members = ["a", "b", "c", "d"]
    for n, op in enumerate(members):
        store.append(queued(op, size=len(members) if n == len(members) - 1 else 0))
    for op in members:
        store.append(running(op))
    for step in (0.5, 1.0):
        for op in members:
            store.append(progress(op, step))
    for op in members[:-1]:
        store.append(completed(op))
    assert store.snapshot(GROUP)["status"] == "running"
    store.append(completed(members[-1]))

    snapshot = store.snapshot(GROUP)
    assert snapshot["status"] == "completed" and snapshot["progress"] == 1.0
    assert snapshot["operation_type"] == GROUP_TYPE and snapshot["children"] == members
    assert snapshot["parent_id"] is None and snapshot["finished_at"] is not None
    assert all(store.snapshot(op)["parent_id"] == GROUP for op in members)
    assert kinds(store)[:3] == ["queued", "progress", "running"]
    assert kinds(store)[-1] == "completed"
    values = progresses(store)
    assert values == sorted(values) and values[0] == 0.0 and values[-1] == 1.0
    assert 0.125 in values and 0.5 in values
    events = parent_events(store)
    assert events[-2]["data"]["details"] == {"completed": 4, "failed": 0, "total": 4}
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


def test_no_progress_nor_completion_before_the_group_size_is_known(store: EventStore) -> None:
    """Fast members finishing while the publisher still sends later ones."""
    store.append(queued("a"))
    store.append(running("a"))
    store.append(progress("a", 0.5))
    store.append(completed("a"))
    assert kinds(store) == ["queued", "running"]
    store.append(queued("b", size=2))
    assert progresses(store) == [0.5]
    assert store.snapshot(GROUP)["status"] == "running"
    store.append(running("b"))
    store.append(completed("b"))
    assert store.snapshot(GROUP)["status"] == "completed" and progresses(store)[-1] == 1.0


def test_a_member_going_back_never_takes_the_mean_down(store: EventStore) -> None:
    store.append(queued("a"))
    store.append(queued("b", size=2))
    store.append(progress("a", 0.8))
    store.append(progress("a", 0.2))  # e.g. retrying from the start
    store.append(progress("b", 0.4))
    assert progresses(store) == [0.0, 0.4, 0.6]


def test_a_failed_member_fails_the_group_once(store: EventStore) -> None:
    for n, op in enumerate("abc"):
        store.append(queued(op, size=3 if n == 2 else 0))
    store.append(completed("a"))
    store.append(failed("b"))
    store.append(completed("c"))
    snapshot = store.snapshot(GROUP)
    assert snapshot["status"] == "failed" and snapshot["error_type"] == "ValueError"
    assert snapshot["error"] == "member b failed: boom"
    assert kinds(store).count("error") == 1 and kinds(store)[-1] == "error"


def test_a_chord_body_is_its_last_member(store: EventStore) -> None:
    store.append(queued("h1", kind=CHORD_TYPE))
    store.append(queued("h2", size=3, body="body", kind=CHORD_TYPE))
    assert store.snapshot(GROUP)["children"] == ["h1", "h2", "body"]
    for op in ("h1", "h2"):
        store.append(running(op))
        store.append(completed(op))
    assert store.snapshot(GROUP)["status"] == "running"
    store.append(queued("body"))
    store.append(completed("body"))
    snapshot = store.snapshot(GROUP)
    assert snapshot["status"] == "completed" and snapshot["operation_type"] == CHORD_TYPE
    assert snapshot["children"] == ["h1", "h2", "body"]
    listed = store.list_operations(operation_type="celery.*")
    assert [s["operation_id"] for s in listed] == [GROUP]  # found by its type, like any


def test_members_of_a_group_nobody_recorded_change_nothing(store: EventStore) -> None:
    store.append(running("a"))
    store.append(completed("a"))
    assert store.snapshot(GROUP) is None and store.snapshot("a")["parent_id"] == GROUP


def test_an_aggregate_call_repeated_or_late_is_applied_once(redis_client, prefix) -> None:
    """The Cluster path: the parent's update is a call of its own, after the member's."""
    store = EventStore(redis_client, prefix=prefix)
    store.append(queued("a"))
    store.append(queued("b", size=2))
    event = completed("a")
    seq = store.append(event)
    call = store._member_input(event, ("c", "", ""), seq)
    store._aggregate(*call)
    store._aggregate(*store._member_input(progress("a", 0.3), ("p", "0.3", ""), seq - 1))
    assert progresses(store) == [0.0, 0.5]


@pytest.mark.parametrize("partitions", [1, 4])
def test_an_operation_without_a_parent_takes_the_plain_append(
    redis_client: redis.Redis, prefix: str, partitions: int
) -> None:
    store = EventStore(redis_client, prefix=prefix, partitions=partitions)
    redis_client.script_flush()
    store = EventStore(redis_client, prefix=prefix, partitions=partitions)
    store.append(Event("status", "plain", status_data("queued")))
    store.append(Event("progress", "plain", progress_data(0.5)))
    assert redis_client.script_exists(store._member_append.sha) == [False]
    assert store.snapshot("plain")["parent_id"] is None


def test_a_late_queued_still_tells_the_group_its_size(store: EventStore) -> None:
    """The last member's worker began (and finished) before its publisher stored the
    ``queued`` carrying the group's size: that queued is not stored for the member,
    and the group completes with it all the same."""
    store.append(queued("a"))
    store.append(running("a"))
    store.append(completed("a"))
    store.append(running("b"))
    store.append(completed("b"))
    assert store.snapshot(GROUP)["status"] == "running"  # no size yet: not done
    store.append(queued("b", size=2))
    assert store.snapshot(GROUP)["status"] == "completed"
    assert progresses(store)[-1] == 1.0
    assert store.snapshot("b")["status"] == "completed"
    assert [orjson.loads(raw)["data"].get("status") for _, raw in store.history("b")][0] == (
        "running"
    )
