"""A worker killed outright (whole process group) does not leave its operations running."""

from __future__ import annotations

import os
import signal
import time

from helpers import WorkerProcess, events_of, wait_for

from taskcast.liveness import beat, sweep_lost
from taskcast.tasks import Emitter


def test_sweep_ends_operations_of_a_killed_worker_only(worker_process, task_app, store) -> None:
    worker = worker_process(TASKCAST_HEARTBEAT_INTERVAL="0.2")
    result = task_app.send_task("test.sleep_unacked", kwargs={"seconds": 30}, queue=worker.queue)
    wait_for(lambda: (store.snapshot(result.id) or {}).get("status") == "processing")
    with Emitter().operation("plain.job") as plain:  # no Celery worker: never swept
        time.sleep(1.2)  # longer than max_silence: only beats keep the task's worker alive
        assert sweep_lost(store, max_silence=1.0) == []

        assert worker.process is not None
        os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait()
        assert wait_for(lambda: sweep_lost(store, max_silence=1.0), timeout=5) == [result.id]
        assert store.snapshot(plain.id)["status"] == "running"
    snapshot = store.snapshot(result.id)
    assert snapshot["status"] == "lost" and snapshot["error_type"] == "WorkerLostError"
    assert "stopped sending heartbeats" in snapshot["error"]
    assert events_of(store, result.id)[-1]["data"]["status"] == "lost"
    assert sweep_lost(store, max_silence=1.0) == []  # already ended: nothing twice
    assert store.snapshot(plain.id)["status"] == "completed"


def test_sweep_only_ends_operations_held_by_a_silent_known_worker(task_app, store) -> None:
    emitter = Emitter()
    held, waiting, unknown = (emitter.create_operation("job") for _ in range(3))
    emitter.emit_running(held, worker="gone@host")
    emitter.emit_running(waiting, worker="gone@host")
    emitter.emit_status(waiting, "retrying", "Retry 1")  # a retry waits for any worker
    emitter.emit_running(unknown, worker="never-beat@host")
    beat(store, "gone@host", now=time.time() - 100)
    beat(store, "alive@host")
    assert sweep_lost(store, max_silence=10.0) == [held]
    assert [store.snapshot(op)["status"] for op in (held, waiting, unknown)] == [
        "lost",
        "retrying",
        "running",
    ]


async def test_a_bridge_ends_operations_of_a_silent_worker_for_its_subscribers(
    redis_url, prefix, store
) -> None:
    from bridge_helpers import WsClient, running_bridge

    from taskcast.events import Event, status_data

    beat(store, "gone@host", now=time.time() - 60)
    beat(store, "alive@host")
    for op, worker in (("held-by-gone", "gone@host"), ("held-by-alive", "alive@host")):
        details = {"worker": worker}
        store.append(Event("status", op, status_data("running", details=details)))
    async with running_bridge(redis_url, prefix, heartbeat_interval=0.2) as bridge:
        client = await WsClient.open(bridge.url)
        await client.request("subscribe", operation_id="held-by-gone")
        ended = await client.wait_for(lambda f: f.get("event_type") == "error", timeout=5)
        await client.close()
    assert ended["data"]["status"] == "lost" and "gone@host" in ended["data"]["error"]
    assert store.snapshot("held-by-alive")["status"] == "running"


def test_a_worker_killed_and_restarted_under_its_name_does_not_cover_for_the_dead_one(
    worker_process, task_app, store, tmp_path
) -> None:
    interval = 0.5
    worker = worker_process(TASKCAST_HEARTBEAT_INTERVAL=str(interval))
    result = task_app.send_task("test.sleep_unacked", kwargs={"seconds": 60}, queue=worker.queue)
    wait_for(lambda: (store.snapshot(result.id) or {}).get("status") == "processing")
    assert worker.process is not None
    os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.wait()
    restarted = WorkerProcess(
        worker.env, worker.queue, tmp_path / "restarted.log", name=worker.name
    ).start()
    try:
        restarted.wait_ready()
        # The same hostname beats again at once: silence alone would never end the task.
        max_silence = 1.5 * interval
        ended = wait_for(lambda: sweep_lost(store, max_silence=max_silence), timeout=10)
        assert ended == [result.id]
    finally:
        restarted.stop()
    snapshot = store.snapshot(result.id)
    assert snapshot["status"] == "lost" and "restarted" in snapshot["error"]
