"""The event store against a real redis-server: seq, exact JSON, snapshot, bounds."""

from __future__ import annotations

import threading
import time

import orjson
import pytest
import redis

from taskcast.events import Event, error_data, log_data, progress_data, status_data
from taskcast.store import LATE_QUEUED, EventStore


def status(op: str, name: str, **kw) -> Event:
    return Event("status", op, status_data(name, **kw), operation_type="demo.job")


def test_append_assigns_seq_and_stores_protocol_json(store: EventStore) -> None:
    assert store.append(status("op1", "queued")) == 1
    assert store.append(status("op1", "running", details={"worker": "celery@a"})) == 2
    assert (
        store.append(Event("progress", "op1", progress_data(current=3, total=4, message="m"))) == 3
    )
    history = store.history("op1")
    assert [seq for seq, _ in history] == [1, 2, 3]
    event = orjson.loads(history[2][1])
    assert set(event) == {"event_type", "operation_id", "seq", "epoch", "timestamp", "data"}
    assert event["seq"] == 3 and event["operation_id"] == "op1"
    assert event["epoch"] == store.snapshot("op1")["epoch"]
    assert event["data"] == {
        "progress": 0.75,
        "message": "m",
        "details": {},
        "current": 3,
        "total": 4,
    }
    live = store.live_tail("0")
    assert [(e.operation_id, e.seq, e.operation_type) for e in live] == [
        ("op1", 1, "demo.job"),
        ("op1", 2, "demo.job"),
        ("op1", 3, "demo.job"),
    ]
    assert {e.epoch for e in live} == {event["epoch"]}
    assert live[2].payload == history[2][1]


def test_snapshot_follows_events(store: EventStore) -> None:
    store.append(status("op", "queued"))
    store.append(status("op", "running", details={"worker": "celery@a"}))
    store.append(Event("progress", "op", progress_data(0.5, "half")))
    store.append(Event("log", "op", {"level": "info", "message": "a log"}))
    snap = store.snapshot("op")
    assert snap["status"] == "running" and snap["progress"] == 0.5
    assert snap["message"] == "half" and snap["worker"] == "celery@a"
    assert snap["operation_type"] == "demo.job" and snap["event_count"] == snap["last_seq"] == 4
    store.append(Event("result", "op", {"result": {"x": 1}}))
    store.append(Event("completed", "op", {"status": "completed", "duration": 1.0}))
    snap = store.snapshot("op")
    assert snap["status"] == "completed" and snap["result"] == {"x": 1}
    assert snap["finished_at"] is not None and snap["progress"] == 1.0
    assert store.snapshot("missing") is None


def test_a_status_without_a_message_clears_the_last_one(store: EventStore) -> None:
    """A task that never says anything must not keep saying "Waiting for a worker"."""
    store.append(Event("status", "quiet", status_data("queued", "Waiting for a worker")))
    store.append(Event("status", "quiet", status_data("running")))
    store.append(Event("completed", "quiet", {"status": "completed", "duration": 0.1}))
    assert store.snapshot("quiet")["message"] == ""
    store.append(Event("status", "talks", status_data("running")))
    store.append(Event("progress", "talks", progress_data(0.5, "half way")))
    store.append(Event("progress", "talks", progress_data(0.6)))
    assert store.snapshot("talks")["message"] == "half way"  # progress alone keeps it


def test_nothing_is_stored_after_a_terminal_event_until_the_task_runs_again(
    store: EventStore,
) -> None:
    store.append(status("op", "running"))
    assert store.snapshot("op")["error_type"] is None
    store.append(Event("error", "op", error_data("boom", "ValueError")))
    assert store.append(Event("progress", "op", progress_data(0.9))) == 0
    snap = store.snapshot("op")
    assert snap["status"] == "failed" and snap["error_type"] == "ValueError"
    assert store.append(status("op", "running")) == 3
    snap = store.snapshot("op")
    assert snap["status"] == "running" and snap["finished_at"] is None
    assert snap["error"] is None and snap["error_type"] is None


def test_a_queued_for_an_operation_still_queued_stores_nothing(store: EventStore) -> None:
    """An id recorded before its message was sent is queued once, not again when sent."""
    assert store.append(status("op", "queued")) == 1
    assert store.append(status("op", "queued")) == -1
    assert store.append(status("op", "running")) == 2
    assert store.append(Event("error", "op", error_data("boom", "ValueError"))) == 3
    assert store.append(status("op", "queued")) == 4  # sent again after it ended
    assert store.snapshot("op")["status"] == "queued"


def test_concurrent_appends_never_share_or_skip_a_seq(redis_client, prefix) -> None:
    store = EventStore(redis_client, prefix=prefix, history_maxlen=5000)

    def emit(n: int) -> None:
        for i in range(n):
            store.append(Event("progress", "shared", progress_data(i / n)))

    threads = [threading.Thread(target=emit, args=(200,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seqs = [seq for seq, _ in store.history("shared")]
    assert seqs == list(range(1, 1601))
    assert [orjson.loads(p)["seq"] for _, p in store.history("shared")] == seqs


def test_history_is_trimmed_and_expires(redis_client, prefix) -> None:
    store = EventStore(redis_client, prefix=prefix, history_maxlen=10, history_ttl=30)
    for i in range(25):
        store.append(Event("progress", "op", progress_data(i / 25)))
    history = store.history("op")
    assert [seq for seq, _ in history] == list(range(16, 26))
    assert store.snapshot("op")["event_count"] == 25
    for key in (store.keys.snapshot("op"), store.keys.history("op")):
        assert 0 < redis_client.ttl(key) <= 30


def test_list_operations_newest_first_with_status_filter(store: EventStore) -> None:
    for i in range(5):
        store.append(Event("status", f"op{i}", status_data("running"), timestamp=1000.0 + i))
    store.append(Event("completed", "op1", {"status": "completed", "duration": 1}, timestamp=2000))
    ids = [s["operation_id"] for s in store.list_operations()]
    assert ids == ["op1", "op4", "op3", "op2", "op0"]
    assert [s["operation_id"] for s in store.list_operations("finished")] == ["op1"]
    assert [s["operation_id"] for s in store.list_operations("active", limit=2)] == ["op4", "op3"]
    assert [s["operation_id"] for s in store.list_operations(limit=2, offset=1)] == ids[1:3]


def typed(op: str, operation_type: str, at: float, name: str = "running") -> Event:
    return Event("status", op, status_data(name), timestamp=at, operation_type=operation_type)


@pytest.mark.parametrize("partitions", [1, 4])
def test_list_operations_by_type_exact_or_prefix(
    redis_client: redis.Redis, prefix: str, partitions: int
) -> None:
    store = EventStore(redis_client, prefix=prefix, partitions=partitions)
    kinds = ["reports.daily", "reports.weekly", "mail.send", "reportsx"]
    for i in range(12):
        store.append(typed(f"op{i}", kinds[i % 4], 1000.0 + i))
    store.append(Event("completed", "op4", {"status": "completed"}, timestamp=2000.0))

    def ids(**filters: object) -> list[str]:
        return [s["operation_id"] for s in store.list_operations(**filters)]

    assert ids(operation_type="reports.daily") == ["op4", "op8", "op0"]
    assert ids(operation_type="reports.*") == ["op4", "op9", "op8", "op5", "op1", "op0"]
    assert ids(operation_type="reports*") == ["op4", "op11", "op9", "op8", "op7", "op5"] + [
        "op3", "op1", "op0"
    ]
    assert ids(operation_type="*", limit=3) == ["op4", "op11", "op10"]
    assert ids(operation_type="reports.*", status="active", limit=2) == ["op9", "op8"]
    assert ids(operation_type="reports.*", status="finished") == ["op4"]
    assert ids(operation_type="reports.*", limit=2, offset=2) == ["op8", "op5"]
    assert ids(operation_type="reports") == [] and ids(operation_type="nothing.*") == []


def test_an_operation_is_listed_by_type_once_its_type_is_known(store: EventStore) -> None:
    store.append(Event("progress", "late", progress_data(0.1)))  # an emitter's, untyped
    assert store.list_operations(operation_type="late.*") == []
    store.append(Event("progress", "late", progress_data(0.2), operation_type="late.kind"))
    assert [s["operation_id"] for s in store.list_operations(operation_type="late.*")] == ["late"]


def test_expired_operations_leave_their_type_index_and_dead_types_their_names(
    redis_client: redis.Redis, prefix: str
) -> None:
    """What prunes the main index prunes the type indexes: nothing expired stays listed,
    and a type whose operations all expired stops taking room."""
    store = EventStore(redis_client, prefix=prefix, history_ttl=30)
    now = time.time()
    store.append(typed("gone", "old.kind", now - 100))
    store.append(typed("stale", "new.kind", now - 100))
    store.append(typed("fresh", "new.kind", now))  # a first event: it prunes

    assert redis_client.zrange(store.keys.types("x"), 0, -1) == [b"new.kind"]
    (old_index, new_index) = store.keys.type_indexes([(0, "old.kind"), (0, "new.kind")])
    assert not redis_client.exists(old_index)
    assert redis_client.zrange(new_index, 0, -1) == [b"fresh"]
    assert redis_client.zrange(store.keys.index("x"), 0, -1) == [b"fresh"]
    assert [s["operation_id"] for s in store.list_operations(operation_type="*")] == ["fresh"]


def test_history_after_since(store: EventStore) -> None:
    for i in range(5):
        store.append(Event("progress", "op", progress_data(i / 5)))
    assert [seq for seq, _ in store.history("op", since=3)] == [4, 5]
    assert store.history("op", since=5) == []


def test_a_history_redis_lost_starts_a_new_later_epoch(store: EventStore) -> None:
    """Redis restarted empty while the task kept emitting: seqs begin again, in a new epoch."""
    for name in ("queued", "running"):
        store.append(status("op", name))
    first = store.snapshot("op")["epoch"]
    store.client.delete(store.keys.snapshot("op"), store.keys.history("op"))
    assert store.append(Event("progress", "op", progress_data(0.5))) == 1
    second = store.snapshot("op")["epoch"]
    assert second != first and len(second) == len(first) and second > first
    assert [orjson.loads(e)["epoch"] for _, e in store.history("op")] == [second]


def test_a_store_gone_back_in_time_does_not_hand_out_a_seq_twice(store: EventStore) -> None:
    """Redis came back from an older snapshot: this writer had seq 3, the store says 1."""
    for name in ("queued", "running", "step"):
        store.append(status("op", name))
    first = store.snapshot("op")["epoch"]
    store.client.hset(store.keys.snapshot("op"), "last_seq", 1)
    store.client.xtrim(store.keys.history("op"), maxlen=1)
    assert store.append(status("op", "later")) == 1
    snapshot = store.snapshot("op")
    assert snapshot["epoch"] > first and snapshot["status"] == "later"
    assert [orjson.loads(e)["data"]["status"] for _, e in store.history("op")] == ["later"]
    other_writer = EventStore(store.client, prefix=store.keys.prefix)
    assert other_writer.append(status("op", "more")) == 2  # no ledger: no new epoch
    assert store.snapshot("op")["epoch"] == snapshot["epoch"]


def test_an_append_retried_after_its_reply_was_lost_is_stored_once(store: EventStore) -> None:
    """The producer retries with the same token when it cannot know if Redis ran the append."""
    first = Event("log", "op", log_data("info", "once"), token=1)
    assert store.append(first) == 1
    assert store.append(first) == 1  # the retry: already there
    assert store.append(Event("log", "op", log_data("info", "next"), token=2)) == 2
    other_writer = EventStore(store.client, prefix=store.keys.prefix)
    assert other_writer.append(Event("log", "op", log_data("info", "theirs"), token=1)) == 3
    assert [orjson.loads(e)["data"]["message"] for _, e in store.history("op")] == [
        "once",
        "next",
        "theirs",
    ]
    assert not any(name.startswith("_") for name in store.snapshot("op"))


def test_a_queued_stored_after_its_run_began_is_not_stored(store: EventStore) -> None:
    """A publisher stores queued once the broker has the message, and a fast worker can
    begin (or even end) the task first: the late queued neither puts a running task
    back to waiting nor reopens a finished one, and queued never follows running."""
    store.append(Event("status", "fast", status_data("running")))
    assert store.append(Event("status", "fast", status_data("queued"))) == LATE_QUEUED
    assert store.snapshot("fast")["status"] == "running"
    store.append(Event("completed", "fast", {"status": "completed"}))

    store.append(Event("status", "faster", status_data("running")))
    store.append(Event("completed", "faster", {"status": "completed"}))
    assert store.append(Event("status", "faster", status_data("queued"))) == LATE_QUEUED
    snapshot = store.snapshot("faster")
    assert (snapshot["status"], snapshot["last_seq"]) == ("completed", 2)
    # The same id published again later is a new run, which its queued opens.
    assert store.append(Event("status", "faster", status_data("queued"))) == 3
    assert store.snapshot("faster")["status"] == "queued"


def test_a_queued_stored_in_time_is_the_runs_first_event(store: EventStore) -> None:
    assert store.append(Event("status", "timely", status_data("queued"))) == 1
    assert store.append(Event("status", "timely", status_data("running"))) == 2
    store.append(Event("completed", "timely", {"status": "completed"}))
    assert store.append(Event("status", "timely", status_data("queued"))) == 4  # a re-run
