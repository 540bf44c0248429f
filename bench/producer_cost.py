"""Scenario 4: what one ``self.progress`` call adds to a task, inside a real worker.

A task calls the helper in a tight loop and times every call; it runs on a
worker with coalescing off (every call is one Redis round trip) and on one
with the default 50 ms interval (most calls only replace a held-back value).
celery-progress's ``update_state`` is timed the same way for comparison.

Then what many task threads of one process pay together: 100 threads (a
``-P threads -c 100`` worker) emit at the latency scenario's rate, first
through one shared producer, as tasks do, then through one producer each.
The time a thread spends in the call is how long its event waits before it
is in Redis, so the difference is the cost of sharing the producer.
"""

from __future__ import annotations

import threading
import time
import uuid

from taskcast.tasks.emitter import Emitter
from taskcast.tasks.producer import Producer
from taskcast.worker_config import load_settings

from .context import Bench
from .produce import staggered_start
from .report import Row
from .stats import Histogram
from .tasks import _paced, progress_cost, update_state_cost

CASES = (
    ("self.progress, coalescing off", 0.0, progress_cost),
    ("self.progress, coalescing 50 ms", 0.05, progress_cost),
    ("baseline update_state(PROGRESS)", 0.0, update_state_cost),
)


def run(bench: Bench) -> list[Row]:
    calls = bench.sizes.cost_calls
    rows = []
    for case, interval, task in CASES:
        queue = bench.worker(progress_interval=interval)
        result = task.apply_async((calls,), task_id=str(uuid.uuid4()), queue=queue)
        figures = result.get(timeout=120)
        rows.append(Row("4 producer cost", case, figures, note="microseconds per call"))
    return rows + run_threads(bench)


def threaded_emits(bench: Bench, shared: bool) -> Histogram:
    """Duration of every emit call of 100 paced threads (coalescing off)."""
    sizes = bench.sizes
    threads, rate = sizes.latency_ops, sizes.latency_rates[0]
    count = max(1, round(rate / threads * sizes.latency_seconds))
    settings = load_settings(bench.env(0.0))
    producers = [Producer(settings) for _ in range(1 if shared else threads)]
    for producer in producers:  # connect now: a first call's connect is not its emit cost
        producer.store.client.ping()
    histograms = [Histogram() for _ in range(threads)]
    start_at = time.time() + 0.5

    def work(n: int) -> None:
        emitter, op = Emitter(producers[0 if shared else n]), str(uuid.uuid4())

        def emit(i: int) -> None:
            before = time.perf_counter()
            emitter.emit_progress(op, current=i + 1, total=count)
            histograms[n].record(time.perf_counter() - before)

        _paced(count, rate / threads, staggered_start(start_at, n, rate), emit)

    workers = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=sizes.latency_seconds + 60)
    for producer in producers:
        producer.close()
    total = Histogram()
    for histogram in histograms:
        total.merge(histogram)
    return total


def run_threads(bench: Bench) -> list[Row]:
    sizes = bench.sizes
    rate, threads = sizes.latency_rates[0], sizes.latency_ops
    rows = []
    for shared in (True, False):
        histogram = threaded_emits(bench, shared)
        rows.append(
            Row(
                "4 producer cost",
                f"{threads} threads at {rate:,} ev/s, "
                + ("one shared producer (as in a worker)" if shared else "one producer per thread"),
                histogram.summary_ms(),
                note="ms a thread spends in emit_progress (lock wait + Redis round trip)",
            )
        )
    return rows
