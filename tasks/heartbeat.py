"""Worker heartbeats, and the sweep that ends operations of workers that vanished.

Celery reports a pool child that dies (``lost``), but when the whole worker
is killed nobody is left to say so and its operations would look ``running``
until their history expires. Each worker's main process therefore records a
heartbeat in the store (a sorted set ``{prefix}workers``: hostname -> time of
the last beat). :func:`sweep_lost` ends, as ``lost``, the unfinished
operations whose worker is known there but silent for too long. Operations of
the plain emitter name no Celery worker in that set, so they are never swept.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import redis

from .events import Event, error_data
from .store import EventStore

MISSED_BEATS = 3  # silence, in heartbeat intervals, after which a worker counts as gone
# Waiting for a worker, not held by one: a dead previous worker says nothing about them.
NOT_HELD = frozenset({"queued", "retrying"})


def workers_key(store: EventStore) -> str:
    return f"{store.keys.prefix}workers"


def beat(store: EventStore, hostname: str, now: float | None = None) -> None:
    """Record that ``hostname`` is alive now (raises on Redis errors: the caller decides)."""
    store.client.zadd(workers_key(store), {hostname: time.time() if now is None else now})


def sweep_lost(
    store: EventStore, max_silence: float, now: float | None = None, limit: int = 1000
) -> list[str]:
    """End as ``lost`` the unfinished operations of workers silent for ``max_silence`` s.

    Returns the ids it ended. Safe to run from several places at once: the
    store refuses a second terminal event, and a task that re-runs reopens.
    """
    now = time.time() if now is None else now
    store.client.zremrangebyscore(workers_key(store), "-inf", now - store.history_ttl)
    beats = {
        name.decode(): score
        for name, score in store.client.zrange(workers_key(store), 0, -1, withscores=True)
    }
    ended: list[str] = []
    for snapshot in store.list_operations("active", limit):
        worker = snapshot.get("worker")
        last_beat = beats.get(worker) if worker else None
        if last_beat is None or now - last_beat < max_silence:
            continue
        if snapshot["status"] in NOT_HELD:
            continue
        message = f"worker {worker} stopped sending heartbeats {now - last_beat:.1f}s ago"
        event = Event(
            "error", snapshot["operation_id"], error_data(message, "WorkerLostError", "lost")
        )
        if store.append(event):
            ended.append(snapshot["operation_id"])
    return ended


class Heartbeat:
    """A daemon thread beating every ``interval`` seconds for one worker.

    It looks the store up on every beat (``store_of``) so ``tasks.configure``
    takes effect, and ignores Redis errors: a store outage must not stop the
    worker, and the next beat after it recovers is enough.
    """

    def __init__(self, hostname: str, interval: float, store_of: Callable[[], EventStore]) -> None:
        self.hostname = hostname
        self.interval = interval
        self.store_of = store_of
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="taskcast-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while True:
            with contextlib.suppress(redis.RedisError, OSError):
                beat(self.store_of(), self.hostname)
            if self._stop.wait(self.interval):
                return
