"""Events waiting for an unreachable store: bounded, in order, and never silently dropped.

Plain Python with no Redis: the producer puts events here while the store is
down and takes them back out, oldest first, when it answers again. Over
``capacity`` the outbox first merges progress (an operation's older progress
values are dropped when a later one waits too, as coalescing would have done),
then drops the oldest events that do not end an operation. Terminal events and
results are never dropped: without them an operation would look unfinished
forever. What was dropped is counted per operation, so the producer can store
a warning in that operation's history when the store is back.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from taskcast.events import TERMINAL_EVENT_TYPES, Event

# Never dropped to make room: an operation's outcome.
KEPT_EVENT_TYPES = TERMINAL_EVENT_TYPES | {"result"}

# Making room frees at least a tenth of the capacity, so the O(n) pass that does
# it runs at most once per capacity/10 events: amortized O(1) per event.
ROOM_FRACTION = 0.9


@dataclass
class OutboxStats:
    """Counters since the outbox was made."""

    queued: int = 0
    merged: int = 0
    dropped: int = 0
    peak: int = 0


class Outbox:
    """An ordered queue of events for the store, at most ``capacity`` long (see module doc).

    Not thread-safe: the producer calls it under its lock.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.stats = OutboxStats()
        self._events: deque[Event] = deque()
        self._unreported: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._events)

    def put(self, event: Event) -> None:
        """Queue ``event`` last, making room if the outbox is over capacity."""
        self._events.append(event)
        self.stats.queued += 1
        if len(self._events) > self.capacity:
            self._make_room()
        self.stats.peak = max(self.stats.peak, len(self._events))

    def take(self) -> Event | None:
        """Remove and return the oldest event, or None when empty."""
        return self._events.popleft() if self._events else None

    def put_back(self, event: Event) -> None:
        """Return an event :meth:`take` gave out, first in line again (its store attempt failed)."""
        self._events.appendleft(event)

    def take_dropped(self, operation_id: str) -> int:
        """How many events of ``operation_id`` were dropped and not yet reported; resets it."""
        return self._unreported.pop(operation_id, 0)

    def report_later(self, operation_id: str, count: int) -> None:
        """Put back a count :meth:`take_dropped` gave out (its warning could not be stored)."""
        if count:
            self._unreported[operation_id] = self._unreported.get(operation_id, 0) + count

    def _make_room(self) -> None:
        target = int(self.capacity * ROOM_FRACTION)
        kept = self._merge_progress()
        excess = len(kept) - target
        if excess > 0:
            survivors: deque[Event] = deque()
            for event in kept:
                if excess > 0 and event.event_type not in KEPT_EVENT_TYPES:
                    excess -= 1
                    self.stats.dropped += 1
                    self.report_later(event.operation_id, 1)
                else:
                    survivors.append(event)
            kept = survivors
        self._events = kept

    def _merge_progress(self) -> deque[Event]:
        """The events without progress that a later progress of the same operation replaces."""
        later_progress: set[str] = set()
        kept: deque[Event] = deque()
        for event in reversed(self._events):
            if event.event_type == "progress":
                if event.operation_id in later_progress:
                    self.stats.merged += 1
                    continue
                later_progress.add(event.operation_id)
            kept.appendleft(event)
        return kept
