"""Worker heartbeats in the store, and the sweep that ends operations of workers that vanished.

Celery reports a pool child that dies (``lost``), but when the whole worker
is killed nobody is left to say so and its operations would look ``running``
until their history expires. Each worker's main process therefore records a
heartbeat (``Keys.workers``: hostname -> time of the last beat, written by
``taskcast.tasks.heartbeat``). :func:`sweep_lost`, which bridges run, ends as
``lost`` the unfinished operations whose worker is known there but silent for
too long. Operations of the plain emitter name no Celery worker in that set,
so they are never swept. It lives beside the store, not on the Celery side,
because the bridge runs it and never imports Celery.
"""

from __future__ import annotations

import time
from typing import cast

from taskcast.events import Event, error_data
from taskcast.store import EventStore

# Waiting for a worker, not held by one: a dead previous worker says nothing about them.
NOT_HELD = frozenset({"queued", "retrying"})


def beat(store: EventStore, hostname: str, now: float | None = None) -> None:
    """Record that ``hostname`` is alive now (raises on Redis errors: the caller decides)."""
    store.client.zadd(store.keys.workers, {hostname: time.time() if now is None else now})


def sweep_lost(
    store: EventStore, max_silence: float, now: float | None = None, limit: int = 1000
) -> list[str]:
    """End as ``lost`` the unfinished operations of workers silent for ``max_silence`` s.

    Returns the ids it ended. Safe to run from several places at once: the
    store refuses a second terminal event, and a task that re-runs reopens.
    """
    now = time.time() if now is None else now
    workers = store.keys.workers
    store.client.zremrangebyscore(workers, "-inf", now - store.history_ttl)
    beats = {
        name.decode(): score
        for name, score in cast(
            "list[tuple[bytes, float]]", store.client.zrange(workers, 0, -1, withscores=True)
        )
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
