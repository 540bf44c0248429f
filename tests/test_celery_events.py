"""Zero-code mode: Celery's own event stream, for apps that never import taskcast.

The translator is tested directly; then a real worker run with ``-E`` for an
app that never imports taskcast, and two ``taskcast serve --celery-events``
bridges ingesting from one broker, show every event stored exactly once.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
from bridge_helpers import BridgeProcess, frames_until_end
from helpers import WorkerProcess, events_of, summary, wait_finished, wait_for, worker_env

from taskcast.bridge.celery_events import CeleryEventTranslator, exception_type, once_name
from taskcast.events import log_data
from taskcast.store import EventStore
from taskcast.worker_config import Settings

SENT = {
    "type": "task-sent",
    "uuid": "t1",
    "name": "plain.steps",
    "args": "(3,)",
    "kwargs": "{}",
    "retries": 0,
    "queue": "celery",
    "hostname": "gen1@web",
    "pid": 10,
    "timestamp": 1700000000.5,
}


def kinds(translated: list) -> list[str]:
    return [
        f"{event.event_type}:{event.data.get('status', '')}".rstrip(":") for event, _ in translated
    ]


def test_a_task_lifecycle_translates_to_taskcast_events() -> None:
    translator = CeleryEventTranslator(record_args=True)
    worker = {"hostname": "celery@w1", "pid": 42, "uuid": "t1"}
    stream = [
        SENT,
        {**worker, "type": "task-received", "name": "plain.steps", "timestamp": 1.0},
        {**worker, "type": "task-started", "timestamp": 2.0},
        {
            **worker,
            "type": "task-progress",
            "current": 1,
            "total": 3,
            "message": "one",
            "timestamp": 3.0,
        },
        {**worker, "type": "task-succeeded", "result": "3", "runtime": 0.25, "timestamp": 4.0},
    ]
    out = [item for event in stream for item in translator.translate(event)]
    assert kinds(out) == [
        "status:queued",
        "status:queued",
        "status:running",
        "progress",
        "result",
        "completed:completed",
    ]
    queued, _, running, progress, result, completed = (event for event, _ in out)
    assert queued.operation_type == "plain.steps"
    assert queued.metadata == {"args": "(3,)", "kwargs": "{}"}
    assert running.data["details"] == {"worker": "celery@w1"}
    assert (progress.data["current"], progress.data["total"], progress.data["message"]) == (
        1,
        3,
        "one",
    )
    assert progress.data["progress"] == 1 / 3
    assert result.data == {"result": "3"} and completed.data["duration"] == 0.25
    names = [name for _, name in out]
    assert names[0] == names[1] == "queued:t1"  # one queued, from whichever comes first
    assert len(set(names[1:])) == len(out) - 1


def test_task_sent_and_task_received_are_one_queued_whichever_comes_first() -> None:
    received = {
        "type": "task-received",
        "uuid": "t2",
        "name": "plain.add",
        "hostname": "w",
        "timestamp": 5.0,
        "args": "(1, 2)",
    }
    from_worker = CeleryEventTranslator().translate(received)
    from_publisher = CeleryEventTranslator().translate({**SENT, "uuid": "t2"})
    assert kinds(from_worker) == kinds(from_publisher) == ["status:queued"]
    assert from_worker[0][1] == from_publisher[0][1] == "queued:t2"


def test_arguments_are_left_out_unless_asked_for() -> None:
    sent = {**SENT, "kwargs": "{'password': '***'}"}  # Celery sends kwargsrepr, not values
    ((queued, _),) = CeleryEventTranslator().translate(sent)
    assert queued.metadata == {}
    ((shown, _),) = CeleryEventTranslator(record_args=True).translate(sent)
    assert shown.metadata == {"args": "(3,)", "kwargs": "{'password': '***'}"}


def test_the_store_keeps_an_event_appended_under_one_once_name_once(store: EventStore) -> None:
    (queued, once), *_ = CeleryEventTranslator().translate(SENT)
    assert store.append(queued, once) == 1
    assert store.append(queued, once) == -1
    line = replace(queued, event_type="log", data=log_data("info", "twice"))
    assert store.append(line) == 2 and store.append(line) == 3  # without a name, each is stored


def test_failures_retries_revocations_and_unknown_events() -> None:
    translator = CeleryEventTranslator()
    failed = translator.translate(
        {
            "type": "task-failed",
            "uuid": "t",
            "exception": "KeyError('missing')",
            "traceback": "Traceback...",
            "hostname": "w",
            "timestamp": 1.0,
        }
    )
    assert kinds(failed) == ["error:failed"]
    assert failed[0][0].data == {"error": "missing", "error_type": "KeyError", "status": "failed"}
    retried = translator.translate(
        {"type": "task-retried", "uuid": "t", "exception": "OSError('down')", "timestamp": 2.0}
    )
    assert (
        kinds(retried) == ["status:retrying"] and retried[0][0].data["reason"] == "OSError('down')"
    )
    revoked = translator.translate(
        {"type": "task-revoked", "uuid": "t", "terminated": True, "signum": 15, "timestamp": 3}
    )
    assert revoked[0][0].data["status"] == "revoked"
    assert "signal 15" in revoked[0][0].data["error"]
    assert translator.translate({"type": "worker-heartbeat", "hostname": "w"}) == []
    assert translator.translate({"type": "task-started"}) == []  # no task id
    assert exception_type("celery.exceptions.Ignore()") == "Ignore"
    assert exception_type("not a repr") == "Error"


def test_once_names_are_the_same_in_every_receiver_and_differ_between_events() -> None:
    a, b = CeleryEventTranslator(), CeleryEventTranslator()
    assert [n for _, n in a.translate(dict(SENT))] == [n for _, n in b.translate(dict(SENT))]
    assert once_name(SENT) != once_name({**SENT, "timestamp": SENT["timestamp"] + 0.001})


PLAIN_APP = """
    import time

    from celery import Celery

    app = Celery("plain", broker="{broker}", backend="{backend}")
    app.conf.task_send_sent_event = True
    app.conf.task_default_queue = "{queue}"


    @app.task(bind=True)
    def steps(self, n):
        for i in range(n):
            time.sleep(0.5)
            self.send_event("task-progress", current=i + 1, total=n, message=f"step {{i + 1}}")
        return n


    @app.task
    def fails():
        raise KeyError("missing")


    class Oversized(Exception):
        def __repr__(self):  # what Celery's task-failed carries, and the error type in it
            return "E" * 2_000_000 + "('a failure')"


    @app.task(bind=True, name="plain.oversized" + "_" * 1000)
    def oversized(self, user, password):
        self.send_event("task-progress", progress=0.5, message="M" * 2_000_000)
        raise Oversized()
"""

PUBLISH = """
from plain import steps, fails
ok, bad = steps.delay(4), fails.delay()
print(ok.id, bad.id, ok.get(timeout=60), bad.get(timeout=60, propagate=False))
"""

PUBLISH_OVERSIZED = """
from plain import oversized
hidden = "{'user': 'ann', 'password': '***'}"
result = oversized.apply_async(kwargs={"user": "ann", "password": "hunter2"}, kwargsrepr=hidden)
result.get(timeout=60, propagate=False)
print(result.id)
"""

COUNTS = re.compile(r"Celery events ingested: (\d+) stored, (\d+) duplicate, (\d+) rejected")


def plain_project(tmp_path: Path, broker: str, backend: str, queue: str) -> Path:
    """A project whose Celery app never imports taskcast (PLAIN_APP), in ``tmp_path``."""
    project = tmp_path / "plain_project"
    project.mkdir()
    source = PLAIN_APP.format(broker=broker, backend=backend, queue=queue)
    (project / "plain.py").write_text(textwrap.dedent(source))
    return project


@dataclass
class ZeroCode:
    """A plain project's worker (run with ``-E``) and bridges ingesting its events."""

    settings: Settings
    env: dict[str, str]
    project: Path
    bridges: list[BridgeProcess]
    worker: WorkerProcess

    def publish(self, script: str) -> list[str]:
        """Run ``script`` in the project (it publishes and waits); what it printed."""
        published = subprocess.run(
            [sys.executable, "-c", script],
            cwd=self.project,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert published.returncode == 0, published.stderr + self.worker.log()
        return published.stdout.split(maxsplit=3)


@contextmanager
def zero_code(
    task_settings: Settings, prefix: str, tmp_path: Path, bridges: int = 1, **changes: Any
) -> Iterator[ZeroCode]:
    """Bridges started and ingesting, then the worker; stopped in the other order (their
    exit codes asserted 0: a bridge's own failure would be missed otherwise)."""
    base = task_settings.redis_url.rsplit("/", 1)[0]
    broker, queue = f"{base}/11", f"{prefix.rstrip(':')}-plain"
    project = plain_project(tmp_path, broker, f"{base}/12", queue)
    settings = replace(task_settings, prefix=prefix, broker_url=broker, **changes)
    env = {k: v for k, v in worker_env(settings).items() if not k.startswith("CELERY_")}
    started = [
        BridgeProcess("--port", "0", "--celery-events", "--broker", broker, env=env)
        for _ in range(bridges)
    ]
    worker = WorkerProcess(
        env, queue, tmp_path / "plain.log", app="plain", cwd=project, extra_args=("-E",)
    )
    try:
        for bridge in started:
            bridge.wait_listening()
            wait_for(lambda b=bridge: any("ingesting Celery events" in x for x in b.lines))
        worker.start().wait_ready()
        yield ZeroCode(settings, env, project, started, worker)
    finally:
        worker.stop()
        codes = [bridge.stop() for bridge in started]
    assert codes == [0] * bridges


def test_two_ingesting_bridges_store_each_event_of_an_untouched_app_once(
    task_settings: Settings, prefix: str, tmp_path: Path, store: EventStore
) -> None:
    with zero_code(task_settings, prefix, tmp_path, bridges=2) as run:
        ok_id, bad_id, value, error = run.publish(PUBLISH)
        assert (value, error.strip()) == ("4", "'missing'")
        assert wait_finished(store, ok_id)["status"] == "completed"
        failed = wait_finished(store, bad_id)
        assert (failed["status"], failed["error_type"]) == ("failed", "KeyError")
    ok_events = events_of(store, ok_id)
    assert [e["seq"] for e in ok_events] == list(range(1, len(ok_events) + 1))
    assert summary(ok_events) == [
        "status:queued",
        "status:running",
        *["progress"] * 4,
        "result",
        "completed",
    ]
    progress = [e["data"] for e in ok_events if e["event_type"] == "progress"]
    assert [data["current"] for data in progress] == [1, 2, 3, 4]
    # Time left, estimated by the ingesting bridge as a producer does: 1 step per 0.5 s.
    assert progress[-1]["eta"] == 0 and 1.0 <= progress[-1]["rate"] <= 2.5
    assert summary(events_of(store, bad_id)) == ["status:queued", "status:running", "error"]
    stored_events = len(ok_events) + 3
    tallies = []
    for bridge in run.bridges:
        (match,) = [COUNTS.search(line) for line in bridge.lines if COUNTS.search(line)]
        tallies.append((int(match[1]), int(match[2]) + int(match[3])))
    # Each event stored once, though both bridges received all of them: the second
    # append of one is refused as a duplicate (or as after the end, for a terminal one),
    # and so is each task's second queued (task-sent and task-received both mean it).
    assert sum(stored for stored, _ in tallies) == stored_events
    appended = stored_events + 2
    assert all(stored + refused == appended for stored, refused in tallies), tallies


def test_huge_fields_of_an_untouched_app_are_bounded_and_its_secret_stays_hidden(
    task_settings: Settings, prefix: str, tmp_path: Path, store: EventStore
) -> None:
    with zero_code(task_settings, prefix, tmp_path, record_args=True) as run:
        (op,) = run.publish(PUBLISH_OVERSIZED)
        snapshot = wait_finished(store, op)
        frames = asyncio.run(frames_until_end(run.bridges[0].url, op))  # websockets' 1 MiB
    settings = run.settings
    limit = settings.max_event_bytes
    assert max(len(frame.encode()) for frame in frames) <= limit
    stored = [raw for _, raw in store.history(op)]
    assert max(len(raw) for raw in stored) <= limit
    events = [orjson.loads(raw) for raw in stored]
    assert summary(events) == ["status:queued", "status:running", "progress", "error"]
    progress, error = events[2]["data"], events[3]["data"]
    assert progress["truncated"] and progress["message"].startswith("MMM")
    assert (error["error_type"], error["status"]) == ("E" * 125 + "...", "failed")
    assert (snapshot["status"], snapshot["error_type"]) == ("failed", "E" * 125 + "...")
    assert snapshot["operation_type"] == ("plain.oversized" + "_" * 1000)[:253] + "..."
    assert snapshot["metadata"]["kwargs"] == "{'user': 'ann', 'password': '***'}"
    raw_snapshot = store.client.hgetall(store.keys.snapshot(op))
    assert b"hunter2" not in b"".join([*stored, *raw_snapshot.values()])
