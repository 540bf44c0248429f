"""Scenario 1: end-to-end latency, from ``self.progress`` in a Celery worker to a client.

100 operations (real tasks on a real worker, coalescing off) report progress
together at a fixed aggregate rate; one WebSocket client subscribed to all of
them records, per progress event, its arrival time minus the event's
``timestamp`` (taken when the task called ``self.progress``; same machine,
same clock). Redis load is recorded too, next to the polling baseline's.
The same rates are then written straight into the store (no Celery) to
separate what the bridge path costs from what the worker side adds.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from taskcast.store import EventStore

from .context import Bench
from .fleet import Fleet
from .probe import probe
from .procs import Endpoint
from .produce import staggered_start
from .receive import ReceiverSpec
from .report import Row
from .tasks import emit_progress

GOAL_P99_MS = 5.0
GOAL_RATE = 1000


def tail_loss(bench: Bench, unfinished: list[tuple[str, int]]) -> int:
    """Events a receiver never got at the end of operations whose terminal event it missed."""
    store = EventStore(bench.client, prefix=bench.prefix)
    lost = 0
    for op, last in unfinished:
        snapshot = store.snapshot(op) or {"last_seq": 0}
        lost += max(1, snapshot["last_seq"] - last)
    return lost


def run_tasks(bench: Bench, queue: str, ops: list[str], count: int, rate: float, task: Any) -> dict:
    """Start one pacing task per operation, interleaved on a shared schedule; wait for all."""
    start_at = time.time() + 1.5  # time for the worker to take all of them off the queue
    per_op = rate / len(ops)
    results = [
        task.apply_async(
            (count, per_op, staggered_start(start_at, j, rate)), task_id=op, queue=queue
        )
        for j, op in enumerate(ops)
    ]
    reports = [r.get(timeout=count / per_op + 60) for r in results]
    seconds = time.time() - start_at
    return {
        "emitted": count * len(ops),
        "seconds": seconds,
        "worst_lag_ms": round(max(r["worst_lag"] for r in reports) * 1000, 1),
    }


def measure(bench: Bench, bridge: Endpoint, queue: str, rate: int) -> Row:
    sizes = bench.sizes
    ops = [str(uuid.uuid4()) for _ in range(sizes.latency_ops)]
    count = max(1, round(rate / len(ops) * sizes.latency_seconds))
    deadline = time.time() + sizes.latency_seconds + 90
    spec = ReceiverSpec(bridge.url, (tuple(ops),), None, deadline)
    with Fleet() as fleet:
        receivers = fleet.receivers([spec])
        connected, errors = receivers.ready(timeout=30)
        if connected != 1:
            raise RuntimeError(f"latency client could not subscribe: {errors}")
        load = bench.redis_load()
        emitted = run_tasks(bench, queue, ops, count, rate, emit_progress)
        redis_load = bench.redis_load_since(load)
        seen = receivers.finish(timeout=max(5.0, deadline - time.time()))
    delivery = seen["delivery"]
    lost = delivery.lost + tail_loss(bench, seen["unfinished"])
    p99 = delivery.histogram.percentile(99) / 1000
    row = Row(
        "1 latency",
        f"{rate:,} ev/s, {len(ops)} ops",
        {
            **delivery.histogram.summary_ms(),
            "achieved_ev_s": round(emitted["emitted"] / emitted["seconds"]),
            "task_lag_ms": emitted["worst_lag_ms"],
            **redis_load,
        },
        lost=lost,
        duplicates=delivery.duplicates,
        note="; ".join(seen["errors"]),
    )
    if rate == GOAL_RATE:
        row.goal, row.met = f"p99 < {GOAL_P99_MS:g} ms", p99 < GOAL_P99_MS and lost == 0
    return row


def measure_direct(bench: Bench, bridge: Endpoint, rate: int) -> Row:
    sizes = bench.sizes
    with Fleet() as fleet:
        delivery, produced = probe(
            bench, bridge, fleet, rate, sizes.latency_seconds, sizes.latency_ops, 2
        )
    return Row(
        "1 latency",
        f"{rate:,} ev/s, {sizes.latency_ops} ops, store-direct producer (no Celery)",
        {**delivery.histogram.summary_ms(), "achieved_ev_s": round(produced["rate"])},
        lost=delivery.lost,
        duplicates=delivery.duplicates,
        note="isolates the bridge path: EventStore.append from 2 processes",
    )


def run(bench: Bench) -> list[Row]:
    queue = bench.worker(progress_interval=0.0)
    bridge = bench.bridge()
    rates = bench.sizes.latency_rates
    try:
        rows = [measure(bench, bridge, queue, rate) for rate in rates]
        return rows + [measure_direct(bench, bridge, rate) for rate in rates]
    finally:
        bench.procs.stop(bridge.child)
