"""Celery tasks that only the benchmarks run: ``celery -A bench.tasks worker``.

The module builds its app from the environment and instruments it, as a
user's project does, so a worker started on it behaves exactly like a
production worker, plus these tasks. Every loop is
bounded by its ``count``; pacing uses an absolute schedule shared by all
tasks of a run (``start_at``, epoch seconds), so 100 tasks together produce
the intended aggregate rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from celery import Celery, Task

from taskcast import ProgressTask, instrument
from taskcast.worker_config import celery_config, load_settings

from .stats import Histogram

app = Celery("taskcast_bench")
app.conf.update(celery_config(load_settings()))
instrument(app)

__all__ = [
    "app",
    "emit_progress",
    "progress_cost",
    "soak_job",
    "update_state_cost",
    "update_state_progress",
]


def _paced(count: int, rate: float, start_at: float, emit: Callable[[int], None]) -> dict:
    """Call ``emit(i)`` for i < count at ``start_at + i / rate``; report the worst lag."""
    worst_lag = 0.0
    for i in range(count):
        due = start_at + i / rate
        now = time.time()
        if due > now:
            time.sleep(due - now)
        else:
            worst_lag = max(worst_lag, now - due)
        emit(i)
    return {"emitted": count, "worst_lag": worst_lag}


def _cost(calls: int, call: Callable[[int], None]) -> dict[str, Any]:
    """Microseconds per ``call(i)``: mean (the cost a loop pays) and the spread."""
    histogram = Histogram()
    started = time.perf_counter()
    for i in range(calls):
        before = time.perf_counter()
        call(i)
        histogram.record(time.perf_counter() - before)
    total = time.perf_counter() - started
    return {
        "calls": calls,
        "mean_us": round(total / calls * 1e6, 2),
        "p50_us": round(histogram.percentile(50), 2),
        "p99_us": round(histogram.percentile(99), 2),
        "max_us": round(histogram.max_us, 2),
    }


@app.task(bind=True, base=ProgressTask, name="bench.emit_progress")
def emit_progress(self: ProgressTask, count: int, rate: float, start_at: float) -> dict:
    """``count`` progress reports at ``rate``/s; the event timestamp marks the emit."""
    return _paced(count, rate, start_at, lambda i: self.progress(current=i + 1, total=count))


@app.task(bind=True, name="bench.update_state_progress")
def update_state_progress(self: Task, count: int, rate: float, start_at: float) -> dict:
    """The celery-progress way: ``update_state(PROGRESS)`` with the emit time in ``meta``."""

    def emit(i: int) -> None:
        meta = {"current": i + 1, "total": count, "emitted_at": time.time()}
        self.update_state(state="PROGRESS", meta=meta)

    return _paced(count, rate, start_at, emit)


@app.task(bind=True, base=ProgressTask, name="bench.progress_cost")
def progress_cost(self: ProgressTask, calls: int) -> dict[str, Any]:
    """What ``self.progress`` costs the task calling it in a tight loop."""
    return _cost(calls, lambda i: self.progress(current=i + 1, total=calls))


@app.task(bind=True, name="bench.update_state_cost")
def update_state_cost(self: Task, calls: int) -> dict[str, Any]:
    """What celery-progress's ``update_state(PROGRESS)`` costs, for comparison."""
    return _cost(
        calls, lambda i: self.update_state(state="PROGRESS", meta={"current": i, "total": calls})
    )


@app.task(bind=True, base=ProgressTask, name="bench.soak_job")
def soak_job(self: ProgressTask, steps: int, delay: float) -> int:
    """The soak's unit of work: ``steps`` progress reports ``delay`` apart."""
    for step in range(1, steps + 1):
        time.sleep(delay)
        self.progress(current=step, total=steps)
    return steps
