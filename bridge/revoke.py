"""Cancelling an operation: end it in the store, then revoke its Celery task on the broker.

The terminal ``error`` (``revoked``) is stored first, so watchers see the end
at once and the task's next helper call stops it (cooperative cancellation,
``taskcast.tasks.cancel``) on any pool; the revoke then keeps a queued task
from starting and, with ``terminate``, kills a running one where the pool
can (prefork). Celery is imported on the first cancel only: a bridge nobody
asks to cancel never loads it.
"""

from __future__ import annotations

import logging
from typing import Any

from taskcast.events import Event, Parent, error_data
from taskcast.members import CHORD_TYPE, GROUP_TYPE
from taskcast.store import EventStore
from taskcast.worker_config import Settings

log = logging.getLogger("taskcast.bridge")
CANCELLED = "cancelled by a client"


class Revoker:
    """Blocking calls (store and broker): the server runs them in a thread."""

    def __init__(self, settings: Settings) -> None:
        self.store = EventStore.connect(settings, socket_timeout=5, socket_connect_timeout=5)
        self.broker_url = settings.broker_url
        self._app: Any = None

    def cancel(self, operation_id: str, terminate: bool) -> None:
        data = error_data(CANCELLED, "TaskRevokedError", "revoked")
        self.store.append(Event("error", operation_id, data, parent=self._group_of(operation_id)))
        try:
            self._celery().control.revoke(operation_id, terminate=terminate, signal="SIGTERM")
        except Exception as exc:  # the broker is down: the stored end still stops the task
            log.warning("could not revoke Celery task %s: %s", operation_id, exc)

    def _group_of(self, operation_id: str) -> Parent | None:
        """The group or chord a member belongs to, whose aggregate its end moves too (a
        chain link's ``parent_id`` only names the chain's first task)."""
        parent_id = (self.store.snapshot(operation_id) or {}).get("parent_id")
        if not parent_id:
            return None
        parent_type = (self.store.snapshot(parent_id) or {}).get("operation_type")
        return Parent(parent_id) if parent_type in (GROUP_TYPE, CHORD_TYPE) else None

    def _celery(self) -> Any:
        if self._app is None:
            from celery import Celery

            self._app = Celery("taskcast-cancel", broker=self.broker_url)
            self._app.conf.broker_connection_timeout = 3
        return self._app

    def close(self) -> None:
        self.store.client.close()
