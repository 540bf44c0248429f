"""Progress coalescing: at most one stored progress event per operation per interval.

A loop may report progress far faster than anyone can watch it; storing every
call would flood Redis and every subscriber. This module decides, without any
I/O, which progress events to store now and which to hold back. The newest
held-back value is never lost: the producer takes it out before any other
event of the same operation and flushes it on a timer when the task goes
quiet. Only ``progress`` events pass through here; everything else (terminal
events above all) is stored as it comes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from taskcast.events import Event


@dataclass
class _OpState:
    last_stored: float
    pending: Event | None = None


class Coalescer:
    """Per-operation rate limiter for progress events, with an injectable clock.

    Not thread-safe by itself: the producer calls it under its own lock.
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.merged = 0  # progress events replaced by a newer one before being stored
        self._ops: dict[str, _OpState] = {}

    def offer(self, event: Event) -> Event | None:
        """Return ``event`` if it should be stored now, else hold it and return None."""
        if self.interval <= 0:
            return event
        now = self.clock()
        state = self._ops.get(event.operation_id)
        if state is None or now - state.last_stored >= self.interval:
            if state is not None and state.pending is not None:
                self.merged += 1
            self._ops[event.operation_id] = _OpState(last_stored=now)
            return event
        if state.pending is not None:
            self.merged += 1
        state.pending = event
        return None

    def take(self, operation_id: str) -> Event | None:
        """The held-back value of ``operation_id``, to store before its next other event."""
        state = self._ops.get(operation_id)
        if state is None or state.pending is None:
            return None
        pending, state.pending = state.pending, None
        state.last_stored = self.clock()
        return pending

    def due(self) -> list[str]:
        """Operations whose held-back value's interval has passed (the quiet-task timer
        then takes from each, under that operation's lock, to keep its order).

        Also forgets operations with nothing held whose interval has passed:
        their next event would be stored at once anyway, so keeping them only
        costs memory.
        """
        now = self.clock()
        ready: list[str] = []
        for op_id, state in list(self._ops.items()):
            if now - state.last_stored < self.interval:
                continue
            if state.pending is None:
                del self._ops[op_id]
            else:
                ready.append(op_id)
        return ready

    def next_due(self) -> float | None:
        """Clock time at which the earliest held-back value becomes due, or None."""
        times = [s.last_stored + self.interval for s in self._ops.values() if s.pending]
        return min(times) if times else None

    def operations(self) -> list[str]:
        """Every operation with state here (a flush before shutdown takes each)."""
        return list(self._ops)

    def forget(self, operation_id: str) -> None:
        """Drop the state of an operation that ended (after its pending value was taken)."""
        self._ops.pop(operation_id, None)

    def __len__(self) -> int:
        return len(self._ops)
