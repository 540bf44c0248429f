"""Lifecycle events from Celery signals, for every task of the app, instrumented or not.

Where each event comes from, and why there:

- ``queued``: ``before_task_publish``, in the publishing process, before the
  message exists; no worker can run the task earlier, so it is always seq 1.
- ``retrying``: also ``before_task_publish``, when the re-published message
  carries ``retries > 0``; ``retry_in`` and ``reason`` sit in ``data`` next
  to ``status``, the attempt number in ``details.retries``. Celery's own
  ``task_retry`` signal fires only after the new message is on the broker,
  where another worker may already have started it; emitting at publish
  keeps ``retrying`` before the next ``running``. A retry is not a new
  publication, so it gets no ``queued``.
- ``running``: ``task_prerun``, with the worker's hostname.
- ``result`` + ``completed``: ``task_success``, with the duration since
  ``running`` (measured in the process that ran the task).
- ``error``: ``task_failure`` (``failed``, or ``lost`` for a worker that died,
  reported by the worker's main process), ``task_revoked`` (``revoked``).

Celery catches and logs anything a signal handler raises, and the producer
never raises for Redis errors, so none of this can fail a task.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import Task, signals

from .celery_app import app, get_producer, get_settings
from .emitter import Emitter
from .events import status_data
from .heartbeat import Heartbeat

emitter = Emitter()

# task id -> time.monotonic() of ``running``, in the process running the task
_started: dict[str, float] = {}


def _ours(task: Any) -> bool:
    return isinstance(task, Task) and task.app is app


def seconds_until(eta: str | None, now: datetime | None = None) -> float:
    """Seconds from ``now`` to an ISO 8601 ``eta`` header (0 if absent or past)."""
    if not eta:
        return 0.0
    when = datetime.fromisoformat(eta)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return round(max(0.0, (when - now).total_seconds()), 3)


def publish_metadata(headers: dict[str, Any]) -> dict[str, Any]:
    """The operation metadata recorded with ``queued``: what was called, with what.

    ``parent_id``/``root_id`` only for a task started by another (a chain, a
    canvas, a task calling a task), so a dashboard can link them.
    """
    names = {"argsrepr": "args", "kwargsrepr": "kwargs", "eta": "eta", "expires": "expires"}
    metadata = {out: headers[key] for key, out in names.items() if headers.get(key) is not None}
    for key in ("parent_id", "root_id"):
        if headers.get(key) not in (None, headers.get("id")):
            metadata[key] = headers[key]
    return metadata


@signals.before_task_publish.connect
def record_queued(
    sender: str | None = None,
    headers: dict[str, Any] | None = None,
    routing_key: str | None = None,
    **_: Any,
) -> None:
    headers = headers or {}
    task_id = headers.get("id")
    if not task_id:
        return
    if headers.get("retries"):
        exc = sys.exc_info()[1]
        retries = headers["retries"]
        data = status_data("retrying", f"Retry {retries}", {"retries": retries})
        data["retry_in"] = seconds_until(headers.get("eta"))
        data["reason"] = f"{type(exc).__name__}: {exc}" if exc else "retry requested"
        emitter.emit("status", task_id, data)
        return
    data = status_data("queued", "Waiting for a worker", {"queue": routing_key})
    emitter.emit("status", task_id, data, operation_type=sender, metadata=publish_metadata(headers))


@signals.task_prerun.connect
def record_running(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if not (task_id and _ours(task)):
        return
    _started[task_id] = time.monotonic()
    emitter.emit_running(task_id, task.name, worker=task.request.hostname)


@signals.task_success.connect
def record_completed(sender: Any = None, result: Any = None, **_: Any) -> None:
    if not _ours(sender) or not sender.request.id:
        return
    task_id = sender.request.id
    started = _started.pop(task_id, None)
    duration = None if started is None else round(time.monotonic() - started, 6)
    emitter.emit_result(task_id, result)
    emitter.emit_completed(task_id, duration)


@signals.task_failure.connect
def record_failed(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    einfo: Any = None,
    **_: Any,
) -> None:
    if not (task_id and _ours(sender)):
        return
    _started.pop(task_id, None)
    lost = isinstance(exception, WorkerLostError)
    trace = getattr(einfo, "traceback", None) if get_settings().send_traceback else None
    emitter.emit_error(
        task_id,
        str(exception) or type(exception).__name__,
        type(exception).__name__,
        "lost" if lost else "failed",
        trace,
    )


@signals.task_revoked.connect
def record_revoked(
    sender: Any = None,
    request: Any = None,
    terminated: bool = False,
    signum: Any = None,
    expired: bool = False,
    **_: Any,
) -> None:
    task_id = getattr(request, "id", None)
    if not (task_id and _ours(sender)):
        return
    _started.pop(task_id, None)
    if expired:
        reason = "expired before a worker could run it"
    elif terminated:
        reason = f"terminated by signal {signum}"
    else:
        reason = "revoked"
    emitter.emit_error(task_id, reason, "TaskRevokedError", "revoked")


_heartbeat: list[Heartbeat] = []


@signals.worker_ready.connect
def start_heartbeat(sender: Any = None, **_: Any) -> None:
    """Beat from the worker's main process, which outlives task crashes (see heartbeat.py)."""
    interval = get_settings().heartbeat_interval
    if interval > 0 and getattr(sender, "app", None) is app:
        _heartbeat.append(
            Heartbeat(sender.hostname, interval, lambda: get_producer().store).start()
        )


@signals.worker_shutdown.connect
def stop_heartbeat(**_: Any) -> None:
    while _heartbeat:
        _heartbeat.pop().stop()


@signals.worker_process_shutdown.connect
def flush_on_shutdown(**_: Any) -> None:
    """A pool child that exits takes held-back progress with it unless flushed."""
    get_producer().flush()
