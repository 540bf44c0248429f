"""Workers that die: a whole worker SIGKILLed and restarted at once, a pool child SIGKILLed."""

from __future__ import annotations

import os
import signal
import time

from bridge_helpers import RestartableBridge
from helpers import WorkerProcess, events_of, wait_finished, wait_for

HEARTBEAT = 2.0


def statuses(stack, operation_id: str) -> list[str]:
    """The statuses an operation went through, from its stored events."""
    return [
        event["data"]["status"]
        for event in events_of(stack.store, operation_id)
        if event["data"].get("status")
    ]


def status_of(stack, operation_id: str) -> str | None:
    return (stack.store.snapshot(operation_id) or {}).get("status")


def test_worker_killed_and_restarted_under_its_name_ends_its_task_lost_within_two_beats(
    stack_factory, worker_process, task_app, tmp_path
) -> None:
    stack = stack_factory(heartbeat_interval=HEARTBEAT)
    bridge = RestartableBridge(stack.env())  # bridges run the lost-worker sweep
    bridge.start()
    try:
        worker = worker_process(settings=stack.settings)
        result = task_app.send_task("test.sleep", kwargs={"seconds": 60}, queue=worker.queue)
        wait_for(lambda: status_of(stack, result.id) == "running", timeout=15)
        assert worker.process is not None
        os.killpg(worker.process.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        worker.process.wait()
        restarted = WorkerProcess(
            worker.env, worker.queue, tmp_path / "restarted.log", name=worker.name
        ).start()
        try:
            wait_for(lambda: status_of(stack, result.id) == "lost", timeout=4 * HEARTBEAT + 5)
            took = time.monotonic() - killed_at
        finally:
            restarted.stop()
    finally:
        bridge.stop()
    # The bound is 2 heartbeat intervals; the slack is for the sweep's own schedule
    # on a shared machine, where the test has already waited for a snapshot poll.
    print(f"lost {took:.2f} s after the kill (bound {2 * HEARTBEAT:.0f} s)")  # for -s runs
    assert took <= 2 * HEARTBEAT + 1.0, f"lost after {took:.1f}s"
    last = events_of(stack.store, result.id)[-1]
    assert last["data"]["status"] == "lost" and last["data"]["error_type"] == "WorkerLostError"


def test_a_task_that_keeps_killing_its_pool_child_retries_then_ends_lost(
    stack_factory, worker_process, task_app
) -> None:
    stack = stack_factory(max_redeliveries=2)
    worker = worker_process(settings=stack.settings)
    result = task_app.send_task("test.sleep", kwargs={"seconds": 60}, queue=worker.queue)
    # A redelivery's ``retrying`` is followed at once by ``running``: count the events,
    # the snapshot may show either.
    for attempt in range(1, 4):
        wait_for(lambda n=attempt: statuses(stack, result.id).count("running") == n, timeout=20)
        (child,) = wait_for(worker.pool_children, timeout=10)
        child.send_signal(signal.SIGKILL)
        if attempt < 3:
            wait_for(lambda n=attempt: statuses(stack, result.id).count("retrying") == n, 20)
    snapshot = wait_finished(stack.store, result.id, timeout=20)
    assert snapshot["status"] == "lost" and snapshot["redeliveries"] == 3
    assert statuses(stack, result.id) == [
        "queued",
        "running",
        "retrying",
        "running",
        "retrying",
        "running",
        "lost",
    ]
    retries = [
        e["data"]
        for e in events_of(stack.store, result.id)
        if e["data"].get("status") == "retrying"
    ]
    assert [(r["reason"], r["details"]["redeliveries"]) for r in retries] == [
        ("worker lost", 1),
        ("worker lost", 2),
    ]
    # Not run a fourth time: Celery discards it as revoked.
    assert wait_for(lambda: result.state == "REVOKED", timeout=20)
