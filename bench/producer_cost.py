"""Scenario 4: what one ``self.progress`` call adds to a task, inside a real worker.

A task calls the helper in a tight loop and times every call; it runs on a
worker with coalescing off (every call is one Redis round trip) and on one
with the default 50 ms interval (most calls only replace a held-back value).
celery-progress's ``update_state`` is timed the same way for comparison.
"""

from __future__ import annotations

import uuid

from .context import Bench
from .report import Row
from .tasks import progress_cost, update_state_cost

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
    return rows
