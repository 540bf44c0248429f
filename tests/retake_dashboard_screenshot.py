"""Retakes ``docs/dashboard.png``: the dashboard after a minute and a half of traffic.

Not part of the suite (its name does not start with ``test_``: it takes that long,
and rewrites a file under version control); run it by name:

    python -m pytest tests/retake_dashboard_screenshot.py

A simulated workload goes straight into the store (operations of a few types
that start, report progress with a time left, and end, at a rate that rises
and falls, so the chart has a shape), and near the end a real worker runs a
group of four tasks. The page, open all along, expands the group and follows
one running operation; then the screenshot is taken.
"""

from __future__ import annotations

import math
import random
import threading
import time
import uuid
from dataclasses import dataclass, field

from bridge_helpers import RestartableBridge
from celery import Celery, group
from helpers import ROOT_DIR
from playwright.sync_api import Page, expect
from test_dashboard_browser import browser, open_dashboard, page, page_url, row_of, wait_state
from test_groups import steps

from taskcast.events import Event, status_data
from taskcast.store import EventStore

__all__ = ["browser", "page"]  # the browser tests' fixtures, used here by name


TRAFFIC_SECONDS = 90
MAX_PNG_BYTES = 300_000
KINDS = {
    # operation type: what its progress messages say
    "reports.export_csv": "Exporting rows",
    "media.transcode": "Encoding segment",
    "search.reindex": "Indexing batch",
    "billing.invoice_run": "Invoicing account",
}
WORKERS = ["celery@worker-1", "celery@worker-2", "celery@worker-3"]


@dataclass
class Simulated:
    operation_id: str
    kind: str
    started: float
    steps: int
    step: int = 0
    fails: bool = False
    log: list[str] = field(default_factory=list)


def simulate(store: EventStore, starting: threading.Event, stop: threading.Event) -> None:
    """While ``starting``, starts operations at a rate that swings between about one every
    10 s and two a second; each reports a step every 0.7 s or so with its time left, and one
    in eight fails."""
    rng = random.Random(14)
    running: list[Simulated] = []
    began = time.time()
    while not stop.is_set():
        now = time.time()
        rate = 1.1 + math.sin((now - began) / 12)
        if starting.is_set() and rng.random() < rate * 0.25:
            kind = rng.choice(sorted(KINDS))
            op = Simulated(f"{uuid.uuid4()}", kind, now, steps=rng.randint(20, 60))
            op.fails = rng.random() < 0.125
            running_on = status_data("running", details={"worker": rng.choice(WORKERS)})
            store.append(Event("status", op.operation_id, running_on, operation_type=kind))
            running.append(op)
        for op in list(running):
            if rng.random() < 0.35:
                advance(store, op, now)
            if op.step >= op.steps:
                running.remove(op)
        stop.wait(0.25)


def advance(store: EventStore, op: Simulated, now: float) -> None:
    op.step += 1
    words = KINDS[op.kind]
    if op.fails and op.step > op.steps // 2:
        error = {"status": "failed", "error_type": "TimeoutError", "error": "upstream timed out"}
        store.append(Event("error", op.operation_id, error))
        op.step = op.steps
        return
    if op.step >= op.steps:
        store.append(Event("completed", op.operation_id, {"duration": now - op.started}))
        return
    progress = op.step / op.steps
    left = (now - op.started) / progress * (1 - progress) if op.step > 3 else None
    data = {
        "progress": progress,
        "current": op.step,
        "total": op.steps,
        "message": f"{words} {op.step}/{op.steps}",
    }
    if left is not None:
        data.update(eta=left, rate=progress / (now - op.started))
    store.append(Event("progress", op.operation_id, data))


def test_retake_docs_dashboard_png(
    page: Page,
    restartable_bridge: RestartableBridge,
    worker_process,
    task_app: Celery,
    store: EventStore,
) -> None:
    worker = worker_process(concurrency=3)
    open_dashboard(page, page_url(restartable_bridge))
    starting, stop = threading.Event(), threading.Event()
    starting.set()
    traffic = threading.Thread(target=simulate, args=(store, starting, stop))
    traffic.start()
    try:
        stop.wait(TRAFFIC_SECONDS - 15)
        starting.clear()  # the group stays the newest row, at the top
        members = [
            steps(task_app, worker.queue, count=40, delay=0.4)
            for _ in range(4)
        ]
        result = group(members).apply_async()
        row = f"#operations > {row_of(result.id)}"
        wait_state(page, f"{row}[data-status=running]")
        page.locator(f"{row} > [data-testid=operation-expand]").click()
        stop.wait(12)
        followed = page.locator(
            "#operations > [data-testid=operation-row][data-status=running]"
            f":not([data-operation-id='{result.id}'])"
            ":has([data-testid=operation-eta]:not(:empty))"
        ).first
        followed.locator(".op-link").click()
        wait_state(page, "#detail[data-status=running] [data-testid=detail-eta]:not(:empty)")
        page.get_by_test_id("operations").evaluate("list => { list.scrollTop = 0; }")
        expect(page.locator(f"{row} > .op-link")).to_be_in_viewport(ratio=1)
        path = ROOT_DIR / "docs" / "dashboard.png"
        page.screenshot(path=path, animations="disabled")
    finally:
        stop.set()
        traffic.join()
    expect(page.get_by_test_id("chart-events")).not_to_have_attribute("data-peak", "0")
    assert path.stat().st_size < MAX_PNG_BYTES, f"{path} is {path.stat().st_size} bytes"
