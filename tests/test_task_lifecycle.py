"""Lifecycle and helper events of real tasks run by a real (in-process) Celery worker."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timezone

import pytest
from celery import Celery
from helpers import INSTRUMENTED_SUMMARY, events_of, summary, wait_finished
from kombu.exceptions import OperationalError

from taskcast import tasks
from taskcast.embedded_redis import free_port
from taskcast.store import EventStore
from taskcast.tasks.lifecycle import publish_metadata, seconds_until


def assert_gap_free(events: list[dict]) -> None:
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


def test_instrumented_task_streams_every_event_in_order(run_task, store: EventStore) -> None:
    run = run_task("test.instrumented")
    assert run.result.get(timeout=5) == {"answer": 42}
    assert summary(run.events) == INSTRUMENTED_SUMMARY
    assert_gap_free(run.events)
    queued, running, processing, quarter, log, counts, result, completed = run.events
    assert queued["data"]["details"]["queue"] == "celery"
    assert running["data"]["details"]["worker"] == run.snapshot["worker"]
    assert processing["data"] == {
        "status": "processing",
        "message": "Warming up",
        "details": {"phase": 1},
    }
    assert quarter["data"]["progress"] == 0.25 and quarter["data"]["details"] == {"k": "v"}
    assert log["data"] == {"level": "warning", "message": "Something to note"}
    assert counts["data"]["current"] == 3 and counts["data"]["progress"] == 0.75
    assert result["data"] == {"result": {"answer": 42}}
    assert completed["data"]["status"] == "completed" and completed["data"]["duration"] >= 0

    snap = run.snapshot
    assert snap["operation_type"] == "test.instrumented"
    assert snap["status"] == "completed" and snap["last_seq"] == completed["seq"] == 8
    assert snap["updated_at"] == snap["finished_at"] == completed["timestamp"]
    assert snap["result"] == {"answer": 42} and snap["progress"] == 1.0
    assert snap["metadata"] == {}  # no arguments unless TASKCAST_RECORD_ARGS asks for them


def test_uninstrumented_task_gets_lifecycle_events(run_task) -> None:
    run = run_task("test.plain_add", {"a": 2, "b": 3})
    assert summary(run.events) == ["status:queued", "status:running", "result", "completed"]
    assert run.events[2]["data"]["result"] == 5
    assert run.snapshot["operation_type"] == "test.plain_add"


def test_failing_task_ends_with_error_status_failed(run_task) -> None:
    run = run_task("demo.flaky", {"steps": 10, "fail_at": 0.5})
    assert run.events[-1]["event_type"] == "error"
    assert run.events[-1]["data"] == {
        "error": "Code validation failed at step 5 of 10",
        "error_type": "CodeValidationError",
        "status": "failed",
    }
    assert summary(run.events)[-2] == "log"
    assert (
        run.snapshot["status"] == "failed" and run.snapshot["error_type"] == "CodeValidationError"
    )
    assert run.snapshot["progress"] == 0.4  # the last progress before the failure was kept
    assert_gap_free(run.events)


def test_traceback_is_sent_only_when_configured(run_task) -> None:
    first = run_task("demo.flaky", {"fail_at": 0.1})
    assert "traceback" not in first.events[-1]["data"]
    tasks.configure(replace(tasks.get_settings(), send_traceback=True))
    run = run_task("demo.flaky", {"fail_at": 0.1})
    assert "Traceback" in run.events[-1]["data"]["traceback"]
    assert "CodeValidationError" in run.events[-1]["data"]["traceback"]


def test_retried_task_shows_retrying_then_runs_again_under_the_same_id(run_task) -> None:
    run = run_task("demo.retry_once", {"countdown": 0.2})
    assert run.result.get(timeout=5) == {"attempts": 2}
    kinds = summary(run.events)
    assert kinds.count("status:queued") == 1
    retry_at = kinds.index("status:retrying")
    assert kinds[:retry_at] == ["status:queued", "status:running", "progress"]
    assert kinds[retry_at + 1] == "status:running"
    assert kinds[-2:] == ["result", "completed"]
    data = run.events[retry_at]["data"]
    assert 0 < data["retry_in"] <= 0.2 and data["details"] == {"retries": 1}
    assert data["reason"] == "ConnectionError: upstream service timed out"
    assert {e["operation_id"] for e in run.events} == {run.id}
    assert_gap_free(run.events)


def test_expired_task_ends_revoked(task_app, store: EventStore) -> None:
    result = task_app.send_task("test.plain_add", kwargs={"a": 1, "b": 1}, expires=-1)
    snapshot = wait_finished(store, result.id)
    assert snapshot["status"] == "revoked"
    events = events_of(store, result.id)
    assert summary(events) == ["status:queued", "error"]
    assert events[1]["data"]["status"] == "revoked"
    assert events[1]["data"]["error_type"] == "TaskRevokedError"


def test_big_result_is_truncated_in_the_event_but_whole_in_celery(run_task) -> None:
    run = run_task("test.unserializable")
    data = run.events[-2]["data"]
    assert data["truncated"] is True and data["serializable"] is True
    assert len(data["result"]) <= 65536
    assert len(run.result.get(timeout=5)) == 200_000


def test_celery_progress_update_state_streams_progress(run_task) -> None:
    run = run_task("test.celery_progress_style", {"total": 4})
    progress = [e["data"] for e in run.events if e["event_type"] == "progress"]
    assert [(p["current"], p["total"], p["message"]) for p in progress] == [
        (1, 4, "row 1"),
        (2, 4, "row 2"),
        (3, 4, "row 3"),
        (4, 4, "row 4"),
    ]
    assert progress[-1]["progress"] == 1.0
    assert run.result.get(timeout=5) == "done"


def test_sample_tasks_show_their_work(run_task) -> None:
    code = run_task("demo.generate_code", {"lines": 5})
    assert summary(code.events)[:3] == ["status:queued", "status:running", "status:processing"]
    assert "status:validating" in summary(code.events)
    assert code.snapshot["result"]["validation_passed"] is True
    search = run_task("demo.web_search", {"queries": 3})
    assert search.events[-3]["data"]["details"]["results_found"] == 9
    steps = run_task("demo.orchestrate", {"steps": 4, "delay": 0.06})  # > progress interval
    step_events = [e["data"] for e in steps.events if e["event_type"] == "progress"]
    assert [d["details"]["step"] for d in step_events[:4]] == [1, 2, 3, 4]
    assert steps.snapshot["result"] == {
        "steps": ["Initialize", "Fetch inputs", "Process", "Validate"]
    }


def test_queued_metadata_links_a_task_to_the_task_that_started_it() -> None:
    headers = {"id": "child", "argsrepr": "(1,)", "kwargsrepr": "{}", "eta": None}
    assert publish_metadata(headers | {"root_id": "child"}) == {}  # arguments are off
    linked = publish_metadata(headers | {"root_id": "root", "parent_id": "parent"})
    assert linked["root_id"] == "root" and linked["parent_id"] == "parent"


def test_retry_in_counts_down_to_the_eta() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert seconds_until("2025-01-01T12:00:02.500000+00:00", now) == 2.5
    assert seconds_until("2025-01-01T11:00:00+00:00", now) == 0.0
    assert seconds_until(None, now) == 0.0


def stored_bytes(store: EventStore, operation_id: str) -> bytes:
    """Everything the store keeps of an operation: its events and its snapshot's fields."""
    snapshot = store.client.hgetall(store.keys.snapshot(operation_id))
    return b"".join(raw for _, raw in store.history(operation_id)) + b"".join(snapshot.values())


def test_task_arguments_are_recorded_only_when_asked_and_as_celerys_reprs(
    run_task, store: EventStore
) -> None:
    secret = {"user": "ann", "password": "hunter2"}
    quiet = run_task("test.sign_in", secret)
    assert quiet.result.get(timeout=5) == "ann"
    assert quiet.snapshot["metadata"] == {} and b"hunter2" not in stored_bytes(store, quiet.id)

    tasks.configure(replace(tasks.get_settings(), record_args=True))
    shown = run_task("test.sign_in", secret, kwargsrepr="{'user': 'ann', 'password': '***'}")
    assert shown.snapshot["metadata"] == {
        "args": "()",
        "kwargs": "{'user': 'ann', 'password': '***'}",
    }
    assert b"hunter2" not in stored_bytes(store, shown.id)
    plain = run_task("test.plain_add", {"a": 1, "b": 2})  # no override: Celery's own repr
    assert plain.snapshot["metadata"]["kwargs"] == "{'a': 1, 'b': 2}"


def test_a_publish_that_raises_leaves_no_operation_waiting(
    task_app, run_task, store: EventStore
) -> None:
    """The broker is unreachable: ``apply_async`` raises to its caller, and taskcast shows
    no operation "Waiting for a worker" that no worker will ever get. The thread's next
    publish is recorded as usual."""
    unreachable = Celery("unreachable", broker=f"redis://127.0.0.1:{free_port()}/0")
    tasks.instrument(unreachable)

    @unreachable.task(name="test.never_published")
    def never_published() -> None: ...

    task_id = f"unpublished-{uuid.uuid4()}"
    with pytest.raises(OperationalError):
        never_published.apply_async(task_id=task_id, retry=False)
    assert store.snapshot(task_id) is None
    run = run_task("test.plain_add", {"a": 1, "b": 1})
    assert summary(run.events)[0] == "status:queued"
    assert store.snapshot(task_id) is None
