"""The event store's Redis stops, restarts with its data, or restarts empty, mid-task."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bridge_helpers import RestartableBridge, WsClient
from helpers import events_of, gap_free, summary, wait_finished, wait_for

from taskcast.keys import producer_totals

LINES = 200
DELAY = 0.04  # about 8 s of work


def test_store_stopped_5s_mid_task_then_back_with_its_data_loses_nothing(
    stack_factory, worker_process, task_app
) -> None:
    stack = stack_factory(persistent=True, heartbeat_interval=1.0)  # reports every second
    worker = worker_process(settings=stack.settings)
    result = task_app.send_task(
        "test.numbered", kwargs={"lines": LINES, "delay": DELAY}, queue=worker.queue
    )
    wait_for(lambda: len(stack.logged_lines(result.id)) >= 20)
    stack.redis.stop()
    time.sleep(5)  # the outage under test, not a wait for a condition
    stack.redis.start()
    assert result.get(timeout=30) == LINES
    snapshot = wait_finished(stack.store, result.id, timeout=30)
    events = events_of(stack.store, result.id)
    assert snapshot["status"] == "completed" and gap_free(events)
    assert stack.logged_lines(result.id) == list(range(1, LINES + 1))
    assert len({event["epoch"] for event in events}) == 1
    # The worker's pool child counted the outage in the counters bridges export.
    totals = wait_for(
        lambda: (
            (t := producer_totals(stack.store.client.hgetall(stack.store.keys.producers)))
            and t.get("retried", 0) >= 50
            and t
        ),
        timeout=10,
    )
    assert totals["failed"] >= 1 and totals["dropped"] == 0 and totals["outbox"] == 0


def test_store_stopped_as_the_task_finishes_still_ends_completed(
    stack_factory, worker_process, task_app, tmp_path: Path
) -> None:
    stack = stack_factory(persistent=True)
    worker = worker_process(settings=stack.settings)
    flag = tmp_path / "finish"
    result = task_app.send_task("test.finish_when", kwargs={"path": str(flag)}, queue=worker.queue)
    wait_for(lambda: (stack.store.snapshot(result.id) or {}).get("status") == "waiting")
    stack.redis.stop()
    flag.touch()
    assert result.get(timeout=15) == str(flag)  # Celery already says SUCCESS
    stack.redis.start()
    snapshot = wait_finished(stack.store, result.id, timeout=15)
    assert snapshot["status"] == "completed" and snapshot["result"] == str(flag)
    assert summary(events_of(stack.store, result.id))[-2:] == ["result", "completed"]


async def test_store_restarted_empty_mid_task_renews_the_epoch_for_subscribers(
    stack_factory, worker_process, task_app
) -> None:
    stack = stack_factory()
    worker = worker_process(settings=stack.settings)
    bridge = RestartableBridge(stack.env())
    bridge.start()
    client = await WsClient.open(bridge.url)
    try:
        result = task_app.send_task(
            "test.numbered", kwargs={"lines": LINES, "delay": DELAY}, queue=worker.queue
        )
        reply = await client.request("subscribe", operation_id=result.id)
        first_epoch = (reply["operation"] or {}).get("epoch")
        await client.wait_for(lambda f: f.get("data", {}).get("message") == "40", timeout=20)
        await asyncio.to_thread(stack.redis.stop)
        await asyncio.to_thread(stack.redis.start)
        renewed = await client.wait_for(
            lambda f: f.get("status") == "subscribed" and "request_id" not in f, timeout=30
        )
        await client.wait_for(lambda f: f.get("event_type") == "completed", timeout=30)
    finally:
        await client.close()
        bridge.stop()
    assert renewed["recovered"] is False
    assert renewed["operation"]["epoch"] not in (None, first_epoch)
    frames = client.frames
    cut = frames.index(renewed)
    before = [f for f in frames[:cut] if f.get("operation_id") == result.id and "seq" in f]
    after = [f for f in frames[cut:] if f.get("operation_id") == result.id and "seq" in f]
    assert {f["epoch"] for f in before} == {first_epoch}
    assert {f["epoch"] for f in after} == {renewed["operation"]["epoch"]}
    assert [f["seq"] for f in after] == list(range(1, len(after) + 1))
    # Every line reached the subscriber once: the old epoch's before the restart,
    # the rest (kept in the worker's outbox while Redis was down) in the new one.
    lines = [int(f["data"]["message"]) for f in before + after if f["event_type"] == "log"]
    assert lines == list(range(1, LINES + 1))
