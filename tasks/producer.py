"""The producer side of the store: emits that never break or stall the task.

A task's progress is a side channel; losing Redis must not lose the task. So
every emit here swallows store errors, is bounded by a short socket timeout,
and after a failure stops talking to Redis for a short back-off window
(dropping and counting events instead of paying the timeout on every call).
Terminal events still get one attempt during the window, because without
them an operation would look ``running`` until its history expires.

Progress events go through a :class:`~tasks.coalesce.Coalescer`; a daemon
thread flushes values held back when a task goes quiet.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from taskcast.events import TERMINAL_EVENT_TYPES, Event, capped
from taskcast.store import EventStore
from taskcast.tasks.cancel import ENDED
from taskcast.tasks.coalesce import Coalescer
from taskcast.worker_config import Settings

logger = logging.getLogger("taskcast.producer")

BACKOFF_SECONDS = 1.0
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
        client = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.emit_timeout,
            socket_connect_timeout=settings.emit_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self.store = EventStore.for_settings(client, settings)
        self.coalescer = Coalescer(settings.progress_interval, clock)
        self.counters = {"stored": 0, "rejected": 0, "failed": 0, "dropped": 0, "invalid": 0}
        self._down_until = 0.0
        self._last_log = float("-inf")
        self._unlogged_failures = 0
        self._closed = False
        self._reset_threading()
        _live_producers.add(self)

    def _reset_threading(self) -> None:
        """Fresh locks and no flusher: used at start and in a forked child."""
        # _lock guards the coalescer, the counters and the back-off state, never a
        # Redis call; a stripe lock, taken first, keeps one operation's events in
        # order while appends of different operations run in parallel.
        self._lock = threading.RLock()
        self._stripes = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self._wake = threading.Condition(self._lock)
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
        dropped (not stored: Redis errors and back-off), invalid (data not
        encodable as JSON), coalesced (progress merged into a later value)."""
        with self._lock:
            return {**self.counters, "coalesced": self.coalescer.merged}

    def close(self) -> None:
        """Flush, stop the flusher thread and drop the Redis connections."""
        self.flush()
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        flusher = self._flusher
        if flusher is not None and flusher is not threading.current_thread():
            flusher.join(timeout=2)
        self.store.client.close()

    def _store(self, event: Event) -> int:
        """One append, with the back-off window and the failure accounting."""
        now = self.clock()
        if now < self._down_until and event.event_type not in TERMINAL_EVENT_TYPES:
            with self._lock:
                self.counters["dropped"] += 1
            return 0
        try:
            seq = self.store.append(capped(event, self.settings.max_event_bytes))
        except orjson.JSONEncodeError as exc:
            # The task's own data cannot be encoded (e.g. non-string dict keys):
            # drop this event only; the store is fine, so no back-off.
            with self._lock:
                self.counters["invalid"] += 1
                self._log_failure(exc, now)
            return 0
        except (redis.RedisError, OSError) as exc:
            with self._lock:
                self.counters["failed"] += 1
                self.counters["dropped"] += 1
                self._down_until = now + self.backoff
                self._log_failure(exc, now)
            return 0
        with self._lock:
            if self._down_until:
                self._down_until = 0.0
                logger.warning(
                    "taskcast event store reachable again at %s", self.settings.redis_url
                )
            self.counters["stored" if seq else "rejected"] += 1
        return seq or ENDED

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
        """Store held-back progress of operations that went quiet, when it falls due."""
        while True:
            with self._lock:
                if self._closed:
                    return
                due_at = self.coalescer.next_due()
                if due_at is None:
                    self._flusher_idle = True
                    self._wake.wait()
                    self._flusher_idle = False
                    continue
                delay = due_at - self.clock()
                if delay > 0:
                    self._wake.wait(delay)
                    continue
                due = self.coalescer.due()
            self.flush(due)


def _after_fork_in_child() -> None:
    """A forked pool child inherits held locks and no threads: start clean."""
    for producer in list(_live_producers):
        producer._reset_threading()


os.register_at_fork(after_in_child=_after_fork_in_child)
