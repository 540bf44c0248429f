"""The bridge's periodic sweep for operations whose worker vanished.

A worker killed outright (SIGKILL, a lost machine) sends no failure; its
heartbeats just stop. Bridges are always up while workers come and go, so
they run :func:`taskcast.liveness.sweep_lost`: an operation whose worker went
silent, or restarted under the same name, ends as ``lost`` within two heartbeat
intervals. Several bridges sweeping at once is harmless: the store refuses a
second terminal event.
"""

from __future__ import annotations

import asyncio
import logging

import redis

from taskcast.liveness import sweep_lost
from taskcast.store import EventStore
from taskcast.worker_config import Settings

log = logging.getLogger("taskcast.bridge")
# A worker silent for 1.5 intervals is gone; sweeping every half interval ends its
# operations within 2 intervals of its last beat.
MISSED_BEATS = 1.5


async def sweep_periodically(settings: Settings) -> None:
    """Sweep every half ``heartbeat_interval`` until cancelled (0 turns it off)."""
    interval = settings.heartbeat_interval
    if interval <= 0:
        return
    store = EventStore.connect(settings, socket_timeout=5, socket_connect_timeout=5)
    try:
        while True:
            await asyncio.sleep(interval / 2)
            try:
                ended = await asyncio.to_thread(sweep_lost, store, MISSED_BEATS * interval)
            except redis.RedisError as exc:
                log.debug("lost-worker sweep skipped: %s", exc)
                continue
            if ended:
                log.info("ended %d operation(s) of silent workers as lost", len(ended))
    finally:
        store.client.close()
