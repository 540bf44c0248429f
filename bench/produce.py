"""Load generator that writes events straight into the store (``EventStore.append``).

Used where the scenario is about the bridge, not about Celery: the producer
must outrun what it feeds, and a Celery task loop would itself be the limit.
Events are paced on an absolute schedule (event k at ``start + k / rate``),
so a producer that falls behind catches up instead of drifting, and the
report says how far behind it fell.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

import redis

from taskcast.events import Event, progress_data
from taskcast.store import EventStore


@dataclass(frozen=True)
class ProducerSpec:
    """``events_per_op`` progress events for each of ``op_ids``, ``rate`` events/s in total."""

    redis_url: str
    prefix: str
    op_ids: tuple[str, ...]
    rate: float
    events_per_op: int
    terminal: bool = False  # end every operation with ``completed`` (one more seq)
    go_timeout: float = 60.0


def schedule_offsets(total: int, rate: float) -> list[float]:
    """Seconds after the start at which each of ``total`` events is due."""
    return [k / rate for k in range(total)]


def staggered_start(start_at: float, index: int, rate: float) -> float:
    """When the ``index``-th of several tasks pacing ``rate`` events/s together starts.

    Tasks that each pace their share from the same instant emit at the same
    moments: n tasks make a burst of n events every n / rate seconds, not one
    event every 1 / rate. Offsetting task ``index`` by ``index / rate``
    interleaves them into the even stream that ``schedule_offsets`` gives a
    single producer, so Celery and store-direct runs carry the same load.
    """
    return start_at + index / rate


def produce(spec: ProducerSpec, go: MpEvent, start_at: Any, results: Any) -> None:
    """Process entry point: report ready, wait for ``go``, emit on schedule, report."""
    store = EventStore(redis.Redis.from_url(spec.redis_url), prefix=spec.prefix)
    store.client.ping()
    results.put(("ready", None))
    if not go.wait(spec.go_timeout):
        results.put(("done", {"emitted": 0, "error": "never told to start"}))
        return
    start = start_at.value
    total = spec.events_per_op * len(spec.op_ids)
    offsets = schedule_offsets(total, spec.rate)
    ops = spec.op_ids
    worst_lag = 0.0
    for k, offset in enumerate(offsets):
        due = start + offset
        now = time.time()
        if due > now:
            time.sleep(due - now)
        else:
            worst_lag = max(worst_lag, now - due)
        index = k // len(ops)
        data = progress_data(index / spec.events_per_op, "bench", {"i": index})
        store.append(Event("progress", ops[k % len(ops)], data))
    finished = time.time()
    if spec.terminal:
        for op in ops:
            store.append(Event("completed", op, {"status": "completed", "duration": 0.0}))
    results.put(
        ("done", {"emitted": total, "start": start, "end": finished, "worst_lag": worst_lag})
    )
    store.client.close()
