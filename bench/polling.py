"""Baseline: progress the celery-progress way, ``update_state`` plus polling.

The same load as the latency scenario at its lowest rate (each task reports
on the same schedule), but reported with ``update_state(state="PROGRESS")``
into the result backend, and read by one poller per operation calling
``AsyncResult(id).info`` every 500 ms. A poll sees only the newest update;
the ones before it were overwritten unseen ("seen" is that share). Latency
is, for every update, the time until a poll first reflected it (or a newer
one): the newest carries its emit time in ``meta``, the overwritten ones
are dated back along the task's fixed schedule.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from celery.result import AsyncResult

from .context import Bench
from .latency import run_tasks
from .report import Row
from .stats import Histogram
from .tasks import update_state_progress


def poll(
    bench: Bench,
    ops: list[str],
    per_op_rate: float,
    interval: float,
    stop: threading.Event,
    deadline: float,
) -> tuple[Histogram, int]:
    """Poll every operation every ``interval`` s (staggered) until ``stop`` or ``deadline``.

    Returns the latency of every update and how many updates a poll read itself.
    """
    histogram = Histogram()
    read = 0
    last_seen = dict.fromkeys(ops, 0)
    start = time.time()
    rounds = 0
    while not stop.is_set() and time.time() < deadline:
        for k, op in enumerate(ops):
            due = start + rounds * interval + k * interval / len(ops)
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            info = AsyncResult(op, app=bench.app).info
            current = info.get("current", 0) if isinstance(info, dict) else 0
            if current > last_seen[op]:
                now = time.time()
                for update in range(last_seen[op] + 1, current + 1):
                    emitted = info["emitted_at"] - (current - update) / per_op_rate
                    histogram.record(now - emitted)
                last_seen[op] = current
                read += 1
        rounds += 1
    return histogram, read


def run(bench: Bench) -> list[Row]:
    sizes = bench.sizes
    rate = sizes.latency_rates[0]
    queue = bench.worker(progress_interval=0.0)
    ops = [str(uuid.uuid4()) for _ in range(sizes.latency_ops)]
    count = max(1, round(rate / len(ops) * sizes.latency_seconds))
    stop = threading.Event()
    deadline = time.time() + sizes.latency_seconds + 90
    load = bench.redis_load()
    with ThreadPoolExecutor(1) as pool:
        per_op = rate / len(ops)
        polled = pool.submit(poll, bench, ops, per_op, sizes.poll_interval, stop, deadline)
        try:
            emitted = run_tasks(bench, queue, ops, count, rate, update_state_progress)
        finally:
            stop.set()
        histogram, read = polled.result()
    redis_load = bench.redis_load_since(load)
    seen_pct = round(read / emitted["emitted"] * 100, 1)
    reflected_pct = round(histogram.count / emitted["emitted"] * 100, 1)
    return [
        Row(
            "baseline polling",
            f"{rate:,} ev/s, {len(ops)} ops, poll {sizes.poll_interval * 1000:g} ms",
            {
                **histogram.summary_ms(),
                "seen_pct": seen_pct,
                "reflected_pct": reflected_pct,
                **redis_load,
            },
            note="celery-progress style: update_state + AsyncResult.info polling; "
            "latency = until a poll reflects the update; seen = read by a poll itself; "
            "reflected < 100 %: the last updates were replaced by SUCCESS before a poll",
        )
    ]
