"""Trace ids (PROTOCOL.md 1.1 ``trace_id``/``span_id``): events produced inside an
OpenTelemetry span carry its ids, the snapshot keeps the trace, and without a span or
without OpenTelemetry installed nothing is added (nor imported). The bridge hands the
dashboard ``TASKCAST_TRACE_URL``, and the page links the operation's trace with it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from bridge_helpers import RestartableBridge, http_get
from browser_helpers import chromium
from celery import Celery
from helpers import WorkerProcess, events_of, summary, wait_finished, worker_env
from opentelemetry.propagate import inject
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, Tracer
from playwright.sync_api import expect

from taskcast.store import EventStore
from taskcast.tasks import AsyncEmitter, Emitter
from taskcast.tasks.producer import Producer
from taskcast.worker_config import Settings, to_environment


@pytest.fixture
def tracer() -> Tracer:
    """A tracer of its own provider: no global provider is set for the rest of the session."""
    return TracerProvider().get_tracer("taskcast-tests")


def ids_of(span: Span) -> tuple[str, str]:
    context = span.get_span_context()
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def traced(events: list[dict[str, Any]]) -> list[tuple[str | None, str | None]]:
    return [(e.get("trace_id"), e.get("span_id")) for e in events]


def test_emits_inside_a_span_carry_its_ids_and_the_snapshot_keeps_the_trace(
    producer: Producer, store: EventStore, tracer: Tracer
) -> None:
    emitter = Emitter(producer)
    operation_id = emitter.create_operation("report.build")  # before any span: no ids
    with tracer.start_as_current_span("POST /reports") as span:
        emitter.emit_running(operation_id)
        for step in range(1, 21):  # faster than the progress interval: most are held back
            emitter.emit_progress(operation_id, current=step, total=20)
        emitter.emit_log(operation_id, "info", "written")
        emitter.finish(operation_id, {"rows": 20})
    events = events_of(store, operation_id)
    assert summary(events)[:2] == ["status:queued", "status:running"]
    assert summary(events)[-3:] == ["log", "result", "completed"]
    assert "trace_id" not in events[0] and "span_id" not in events[0]
    assert set(traced(events[1:])) == {ids_of(span)}
    trace_id, span_id = ids_of(span)
    assert len(trace_id) == 32 and len(span_id) == 16 and trace_id == trace_id.lower()
    assert store.snapshot(operation_id)["trace_id"] == trace_id


def test_the_snapshot_keeps_the_latest_trace_and_untraced_events_leave_it(
    producer: Producer, store: EventStore, tracer: Tracer
) -> None:
    emitter = Emitter(producer)
    with tracer.start_as_current_span("first request"):
        operation_id = emitter.create_operation("import.csv")
    with tracer.start_as_current_span("second request") as second:
        emitter.emit_running(operation_id)
    emitter.emit_completed(operation_id)
    events = events_of(store, operation_id)
    assert "trace_id" not in events[-1]
    assert store.snapshot(operation_id)["trace_id"] == ids_of(second)[0]


def test_nested_spans_give_each_event_its_innermost_span(
    producer: Producer, store: EventStore, tracer: Tracer
) -> None:
    emitter = Emitter(producer)
    with tracer.start_as_current_span("request") as outer, emitter.operation("export") as op:
        with tracer.start_as_current_span("render") as inner:
            op.status("rendering")
        op.status("uploading")
    statuses = events_of(store, op.id)
    assert traced(statuses) == [ids_of(outer), ids_of(inner), ids_of(outer), ids_of(outer)]
    assert ids_of(inner)[0] == ids_of(outer)[0]


async def test_async_emitter_carries_the_awaiting_tasks_span(
    producer: Producer, store: EventStore, tracer: Tracer
) -> None:
    emitter = AsyncEmitter(producer)
    with tracer.start_as_current_span("websocket handler") as span:
        async with emitter.operation("summarise") as op:
            await op.progress(0.5, "half")
    events = events_of(store, op.id)
    assert summary(events) == ["status:running", "progress", "completed"]
    assert set(traced(events)) == {ids_of(span)}


def test_no_span_no_ids(producer: Producer, store: EventStore) -> None:
    with Emitter(producer).operation("untraced") as op:
        op.progress(0.5)
    events = events_of(store, op.id)
    assert all("trace_id" not in e and "span_id" not in e for e in events)
    assert store.snapshot(op.id)["trace_id"] is None


def test_a_traced_celery_task_carries_the_callers_trace_and_its_own_span(
    task_app: Celery,
    task_settings: Settings,
    prefix: str,
    store: EventStore,
    tracer: Tracer,
    tmp_path: Path,
) -> None:
    """A request handler's span submits the task (its context goes in the message the way
    OpenTelemetry's Celery instrumentation puts it there); the worker runs the task under
    that instrumentation. ``queued`` is the caller's, the rest the task's, one trace."""
    worker = WorkerProcess(
        worker_env(replace(task_settings, prefix=prefix)),
        f"{prefix.rstrip(':')}-traced",
        tmp_path / "worker.log",
        pool="solo",
        app="traced_worker",
    )
    try:
        worker.start().wait_ready()
        with tracer.start_as_current_span("POST /jobs") as request:
            headers: dict[str, str] = {}
            inject(headers)
            sent = task_app.send_task("test.traced", queue=worker.queue, headers=headers)
        snapshot = wait_finished(store, sent.id)
    finally:
        worker.stop()
    events = events_of(store, sent.id)
    assert summary(events) == ["status:queued", "status:running", "progress", "result", "completed"]
    task_span = events[3]["data"]["result"]
    assert traced(events[:1]) == [ids_of(request)]
    assert set(traced(events[1:])) == {(task_span["trace_id"], task_span["span_id"])}
    assert task_span["trace_id"] == ids_of(request)[0] != "0" * 32
    assert task_span["span_id"] != ids_of(request)[1]
    assert snapshot["trace_id"] == ids_of(request)[0]


# A fresh interpreter asks for the current span after importing taskcast (and reports
# what that loaded), then emits through the real producer. Only after that: redis-py
# loads OpenTelemetry itself when it is installed, once it connects.
WITHOUT_OTEL = textwrap.dedent(
    """
    import json, sys
    if sys.argv[1] == "blocked":
        sys.modules["opentelemetry"] = None  # `import opentelemetry...` raises ImportError
    from taskcast.tasks import Emitter
    from taskcast.tracing import current_span_ids
    ids = current_span_ids()
    loaded = [m for m in sys.modules if m.startswith("opentelemetry") and sys.modules[m]]
    with Emitter().operation("no otel") as op:
        op.progress(0.5, "half")
    print(json.dumps({"id": op.id, "ids": ids, "loaded": loaded}))
    """
)


@pytest.mark.parametrize("otel", ["blocked", "installed"])
def test_without_opentelemetry_in_use_events_have_no_ids_and_nothing_is_imported(
    task_settings: Settings, prefix: str, store: EventStore, otel: str
) -> None:
    env = {"PATH": "/usr/bin:/bin", **to_environment(replace(task_settings, prefix=prefix))}
    out = subprocess.run(
        [sys.executable, "-c", WITHOUT_OTEL, otel],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["loaded"] == [] and report["ids"] == [None, None]
    events = events_of(store, report["id"])
    assert summary(events) == ["status:running", "progress", "completed"]
    assert all("trace_id" not in e and "span_id" not in e for e in events)
    assert store.snapshot(report["id"])["trace_id"] is None


TRACE_URL = "http://tracing.example:16686/trace/{trace_id}"


@pytest.fixture
def traced_bridge(task_settings: Settings, prefix: str) -> Iterator[RestartableBridge]:
    """``taskcast serve`` on this test's store with a trace link template."""
    bridge = RestartableBridge(
        worker_env(replace(task_settings, prefix=prefix), TASKCAST_TRACE_URL=TRACE_URL)
    )
    bridge.start()
    yield bridge
    bridge.stop(signal.SIGKILL)


def test_the_dashboard_links_the_operations_trace_through_the_template(
    traced_bridge: RestartableBridge, producer: Producer, tracer: Tracer
) -> None:
    """Followed live (the page showed the operation queued, untraced, before its traced
    events came), and again after a reload, from the snapshot."""
    base = f"http://127.0.0.1:{traced_bridge.port}"
    status, _, body = http_get(f"{base}/api/config")
    assert (status, json.loads(body)) == (200, {"trace_url": TRACE_URL})
    operation_id = Emitter(producer).create_operation("report.build")
    with chromium() as browser:
        page = browser.new_page()
        page.goto(f"{base}/?operation={operation_id}")
        expect(page.get_by_test_id("detail-status")).to_have_text("queued")
        expect(page.get_by_test_id("detail-trace")).to_have_text("–")
        with (
            tracer.start_as_current_span("POST /reports") as span,
            Emitter(producer).operation("report.build", operation_id=operation_id) as op,
        ):
            op.progress(0.5, "half")
        trace_id = ids_of(span)[0]
        link = page.get_by_test_id("trace-link")
        for _ in ("live", "from the snapshot"):
            expect(page.get_by_test_id("detail-status")).to_have_text("completed")
            expect(link).to_have_text(trace_id)
            expect(link).to_have_attribute("href", TRACE_URL.replace("{trace_id}", trace_id))
            page.reload()
        page.close()
    status, _, body = http_get(f"{base}/api/operations/{operation_id}")
    assert json.loads(body)["operation"]["trace_id"] == trace_id


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("http://jaeger:16686/trace/", "must contain {trace_id}"),
        ("javascript:alert('{trace_id}')", "must be an http:// or https:// URL"),
    ],
)
def test_a_bad_trace_url_stops_the_bridge_in_one_line_naming_it(value: str, why: str) -> None:
    # Never the machine's Redis, even if the value were wrongly accepted.
    env = dict(os.environ, TASKCAST_TRACE_URL=value, TASKCAST_REDIS_URL="redis://127.0.0.1:1/0")
    run = subprocess.run(
        [sys.executable, "-m", "taskcast", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    [line] = run.stderr.splitlines()
    assert line.startswith(f"taskcast serve: TASKCAST_TRACE_URL={value!r} is invalid: {why}")
