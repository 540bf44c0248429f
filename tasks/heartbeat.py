"""The heartbeat thread of a worker's main process (the sweep that reads it: ``taskcast.liveness``).

The main process outlives task crashes, so its beat says whether anyone is
left to report how the worker's tasks end.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import redis

from taskcast.liveness import beat
from taskcast.store import EventStore


class Heartbeat:
    """A daemon thread beating every ``interval`` seconds for one worker.

    It looks the store up on every beat (``store_of``) so a reconfiguration
    takes effect, and ignores Redis errors: a store outage must not stop the
    worker, and the next beat after it recovers is enough.
    """

    def __init__(self, hostname: str, interval: float, store_of: Callable[[], EventStore]) -> None:
        self.hostname = hostname
        self.interval = interval
        self.store_of = store_of
        # When this instance started: a sweep ends operations that started
        # earlier under the same hostname (a previous instance, now gone).
        self.started = time.time()
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
                beat(self.store_of(), self.hostname, started=self.started)
            if self._stop.wait(self.interval):
                return
