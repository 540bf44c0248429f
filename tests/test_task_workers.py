"""Real ``celery -A worker_tasks worker`` subprocesses: concurrency, faults, outages and bounds."""

from __future__ import annotations

import signal
import time
from collections import defaultdict
from dataclasses import replace

import redis
from celery import Celery
from helpers import events_of, gap_free, summary, wait_finished, wait_for

from taskcast import tasks
from taskcast.embedded_redis import EmbeddedRedis
from taskcast.store import EventStore


def wait_status(store: EventStore, op_id: str, status: str, timeout: float = 15.0) -> None:
    wait_for(lambda: (store.snapshot(op_id) or {}).get("status") == status, timeout)


def test_two_workers_emitting_concurrently_never_duplicate_or_skip_a_seq(
    worker_process, task_app, store: EventStore
) -> None:
    workers = [worker_process(concurrency=2), worker_process(concurrency=2)]
    sent = [
        task_app.send_task(name, kwargs=kwargs, queue=worker.queue)
        for worker in workers
        for name, kwargs in [
            ("test.threaded_logs", {"threads": 6, "per_thread": 40}),
            ("test.threaded_logs", {"threads": 4, "per_thread": 40}),
            ("demo.generate_code", {"lines": 200}),
            ("demo.web_search", {"queries": 20}),
        ]
    ]
    for result in sent:
        assert wait_finished(store, result.id, timeout=30)["status"] == "completed"
    ran_on = set()
    for result in sent:
        events = events_of(store, result.id)
        assert gap_free(events), summary(events)
        assert summary(events)[:2] == ["status:queued", "status:running"]
        assert summary(events)[-2:] == ["result", "completed"]
        ran_on.add(store.snapshot(result.id)["worker"])
    assert len(ran_on) == 2
    logs = [e for e in events_of(store, sent[0].id) if e["event_type"] == "log"]
    assert len(logs) == 240 and len({e["data"]["message"] for e in logs}) == 240
    # The live stream carries every stored event once, each operation's seqs in order.
    per_op: dict[str, list[int]] = defaultdict(list)
    for live in store.live_tail("0", count=100_000):
        per_op[live.operation_id].append(live.seq)
    for result in sent:
        assert per_op[result.id] == list(range(1, store.snapshot(result.id)["last_seq"] + 1))


def test_task_whose_worker_process_is_killed_ends_lost(worker_process, task_app, store) -> None:
    worker = worker_process(pool="prefork", concurrency=1)
    result = task_app.send_task("test.sleep_unacked", kwargs={"seconds": 30}, queue=worker.queue)
    wait_status(store, result.id, "processing")
    (child,) = worker.pool_children()
    child.send_signal(signal.SIGKILL)
    snapshot = wait_finished(store, result.id, timeout=20)
    assert snapshot["status"] == "lost"
    last = events_of(store, result.id)[-1]
    assert last["event_type"] == "error" and last["data"]["status"] == "lost"
    assert last["data"]["error_type"] == "WorkerLostError"


def test_revoked_running_task_ends_revoked(worker_process, task_app, store) -> None:
    worker = worker_process(pool="prefork", concurrency=1)
    result = task_app.send_task("test.sleep", kwargs={"seconds": 30}, queue=worker.queue)
    wait_for(lambda: len(events_of(store, result.id)) >= 3)  # queued, running, progress
    task_app.control.revoke(result.id, terminate=True, signal="SIGKILL")
    snapshot = wait_finished(store, result.id, timeout=20)
    assert snapshot["status"] == "revoked"
    events = events_of(store, result.id)
    assert events[-1]["data"]["error_type"] == "TaskRevokedError" and gap_free(events)


def test_task_completes_fast_while_the_event_store_is_down_and_its_events_follow(
    task_settings, prefix, task_app, celery_worker
) -> None:
    with EmbeddedRedis() as store_redis:
        producer = tasks.configure(replace(task_settings, redis_url=store_redis.url, prefix=prefix))
        store = EventStore(producer.store.client, prefix=prefix)
        before = task_app.send_task("demo.generate_code", kwargs={"lines": 10})
        assert before.get(timeout=10)["validation_passed"] is True
        wait_finished(store, before.id)

        store_redis.stop()
        started = time.monotonic()
        during = task_app.send_task("demo.orchestrate", kwargs={"steps": 5})
        assert during.get(timeout=10)["steps"][0] == "Initialize"
        assert time.monotonic() - started < 5
        stats = tasks.producer_stats()
        assert stats["failed"] >= 1 and stats["outbox"] >= 8 and stats["dropped"] == 0

        store_redis.start()  # empty: the private server keeps nothing on disk
        snapshot = wait_finished(store, during.id)
        events = events_of(store, during.id)
        assert snapshot["status"] == "completed" and gap_free(events)
        assert summary(events)[:2] == ["status:queued", "status:running"]
        assert summary(events)[-2:] == ["result", "completed"]
        assert tasks.producer_stats()["outbox"] == 0
        after = task_app.send_task("test.plain_add", kwargs={"a": 1, "b": 2})
        assert after.get(timeout=10) == 3
        wait_finished(store, after.id)  # Celery stores the result before task_success runs
        assert summary(events_of(store, after.id)) == [
            "status:queued",
            "status:running",
            "result",
            "completed",
        ]


def test_subprocess_worker_survives_a_dead_event_store_port(
    worker_process, task_settings, prefix, task_app
) -> None:
    dead = replace(task_settings, redis_url="redis://127.0.0.1:1/0", prefix=prefix)
    worker = worker_process(settings=dead)
    started = time.monotonic()
    result = task_app.send_task("demo.generate_code", kwargs={"lines": 30}, queue=worker.queue)
    assert result.get(timeout=15)["lines"] == 32
    assert time.monotonic() - started < 10
    assert "could not store events" in worker.log()


def test_history_bound_and_ttl_hold_through_the_task_path(
    task_settings, prefix, task_app, redis_client
) -> None:
    tasks.configure(
        replace(task_settings, prefix=prefix, history_maxlen=5, history_ttl=40, progress_interval=0)
    )
    store = EventStore(redis_client, prefix=prefix)
    result = task_app.send_task("demo.generate_code", kwargs={"lines": 20})
    snapshot = wait_finished(store, result.id)
    history = events_of(store, result.id)
    assert len(history) == 5
    assert [e["seq"] for e in history] == list(
        range(snapshot["last_seq"] - 4, snapshot["last_seq"] + 1)
    )
    assert snapshot["event_count"] == snapshot["last_seq"] > 20
    for key in (store.keys.snapshot(result.id), store.keys.history(result.id)):
        assert 0 < redis_client.ttl(key) <= 40


def test_a_worker_survives_its_single_redis_restarting_twice_mid_task(
    worker_process, task_settings, prefix
) -> None:
    """The default setup: broker, results and events on one Redis that restarts (empty)."""
    with EmbeddedRedis() as single:
        settings = replace(
            task_settings,
            redis_url=single.url,
            broker_url=single.url,
            result_backend=single.url,
            prefix=prefix,
        )
        worker = worker_process(settings=settings)
        publisher = Celery("restart_publisher", broker=single.url, backend=single.url)
        running = publisher.send_task(
            "test.sleep", kwargs={"seconds": 4, "steps": 40}, queue=worker.queue
        )
        store = EventStore(redis.Redis.from_url(single.url), prefix=prefix)
        wait_for(lambda: (store.snapshot(running.id) or {}).get("status") == "running")
        for _ in range(2):
            single.stop()
            single.start()
        assert worker.process is not None and worker.process.poll() is None, worker.log()
        after = publisher.send_task("test.plain_add", kwargs={"a": 2, "b": 3}, queue=worker.queue)
        assert after.get(timeout=30) == 5  # the worker reconnected and takes new work
        assert worker.process.poll() is None and "Unrecoverable error" not in worker.log()
        store.client.close()
