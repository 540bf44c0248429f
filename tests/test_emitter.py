"""The plain emitter (sync and asyncio) and the producer's safety rules, against real Redis."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace

import pytest
from helpers import ManualClock, events_of, summary, wait_for

from taskcast.embedded_redis import EmbeddedRedis, free_port
from taskcast.events import Event, log_data, progress_data
from taskcast.store import EventStore
from taskcast.tasks import AsyncEmitter, Emitter, StreamingMixin
from taskcast.tasks.producer import Producer
from taskcast.worker_config import Settings


def test_context_manager_emits_running_then_completed_with_duration(producer, store) -> None:
    emitter = Emitter(producer)
    with emitter.operation("report.build", {"user": "ann"}) as op:
        op.progress(0.5, "half way", {"rows": 10})
        op.status("processing", "crunching")
        op.log("info", "hello")
        op.result({"rows": 20})
    events = events_of(store, op.id)
    assert summary(events) == [
        "status:running",
        "progress",
        "status:processing",
        "log",
        "result",
        "completed",
    ]
    assert events[-1]["data"]["duration"] >= 0
    snap = store.snapshot(op.id)
    assert snap["operation_type"] == "report.build" and snap["metadata"] == {"user": "ann"}
    assert snap["status"] == "completed" and snap["result"] == {"rows": 20}


def test_context_manager_emits_error_and_reraises(producer, store) -> None:
    emitter = Emitter(producer)
    with pytest.raises(KeyError), emitter.operation("import.csv") as op:
        op.progress(current=1, total=4)
        raise KeyError("column")
    events = events_of(store, op.id)
    assert summary(events) == ["status:running", "progress", "error"]
    assert events[-1]["data"] == {"error": "'column'", "error_type": "KeyError", "status": "failed"}


def test_create_operation_then_direct_calls_like_ws_manager(producer, store) -> None:
    emitter = Emitter(producer)
    op_id = emitter.create_operation("code_generation", {"user_request": "sort"})
    emitter.emit_progress(op_id, 0.1, "Starting")
    emitter.emit_error(op_id, "Something went wrong", "RuntimeError")
    emitter.emit_progress(op_id, 0.9, "after the end")  # refused: the operation ended
    assert summary(events_of(store, op_id)) == ["status:queued", "progress", "error"]
    assert store.snapshot(op_id)["status"] == "failed"
    assert producer.stats()["rejected"] == 1


def test_tracker_complete_emits_result_and_completed(producer, store) -> None:
    with Emitter(producer).operation("multi_step") as op:
        tracker = op.tracker(total_steps=3)
        for name in ("one", "two", "three", "extra"):
            tracker.step(name)
            time.sleep(0.06)  # longer than the progress interval: nothing coalesced
        assert tracker.complete({"ok": True}) == {"ok": True}
    events = events_of(store, op.id)
    steps = [(e["data"]["current"], e["data"]["total"]) for e in events[1:5]]
    assert steps == [(1, 3), (2, 3), (3, 3), (3, 3)]
    assert summary(events)[-2:] == ["result", "completed"]
    assert len(events) == 7  # the exit added nothing after complete()


def test_unencodable_data_is_dropped_and_counted_not_raised(producer, store) -> None:
    emitter = Emitter(producer)
    op_id = emitter.create_operation("odd")
    emitter.emit_status(op_id, "processing", details={1: "non-string key"})
    emitter.emit_log(op_id, "info", "still streaming")
    assert summary(events_of(store, op_id)) == ["status:queued", "log"]
    assert producer.stats()["invalid"] == 1 and producer.stats()["failed"] == 0


def test_invalid_log_level_is_a_clear_error(producer) -> None:
    with pytest.raises(ValueError, match="log level must be one of"):
        Emitter(producer).emit_log("op", "loud", "x")


async def test_async_emitter_and_streaming_mixin(producer, store) -> None:
    emitter = AsyncEmitter(producer)
    op_id = await emitter.create_operation("async.job", {"n": 1})
    await emitter.emit_progress(op_id, 0.5, "half")
    await emitter.emit_result(op_id, [1, 2])
    await emitter.emit_completed(op_id, 0.1)
    assert summary(events_of(store, op_id)) == ["status:queued", "progress", "result", "completed"]

    class Agent(StreamingMixin):
        streaming_emitter = emitter

        async def process(self, fail: bool) -> str:
            async with self.stream_operation("agent.process", {"fail": fail}) as op:
                await self.emit_status("processing", "thinking")
                await self.emit_log("info", "step")
                if fail:
                    raise RuntimeError("no luck")
                await self.emit_result("answer")
                return op.id

    ok = await Agent().process(False)
    assert summary(events_of(store, ok)) == [
        "status:running",
        "status:processing",
        "log",
        "result",
        "completed",
    ]
    with pytest.raises(RuntimeError):
        await Agent().process(True)
    failed = [s for s in store.list_operations("failed") if s["operation_type"] == "agent.process"]
    assert failed[0]["error"] == "no luck"


async def test_concurrent_async_operations_keep_their_own_streams(producer, store) -> None:
    emitter = AsyncEmitter(producer)

    async def job(n: int) -> str:
        async with emitter.operation("async.parallel", {"n": n}) as op:
            for i in range(5):
                await op.log("info", f"job {n} line {i}")
                await asyncio.sleep(0)
            return op.id

    ids = await asyncio.gather(*(job(n) for n in range(5)))
    for n, op_id in enumerate(ids):
        events = events_of(store, op_id)
        assert [e["data"].get("message") for e in events[1:6]] == [
            f"job {n} line {i}" for i in range(5)
        ]
        assert [e["seq"] for e in events] == list(range(1, 8))


def test_threads_emitting_for_one_operation_never_share_or_skip_a_seq(producer, store) -> None:
    emitter = Emitter(producer)
    op_id = emitter.create_operation("threads")

    def emit(n: int) -> None:
        for i in range(60):  # at most 721 events: under the history bound of 1000
            emitter.emit_progress(op_id, i / 60, f"thread {n}")
            emitter.emit_log(op_id, "debug", f"thread {n} line {i}")

    threads = [threading.Thread(target=emit, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    producer.flush()
    events = events_of(store, op_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert sum(e["event_type"] == "log" for e in events) == 360
    assert store.snapshot(op_id)["last_seq"] == len(events)


def test_quiet_task_gets_its_held_back_progress_flushed_by_the_timer(producer, store) -> None:
    emitter = Emitter(producer)
    op_id = emitter.create_operation("quiet")
    emitter.emit_progress(op_id, 0.1)
    emitter.emit_progress(op_id, 0.2)  # held back: within the interval
    emitter.emit_progress(op_id, 0.3)  # replaces it
    assert [e["data"].get("progress") for e in events_of(store, op_id)] == [None, 0.1]
    wait_for(lambda: len(events_of(store, op_id)) == 3, timeout=2)
    assert events_of(store, op_id)[-1]["data"]["progress"] == 0.3


def test_dead_redis_never_raises_or_blocks_and_keeps_every_event(
    task_settings: Settings, prefix: str
) -> None:
    dead = replace(task_settings, redis_url=f"redis://127.0.0.1:{free_port()}/0", prefix=prefix)
    producer = Producer(dead, backoff=60.0)
    emitter = Emitter(producer)
    try:
        started = time.monotonic()
        op_id = emitter.create_operation("doomed")
        for i in range(50):
            emitter.emit_log(op_id, "info", f"line {i}")
        emitter.emit_completed(op_id)
        assert time.monotonic() - started < 2
        stats = producer.stats()
        # one failed attempt; everything after it waits behind it, in order
        assert stats["failed"] == 1 and stats["outbox"] == 52 and stats["dropped"] == 0
    finally:
        producer.close(timeout=0)


def test_events_queued_while_redis_was_down_are_stored_in_order_when_it_returns(
    task_settings: Settings, prefix: str
) -> None:
    clock = ManualClock()
    with EmbeddedRedis() as server:
        settings = replace(task_settings, redis_url=server.url, prefix=prefix, progress_interval=0)
        producer = Producer(settings, clock=clock, backoff=1.0)
        store = EventStore(producer.store.client, prefix=prefix)
        try:
            assert producer.emit(Event("progress", "op", progress_data(0.1))) == 1
            server.stop()
            assert producer.emit(Event("progress", "op", progress_data(0.2))) == 0
            server.start()
            assert producer.emit(Event("progress", "op", progress_data(0.3))) == 0  # queued behind
            assert producer.stats()["outbox"] == 2
            clock.now = 1.5  # the back-off has passed: the background thread retries
            wait_for(lambda: producer.stats()["outbox"] == 0, timeout=5)
            assert producer.emit(Event("progress", "op", progress_data(0.4))) > 0
            progress = [e["data"]["progress"] for e in events_of(store, "op")]
            assert progress[-3:] == [0.2, 0.3, 0.4]
            stats = producer.stats()
            assert (stats["failed"], stats["retried"], stats["queued"]) == (1, 2, 2)
        finally:
            producer.close()


def test_a_full_outbox_drops_the_oldest_logs_and_says_so_in_the_history(
    task_settings: Settings, prefix: str
) -> None:
    with EmbeddedRedis() as server:
        settings = replace(task_settings, redis_url=server.url, prefix=prefix, outbox_events=10)
        producer = Producer(settings, backoff=0.05)
        store = EventStore(producer.store.client, prefix=prefix)
        try:
            server.stop()
            for number in range(30):
                producer.emit(Event("log", "op", log_data("info", str(number))))
            producer.emit(Event("completed", "op", {}))
            server.start()
            wait_for(lambda: producer.stats()["outbox"] == 0, timeout=10)
        finally:
            producer.close()
        events = events_of(store, "op")
        warning, *kept = events
        assert warning["data"]["level"] == "warning" and "event(s)" in warning["data"]["message"]
        dropped = int(warning["data"]["message"].split()[0])
        assert dropped == producer.stats()["dropped"] == 31 - len(kept)
        lines = [int(e["data"]["message"]) for e in kept if e["event_type"] == "log"]
        assert lines == list(range(30 - len(lines), 30)) and kept[-1]["event_type"] == "completed"


def test_the_flush_timer_never_stores_a_held_value_after_a_later_event(
    task_settings: Settings, prefix: str, store: EventStore
) -> None:
    """Each progress is followed by a log; whether the timer or the log flushes the held
    progress, it must be stored before that log, in every operation, under concurrency."""
    producer = Producer(replace(task_settings, prefix=prefix, progress_interval=0.001))
    emitter = Emitter(producer)

    def work(op_id: str) -> None:
        for i in range(120):
            emitter.emit_progress(op_id, i / 120, f"step {i}")
            time.sleep(0.0009 + 0.0001 * (i % 4))  # wakes around the moment the timer fires
            emitter.emit_log(op_id, "info", f"after step {i}")

    ops = [f"order-{n}" for n in range(4)]
    threads = [threading.Thread(target=work, args=(op,)) for op in ops]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    producer.close()
    for op in ops:
        messages = [e["data"]["message"] for e in events_of(store, op)]
        expected = [text for i in range(120) for text in (f"step {i}", f"after step {i}")]
        assert messages == expected


def test_a_megabyte_event_is_stored_truncated_and_flagged(producer, store) -> None:
    emitter = Emitter(producer)
    with emitter.operation("big.output", {"kwargs": "{'blob': '" + "k" * 500_000 + "'}"}) as op:
        op.log("info", "L" * 1_000_000)
        op.progress(0.5, "M" * 1_000_000, {"rows": list(range(100_000))})
        op.result({"blob": "R" * 1_000_000})
    raw = [payload for _, payload in store.history(op.id)]
    assert max(len(payload) for payload in raw) < producer.settings.max_event_bytes
    events = events_of(store, op.id)
    log, progress, result = events[1], events[2], events[3]
    assert log["data"]["truncated"] and log["data"]["message"].startswith("LLL")
    assert progress["data"]["truncated"] and progress["data"]["progress"] == 0.5
    assert isinstance(progress["data"]["details"], str)  # the dict, cut as its JSON
    assert result["data"]["truncated"]
    assert len(store.snapshot(op.id)["metadata"]["kwargs"]) < 10_000
    small = emitter.create_operation("small")
    emitter.emit_log(small, "info", "fits")
    assert "truncated" not in events_of(store, small)[-1]["data"]
