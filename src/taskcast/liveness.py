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

import orjson

from taskcast.events import Event, error_data
from taskcast.members import parent_in
from taskcast.store import EventStore

# Waiting for a worker, not held by one: a dead previous worker says nothing about them.
NOT_HELD = frozenset({"queued", "retrying"})


def beat(
    store: EventStore, hostname: str, now: float | None = None, started: float | None = None
) -> None:
    """Record that ``hostname`` is alive now, and (``started``) when its instance started.

    Raises on Redis errors: the caller decides.
    """
    store.client.zadd(store.keys.workers, {hostname: time.time() if now is None else now})
    if started is not None:
        store.client.hset(store.keys.worker_starts, hostname, repr(started))


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
    forget_silent_producers(store, now - store.history_ttl)
    beats = {
        name.decode(): score
        for name, score in cast(
            "list[tuple[bytes, float]]", store.client.zrange(workers, 0, -1, withscores=True)
        )
    }
    starts = {
        name.decode(): float(value)
        for name, value in cast(
            "dict[bytes, bytes]", store.client.hgetall(store.keys.worker_starts)
        ).items()
    }
    ended: list[str] = []
    for snapshot in store.list_operations("active", limit):
        worker = snapshot.get("worker")
        if not worker or worker not in beats or snapshot["status"] in NOT_HELD:
            continue
        message = lost_because(snapshot, now - beats[worker], starts.get(worker), max_silence)
        if message is None:
            continue
        event = Event(
            "error",
            snapshot["operation_id"],
            error_data(message, "WorkerLostError", "lost"),
            parent=parent_in(snapshot),
        )
        if store.append(event):
            ended.append(snapshot["operation_id"])
    return ended


def forget_silent_producers(store: EventStore, before: float) -> None:
    """Drop counter reports of processes that last reported before ``before`` (gone)."""
    reports = cast("dict[bytes, bytes]", store.client.hgetall(store.keys.producers))
    silent = [name for name, report in reports.items() if orjson.loads(report)["at"] < before]
    if silent:
        store.client.hdel(store.keys.producers, *silent)


def lost_because(
    snapshot: dict, silence: float, instance_started: float | None, max_silence: float
) -> str | None:
    """Why an operation held by a known worker is lost, or None while its holder may live.

    A worker restarted under the same hostname (systemd, Docker) beats again at
    once, but its instance started after the operation did: the one that ran
    it is gone, and its operations would otherwise stay ``running``.
    """
    worker = snapshot["worker"]
    if silence >= max_silence:
        return f"worker {worker} stopped sending heartbeats {silence:.1f}s ago"
    started_at = snapshot.get("started_at")
    if instance_started is not None and started_at is not None and instance_started > started_at:
        return f"worker {worker} restarted; the instance running this task is gone"
    return None
