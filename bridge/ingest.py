"""The zero-code mode's adapter: a thread that receives Celery's events and stores them.

``taskcast serve --celery-events`` runs one. Every bridge that runs one
receives every event (Celery broadcasts them); the store keeps each once, by
the name :func:`~taskcast.bridge.celery_events.once_name` gives it. The
receiver runs in a thread because Celery's event consumer blocks; Celery is
imported only here, so bridges without the flag never load it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Any

import orjson
import redis

from taskcast.bridge.celery_events import CeleryEventTranslator
from taskcast.estimate import Estimates, estimated_data
from taskcast.events import EventTooLarge, capped
from taskcast.store import EventStore
from taskcast.worker_config import Settings

log = logging.getLogger("taskcast.bridge")
MAX_BACKOFF = 10.0


class CeleryEventIngester:
    """Receives ``task-*`` events from the broker and appends what they mean to the store."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.translator = CeleryEventTranslator(
            settings.result_max_bytes, settings.send_traceback, settings.record_args
        )
        self.store = EventStore.connect(settings, socket_timeout=5, socket_connect_timeout=5)
        # The time left of tasks that send task-progress, as the producer estimates it
        # for instrumented ones (this thread is the only one that feeds it).
        self.estimates = Estimates()
        self.counters = {"stored": 0, "duplicate": 0, "rejected": 0, "failed": 0, "invalid": 0}
        self._stop = threading.Event()
        self._receiver: Any = None
        self._thread = threading.Thread(
            target=self._run, name="taskcast-celery-events", daemon=True
        )

    def start(self) -> CeleryEventIngester:
        self._thread.start()
        return self

    def stop(self, timeout: float = 3.0) -> None:
        """Stop within about a second (the receiver checks its flag between waits)."""
        self._stop.set()
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout)
        self.store.client.close()
        log.info(
            "Celery events ingested: %s",
            ", ".join(f"{count} {outcome}" for outcome, count in self.counters.items()),
        )

    def handle(self, event: dict[str, Any]) -> None:
        """Store what one Celery event means, bounded as the producer bounds a task's
        events (:func:`~taskcast.events.capped`); errors are logged, never raised."""
        for item, once in self.translator.translate(event):
            try:
                estimated = replace(item, data=estimated_data(self.estimates, item))
                seq = self.store.append(capped(estimated, self.settings.max_event_bytes), once)
            except (redis.RedisError, OSError, orjson.JSONEncodeError, EventTooLarge) as exc:
                unreachable = isinstance(exc, redis.RedisError | OSError)
                self.counters["failed" if unreachable else "invalid"] += 1
                log.warning("could not store a Celery %s event: %s", event.get("type"), exc)
                continue
            outcome = "stored" if seq > 0 else "duplicate" if seq < 0 else "rejected"
            self.counters[outcome] += 1

    def _run(self) -> None:
        from celery import Celery

        app = Celery("taskcast-celery-events", broker=self.settings.broker_url)
        delay = 0.5
        while not self._stop.is_set():
            try:
                with app.connection_for_read() as connection:
                    receiver = app.events.Receiver(connection, handlers={"*": self.handle})
                    self._receiver = receiver
                    receiver.should_stop = self._stop.is_set()
                    log.info("ingesting Celery events from %s", connection.as_uri())
                    receiver.capture(limit=None, timeout=None, wakeup=False)
                    delay = 0.5
            except Exception as exc:  # any broker failure: keep trying until stopped
                log.warning("Celery event stream lost (%s); retrying in %.1fs", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, MAX_BACKOFF)
