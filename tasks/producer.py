"""The producer side of the store: emits that never break or stall the task, and lose nothing.

A task's progress is a side channel; losing Redis must not lose the task. So
every emit here swallows store errors and is bounded by a short socket
timeout. An event the store did not take waits in the process's
:class:`~taskcast.tasks.outbox.Outbox`, and so does every event after it
until the outbox is empty again (that keeps each operation's order), without
the task ever waiting: a daemon thread retries the oldest event every
back-off interval and stores the rest in order once one goes through.
Terminal events are retried for as long as the process lives and, when it
stops, for up to ``shutdown_timeout`` seconds, so an operation does not stay
``running`` because Redis blinked.

Progress events go through a :class:`~taskcast.tasks.coalesce.Coalescer`; the
same thread flushes values held back when a task goes quiet. Each progress
event that is stored (not each call) gets its operation's ``eta`` and ``rate``
from :class:`~taskcast.estimate.Estimates`, so merged calls cost nothing more.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import replace

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from taskcast.estimate import Estimates, estimated_data
from taskcast.events import TERMINAL_EVENT_TYPES, Event, EventTooLarge, capped, log_data
from taskcast.store import EventStore
from taskcast.tasks.cancel import ENDED
from taskcast.tasks.coalesce import Coalescer
from taskcast.tasks.outbox import Outbox
from taskcast.worker_config import Settings

logger = logging.getLogger("taskcast.producer")

BACKOFF_SECONDS = 1.0
REPORT_SECONDS = 10.0  # between counter reports when heartbeats are off
LOG_EVERY_SECONDS = 10.0
LOCK_STRIPES = 64

_live_producers: weakref.WeakSet[Producer] = weakref.WeakSet()


class Producer:
    """Thread-safe, fail-safe event emission for one store (one Redis, one prefix)."""

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
        backoff: float = BACKOFF_SECONDS,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.backoff = backoff
        self.store = EventStore.connect(
            settings,
            socket_timeout=settings.emit_timeout,
            socket_connect_timeout=settings.emit_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self.coalescer = Coalescer(settings.progress_interval, clock)
        self.estimates = Estimates()
        self.outbox = Outbox(settings.outbox_events)
        self.counters = {"stored": 0, "rejected": 0, "failed": 0, "invalid": 0, "retried": 0}
        # While events wait in the outbox (or the drainer holds one), every new
        # event queues behind them; the drainer next tries at _retry_at.
        self._inflight = False
        self._retry_at = 0.0
        self._tokens = itertools.count(1)
        self._last_log = float("-inf")
        self._unlogged_failures = 0
        self._next_report = 0.0
        self._closed = False
        self._reset_threading()
        _live_producers.add(self)
        atexit.register(self.close)

    def _reset_threading(self) -> None:
        """Fresh locks and no flusher: used at start and in a forked child."""
        # _lock guards the coalescer, the counters and the back-off state, never a
        # Redis call; a stripe lock, taken first, keeps one operation's events in
        # order while appends of different operations run in parallel.
        self._lock = threading.RLock()
        self.store.new_writer()
        self._stripes = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self._wake = threading.Condition(self._lock)
        # One drainer at a time (the background thread, or close() at shutdown),
        # or two could store one operation's queued events out of order.
        self._draining = threading.Lock()
        self._flusher: threading.Thread | None = None
        self._flusher_idle = False

    def _stripe(self, operation_id: str) -> threading.Lock:
        return self._stripes[hash(operation_id) % LOCK_STRIPES]

    def emit(self, event: Event) -> int:
        """Store ``event`` (or hold it back if it is progress); return its seq, 0 when it
        was held back or dropped, or :data:`ENDED` when its operation has ended.

        Never raises because of Redis. A held-back progress value is stored
        before any other event of its operation, so the order is kept.
        """
        with self._stripe(event.operation_id):
            with self._lock:
                batch = self._due_with(event)
            seq = 0
            for ready in batch:
                seq = self._store(ready)
            return seq if batch and batch[-1] is event else 0

    def _due_with(self, event: Event) -> list[Event]:
        """What to store now for ``event``, oldest first (under ``_lock``)."""
        if event.event_type == "progress":
            if self.coalescer.offer(event) is None:
                self._ensure_flusher()
                if self._flusher_idle:
                    self._wake.notify()
                return []
            return [event]
        pending = self.coalescer.take(event.operation_id)
        if event.event_type in TERMINAL_EVENT_TYPES:
            self.coalescer.forget(event.operation_id)
        return [event] if pending is None else [pending, event]

    def flush(self, operation_ids: list[str] | None = None) -> None:
        """Store held-back progress now: of ``operation_ids``, or of every operation."""
        if operation_ids is None:
            with self._lock:
                operation_ids = self.coalescer.operations()
        for operation_id in operation_ids:
            with self._stripe(operation_id):
                with self._lock:
                    pending = self.coalescer.take(operation_id)
                if pending is not None:
                    self._store(pending)

    def stats(self) -> dict[str, int]:
        """Counters: stored, rejected (operation had ended), failed (Redis errors),
        invalid (data not encodable as JSON, or an id too long for the size limit),
        coalesced (progress merged into a later value), retried (stored from the
        outbox), and of the outbox:
        outbox (events not stored yet: waiting, or being stored from it now),
        outbox_peak, queued (events that ever waited), merged (progress merged away
        to make room), dropped (other events dropped to make room, each reported in
        its operation's history)."""
        with self._lock:
            box = self.outbox.stats
            return {
                **self.counters,
                "coalesced": self.coalescer.merged,
                "outbox": len(self.outbox) + int(self._inflight),
                "outbox_peak": box.peak,
                "queued": box.queued,
                "merged": box.merged,
                "dropped": box.dropped,
            }

    def close(self, timeout: float | None = None) -> None:
        """Flush, retry what waits in the outbox for up to ``timeout`` seconds (default:
        the ``shutdown_timeout`` setting), stop the background thread and disconnect.

        Safe to call more than once (atexit calls it too)."""
        if self._closed:
            return
        self.flush()
        waiting = self.drain_until(
            self.settings.shutdown_timeout if timeout is None else timeout
        )
        if waiting:
            logger.warning(
                "taskcast stopped with %d event(s) the store at %s never took",
                waiting,
                self.settings.redis_url,
            )
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        flusher = self._flusher
        if flusher is not None and flusher is not threading.current_thread():
            flusher.join(timeout=2)
        self.store.client.close()

    def drain_until(self, timeout: float) -> int:
        """Store what waits in the outbox, retrying for up to ``timeout`` seconds;
        returns how many events still wait."""
        deadline = self.clock() + timeout
        while not self._drain() and self.clock() + self.backoff <= deadline:
            time.sleep(self.backoff)
        with self._lock:
            return len(self.outbox) + int(self._inflight)

    def _store(self, event: Event) -> int:
        """Append now, or queue behind what already waits; on a store error, queue it."""
        with self._lock:
            event = self._numbered(event)
            if self._inflight or len(self.outbox):
                self.outbox.put(event)
                return 0
        try:
            seq = self._append(event)
        except (redis.RedisError, OSError) as exc:
            with self._lock:
                self.outbox.put(event)
                self._store_failed(exc)
            return 0
        return seq or ENDED

    def _numbered(self, event: Event) -> Event:
        """``event`` with its token and, for progress, its estimate (under ``_lock``).

        Done here, in the order the operation's events are stored, so a held-back
        value is estimated at its own timestamp and an operation's estimator is
        dropped by the event that ends or restarts it, after its last progress.
        """
        data = estimated_data(self.estimates, event)
        return replace(event, token=next(self._tokens), data=data)

    def _append(self, event: Event) -> int:
        """One append and its accounting; raises only on store errors.

        The event is stored as :func:`~taskcast.events.capped` bounds it. Data that
        cannot be encoded as JSON (e.g. non-string dict keys), or an operation id too
        long for any event to fit, loses this event only: the store is fine, so nothing
        waits or backs off.
        """
        try:
            seq = self.store.append(capped(event, self.settings.max_event_bytes))
        except (orjson.JSONEncodeError, EventTooLarge) as exc:
            with self._lock:
                self.counters["invalid"] += 1
                self._log_failure(exc, self.clock())
            return 0
        with self._lock:
            self.counters["stored" if seq else "rejected"] += 1
        self._report()
        return seq

    def _report(self) -> None:
        """Every heartbeat interval at most, and only while the store answers, write this
        process's counters where bridges read them for ``/metrics``; never raises."""
        now = self.clock()
        if now < self._next_report:
            return
        self._next_report = now + (self.settings.heartbeat_interval or REPORT_SECONDS)
        report = {**self.stats(), "at": time.time()}
        field = f"{socket.gethostname()}:{os.getpid()}"
        with contextlib.suppress(redis.RedisError, OSError):
            self.store.client.hset(self.store.keys.producers, field, orjson.dumps(report))

    def _store_failed(self, exc: Exception) -> None:
        """Count, log, and have the background thread retry after the back-off (under _lock)."""
        now = self.clock()
        self.counters["failed"] += 1
        self._retry_at = now + self.backoff
        self._log_failure(exc, now)
        self._ensure_flusher()
        self._wake.notify()

    def _drain(self) -> bool:
        """Store waiting events oldest first; True once the outbox is empty, False if the
        store failed again (the event goes back first in line)."""
        with self._draining:
            while True:
                with self._lock:
                    event = self.outbox.take()
                    self._inflight = event is not None
                    if event is None:
                        break
                    dropped = self.outbox.take_dropped(event.operation_id)
                try:
                    if dropped:
                        self._append(dropped_warning(event, dropped))
                        dropped = 0
                    self._append(event)
                except (redis.RedisError, OSError) as exc:
                    with self._lock:
                        self.outbox.put_back(event)
                        self.outbox.report_later(event.operation_id, dropped)
                        self._inflight = False
                        self._store_failed(exc)
                    return False
                with self._lock:
                    self.counters["retried"] += 1
        if self._retry_at:
            self._retry_at = 0.0
            logger.warning("taskcast event store reachable again at %s", self.settings.redis_url)
        return True

    def _log_failure(self, exc: Exception, now: float) -> None:
        """Log the first failure, then at most one line per LOG_EVERY_SECONDS."""
        self._unlogged_failures += 1
        if now - self._last_log < LOG_EVERY_SECONDS:
            return
        logger.warning(
            "taskcast could not store events at %s (%s: %s); %d failure(s) since the "
            "last report; tasks keep running",
            self.settings.redis_url,
            type(exc).__name__,
            exc,
            self._unlogged_failures,
        )
        self._last_log = now
        self._unlogged_failures = 0

    def _ensure_flusher(self) -> None:
        if self._flusher is None or not self._flusher.is_alive():
            self._flusher = threading.Thread(
                target=self._flush_loop, name="taskcast-flusher", daemon=True
            )
            self._flusher.start()

    def _flush_loop(self) -> None:
        """Store held-back progress of operations that went quiet, when it falls due, and
        retry the outbox every back-off interval while events wait there."""
        while True:
            with self._lock:
                if self._closed:
                    return
                waiting = len(self.outbox) > 0
                wake_at = min(
                    (at for at in (self.coalescer.next_due(), waiting and self._retry_at) if at),
                    default=None,
                )
                if wake_at is None:
                    self._flusher_idle = True
                    self._wake.wait()
                    self._flusher_idle = False
                    continue
                delay = wake_at - self.clock()
                if delay > 0:
                    self._wake.wait(delay)
                    continue
                due = self.coalescer.due()
            self.flush(due)
            if waiting and self._retry_at <= self.clock():
                self._drain()


def dropped_warning(event: Event, count: int) -> Event:
    """The ``log`` event that tells an operation's watchers events were dropped."""
    message = (
        f"{count} event(s) of this operation were dropped: the event store was "
        "unreachable and this process's outbox was full"
    )
    return Event(
        "log", event.operation_id, log_data("warning", message), operation_type=event.operation_type
    )


def _after_fork_in_child() -> None:
    """A forked pool child inherits held locks and no threads: start clean."""
    for producer in list(_live_producers):
        producer._reset_threading()


os.register_at_fork(after_in_child=_after_fork_in_child)
