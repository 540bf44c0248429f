"""Celery's own event stream as taskcast events: the zero-code mode's pure core.

Workers started with ``-E`` (and publishers with ``task_send_sent_event``)
broadcast ``task-*`` events for apps that never import taskcast. This module
turns one such event (the dict Celery's event receiver hands over) into the
taskcast events it means, each with a name that is the same in every bridge
that receives it, so the store keeps it once however many bridges ingest.

What the stream cannot carry, compared with ``instrument``: ``queued`` only
when the publisher sends ``task-sent`` (else the first event is the worker's
``task-received``); results and exceptions as Celery's ``repr`` strings;
nothing while no ingesting bridge is connected (Celery's events are not
queued for absent receivers on Redis); no ``lost`` for a worker killed
outright; and only the progress a task sends itself as ``task-progress``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

from taskcast.events import Event, bounded_result, error_data, progress_data, status_data

PROGRESS_EVENT = "task-progress"
_EXCEPTION_TYPE = re.compile(r"^([A-Za-z_][\w.]*)\(")


def exception_type(text: str) -> str:
    """``ValueError`` from Celery's ``repr`` of an exception, ``ValueError('boom')``."""
    match = _EXCEPTION_TYPE.match(text or "")
    return match.group(1).rsplit(".", 1)[-1] if match else "Error"


def once_name(event: Mapping[str, Any], part: str = "") -> str:
    """The same name in every receiver: who sent it, when, what, about which task."""
    return ":".join(
        str(event.get(field, "")) for field in ("type", "hostname", "pid", "timestamp")
    ) + (f":{part}" if part else "")


class CeleryEventTranslator:
    """Celery ``task-*`` event dicts in, ``(Event, once name)`` pairs out.

    Both ``task-sent`` (from the publisher) and ``task-received`` (from the
    worker) mean ``queued``, under one once name per task: whichever reaches
    the store first is kept. The publisher's event may arrive after the
    worker's, and the worker's ``task-received`` always precedes its
    ``task-started``, so ``queued`` is stored before ``running`` either way.
    """

    def __init__(
        self, result_max_bytes: int = 65536, send_traceback: bool = False, record_args: bool = False
    ) -> None:
        self.result_max_bytes = result_max_bytes
        self.send_traceback = send_traceback
        # Celery's task-sent and task-received carry argsrepr/kwargsrepr as args/kwargs,
        # never the values: a publisher's override (to hide a secret) is what is kept.
        self.recorded = ("args", "kwargs", "eta") if record_args else ("eta",)

    def translate(self, event: Mapping[str, Any]) -> list[tuple[Event, str]]:
        kind, task_id = event.get("type"), event.get("uuid")
        if not isinstance(task_id, str) or not task_id:
            return []
        when = float(event.get("timestamp") or time.time())
        handler = _HANDLERS.get(str(kind))
        if handler is None:
            return []
        return [
            (
                Event(name, task_id, data, when, operation_type, metadata),
                f"queued:{task_id}" if data.get("status") == "queued" else once_name(event, name),
            )
            for name, data, operation_type, metadata in handler(self, task_id, event)
        ]

    # Each returns (event_type, data, operation_type, metadata) tuples.

    def _queued(self, task_id: str, event: Mapping[str, Any]) -> list[tuple]:
        if event.get("retries"):
            return []  # a retry's republication: task-retried said it already
        metadata = {key: event[key] for key in self.recorded if event.get(key) not in (None, "")}
        for key in ("parent_id", "root_id"):
            if event.get(key) not in (None, event.get("uuid")):
                metadata[key] = event[key]
        details = {"queue": event.get("queue") or event.get("routing_key")}
        data = status_data("queued", "Waiting for a worker", details)
        return [("status", data, event.get("name"), metadata)]

    def _started(self, task_id: str, event: Mapping[str, Any]) -> list[tuple]:
        data = status_data("running", details={"worker": event.get("hostname")})
        return [("status", data, None, None)]

    def _succeeded(self, task_id: str, event: Mapping[str, Any]) -> list[tuple]:
        result = bounded_result(event.get("result"), self.result_max_bytes)
        runtime = event.get("runtime")
        done = {"status": "completed", "duration": round(float(runtime), 6) if runtime else None}
        return [("result", result, None, None), ("completed", done, None, None)]

    def _failed(self, task_id: str, event: Mapping[str, Any]) -> list[tuple]:
        text = str(event.get("exception") or "")
        trace = event.get("traceback") if self.send_traceback else None
        data = error_data(_message(text), exception_type(text), "failed", trace)
        return [("error", data, None, None)]

    def _retried(self, task_id: str, event: Mapping[str, Any]) -> list[tuple]:
        text = str(event.get("exception") or "")
        data = status_data("retrying", "Retrying")
        data["reason"] = text or "retry requested"
        return [("status", data, None, None)]

    def _revoked(self, task_id: str, event: Mapping[str, Any]) -> list[tuple]:
        if event.get("expired"):
            reason = "expired before a worker could run it"
        elif event.get("terminated"):
            reason = f"terminated by signal {event.get('signum')}"
        else:
            reason = "revoked"
        return [("error", error_data(reason, "TaskRevokedError", "revoked"), None, None)]

    def _progress(self, task_id: str, event: Mapping[str, Any]) -> list[tuple]:
        current, total, progress = event.get("current"), event.get("total"), event.get("progress")
        counts = _number(current) and _number(total)
        data = progress_data(
            progress if _number(progress) else None,
            str(event.get("message") or event.get("description") or ""),
            None,
            current if counts else None,
            total if counts else None,
        )
        return [("progress", data, None, None)]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _message(exception_repr: str) -> str:
    """``boom`` from ``ValueError('boom')``; the whole text when it is not that shape."""
    match = re.match(r"^[\w.]+\(['\"](.*)['\"]\)$", exception_repr, re.S)
    return match.group(1) if match else exception_repr or "failed"


_HANDLERS = {
    "task-sent": CeleryEventTranslator._queued,
    "task-received": CeleryEventTranslator._queued,
    "task-started": CeleryEventTranslator._started,
    "task-succeeded": CeleryEventTranslator._succeeded,
    "task-failed": CeleryEventTranslator._failed,
    "task-retried": CeleryEventTranslator._retried,
    "task-revoked": CeleryEventTranslator._revoked,
    PROGRESS_EVENT: CeleryEventTranslator._progress,
}
