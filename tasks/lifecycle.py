"""``instrument(app)``: lifecycle events for every task of a user's Celery app, from signals.

Celery's signals are global, so every handler first asks whether the task is
ours: its app was instrumented, or its class is a ``ProgressTask`` (which
records its lifecycle even where ``instrument`` was forgotten, so no
operation is left half-recorded). Tasks of other apps are left alone
entirely. Nothing here changes the app's configuration or ``current_app``.

Where each event comes from, and why there:

- ``queued``: ``after_task_publish``, in the publishing process, once the
  broker has the message (a publish that raises goes to its caller, and
  leaves no operation waiting for ever), with what ``before_task_publish``
  saw of it. A worker may begin the task first: the store then drops the
  late ``queued`` (a group still learns its size from it), so ``queued``
  never follows ``running``. ``before_task_publish`` decides whether a
  message is ours. The signal does not name the app, so a message is ours when Celery's
  ``reply_to`` property is an instrumented app's ``thread_oid`` (what
  ``send_task`` sets), or its task name is a ``ProgressTask`` or registered in
  an instrumented app that is already finalized (a retry republished by a
  worker carries the original publisher's ``reply_to``).
- ``retrying``: also ``before_task_publish``, when the re-published message
  carries ``retries > 0``; ``retry_in`` and ``reason`` sit in ``data`` next
  to ``status``, the attempt number in ``details.retries``. Celery's own
  ``task_retry`` signal fires only after the new message is on the broker,
  where another worker may already have started it; emitting at publish
  keeps ``retrying`` before the next ``running``. A retry is not a new
  publication, so it gets no ``queued``.
- ``retrying`` (reason ``worker lost``) or ``lost``: ``task_received``, for a
  message the broker redelivered after the worker running it died
  (:mod:`taskcast.tasks.redelivery`).
- the parent (group, chord or chain root, see :mod:`taskcast.tasks.canvas`):
  named by the publisher with ``queued`` (with a group's size on its last
  member), and by the worker for a member's later events.
- ids a user holds before their message exists (a chord's body, a chain's last
  task): ``queued`` with the first message that carries them, and ``error`` with
  the failure, revocation or loss of the task holding them (see
  :mod:`taskcast.tasks.canvas`).
- ``running``: ``task_prerun``, with the worker's hostname.
- ``result`` + ``completed``: ``task_success``, with the duration since
  ``running`` (measured in the process that ran the task).
- ``error``: ``task_failure`` (``failed``, or ``lost`` for a worker that died,
  reported by the worker's main process), ``task_revoked`` (``revoked``).

Celery catches and logs anything a signal handler raises, and the producer
never raises for Redis errors, so none of this can fail a task.
"""

from __future__ import annotations

import contextvars
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from billiard.exceptions import WorkerLostError
from celery import Celery, Task, signals

from taskcast.events import Parent, status_data
from taskcast.members import parent_in
from taskcast.tasks import canvas
from taskcast.tasks.emitter import Emitter
from taskcast.tasks.redelivery import judge
from taskcast.tasks.runtime import get_producer, get_settings, settings_at_start

if TYPE_CHECKING:
    from taskcast.tasks.heartbeat import Heartbeat

emitter = Emitter()

# Apps passed to instrument(); weak, so instrumenting never keeps an app alive.
_instrumented: weakref.WeakSet[Celery] = weakref.WeakSet()
# Names of ProgressTask tasks: their publications are ours whatever the app.
_lifecycle_names: set[str] = set()
_connect_lock = threading.Lock()
_connected = False

# The queued events of the publish in progress in this thread (see record_queued).
_publishing = threading.local()
# task id -> time.monotonic() of ``running``, in the process running the task
_started: dict[str, float] = {}


def instrument(app: Celery, **settings: Any) -> Celery:
    """Stream the lifecycle of every task of ``app``; returns ``app`` unchanged.

    ``settings`` (``redis_url=``, ``prefix=``, any field of ``Settings``) set
    where events are stored, over the ``TASKCAST_*`` environment. Calling it
    again is harmless (with settings, it switches the store). A bad
    ``TASKCAST_*`` value stops the process here, at start-up, with one line
    naming the variable (never later, at a request). Only ``TASKCAST_*`` is
    read: the app's broker, backend and options stay Celery's business.
    """
    if not isinstance(app, Celery):
        raise TypeError(f"instrument() takes a Celery app, not {type(app).__name__}")
    settings_at_start(**settings)
    _instrumented.add(app)
    connect_signals()
    return app


def is_instrumented(app: Celery) -> bool:
    """Whether :func:`instrument` was called for ``app`` in this process."""
    return app in _instrumented


def record_lifecycle_of(name: str | None) -> None:
    """Record the lifecycle of the task ``name`` whatever its app (``ProgressTask`` does this)."""
    if name:
        _lifecycle_names.add(name)
    connect_signals()


def connect_signals() -> None:
    """Connect the handlers below to Celery's signals, once per process."""
    global _connected
    with _connect_lock:
        if _connected:
            return
        for signal, handler in _HANDLERS:
            signal.connect(handler, weak=False, dispatch_uid=f"taskcast.{handler.__name__}")
        _connected = True


def records_lifecycle(task: Any) -> bool:
    """Whether ``task`` is one whose events taskcast records (see the module docstring)."""
    return isinstance(task, Task) and (
        getattr(task, "taskcast_lifecycle", False) or task.app in _instrumented
    )


def _published_by_us(name: str | None, properties: Mapping[str, Any]) -> bool:
    if name in _lifecycle_names:
        return True
    reply_to = properties.get("reply_to")
    for app in list(_instrumented):
        if reply_to and reply_to == app.thread_oid:
            return True
        if getattr(app, "finalized", False) and name in app.tasks:
            return True
    return False


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
    names = {"eta": "eta", "expires": "expires"}
    if get_settings().record_args:  # Celery's reprs, which users override to hide secrets
        names.update(argsrepr="args", kwargsrepr="kwargs")
    metadata = {out: headers[key] for key, out in names.items() if headers.get(key) is not None}
    for key in ("parent_id", "root_id"):
        if headers.get(key) not in (None, headers.get("id")):
            metadata[key] = headers[key]
    return metadata


def _embedded(body: Any) -> Mapping[str, Any]:
    """The canvas part of a protocol 2 message body (``callbacks``, ``chain``, ``chord``)."""
    embedded = body[2] if isinstance(body, tuple | list) and len(body) == 3 else None
    return embedded if isinstance(embedded, Mapping) else {}


def _position(headers: Mapping[str, Any]) -> tuple[int, bool] | None:
    """Where a group member is in Celery's publishing loop (only members look for it)."""
    member = headers.get("group") and headers.get("group_index") is not None
    return canvas.group_position() if member else None


def parent_at_publish(headers: Mapping[str, Any], body: Any) -> Parent | None:
    """The parent a published message names."""
    return canvas.parent_at_publish(headers, _embedded(body), _position(headers))


# The message of an id recorded before its own message exists, by what it waits for.
_HELD_WAITING = {
    "chord member": "Waiting for the chord's members",
    "chain link": "Waiting for the chain's earlier tasks",
}


def record_queued(
    sender: str | None = None,
    headers: dict[str, Any] | None = None,
    routing_key: str | None = None,
    properties: dict[str, Any] | None = None,
    body: Any = None,
    **_: Any,
) -> None:
    headers = headers or {}
    task_id = headers.get("id")
    if not task_id or not _published_by_us(sender, properties or {}):
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
    embedded, position = _embedded(body), _position(headers)
    parent = canvas.parent_at_publish(headers, embedded, position)
    # (operation id, data, operation type, metadata, parent) of each queued to store
    queued: list[tuple[str, dict[str, Any], str | None, dict[str, Any] | None, Parent | None]]
    queued = [(task_id, data, sender, publish_metadata(headers), parent)]
    queued += [
        (held.operation_id, status_data("queued", _HELD_WAITING[held.role]), held.name, None,
         held.parent)
        for held in canvas.held_at_publish(headers, embedded, position)
    ]
    # Stored once the broker has the message (record_published): a publish that raises
    # goes to the caller, and must leave no operation waiting for a worker that never
    # gets it. One publish at a time per thread, so a failed one's events are simply
    # replaced by the next publish's. The context is this moment's, so the events carry
    # the span current now (an instrumentation's publish span ends before they store).
    _publishing.pending = (task_id, contextvars.copy_context(), queued)


def record_published(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """``after_task_publish``: the message is out; store what :func:`record_queued` held.

    The worker may have begun the task already; the store keeps ``queued`` before
    ``running`` all the same (a late ``queued`` is not stored, see taskcast.store).
    """
    pending = getattr(_publishing, "pending", None)
    if pending is None or pending[0] != (headers or {}).get("id"):
        return
    _publishing.pending = None
    _, context, queued = pending
    for operation_id, data, operation_type, metadata, parent in queued:
        context.run(emitter.emit, "status", operation_id, data, operation_type, metadata, parent)


def record_redelivered(request: Any = None, **_: Any) -> None:
    """``task_received``, in the worker's main process: a message the broker delivers
    again may be a task whose worker died (see :mod:`taskcast.tasks.redelivery`).

    A task past the limit is added to the worker's revoked set (``celery.worker.state``,
    what the ``revoke`` control command fills), so Celery discards it before it runs.
    Without the store nothing can be judged, and the task just runs again. A group
    member is remembered here too: a worker-lost failure is reported by this process.
    """
    if request is None or not records_lifecycle(request.task):
        return
    canvas.joined(request.id, request)
    if not (request.delivery_info or {}).get("redelivered"):
        return
    import redis  # here, not at import: importing redis loads its asyncio client too

    producer = get_producer()
    store = producer.store
    try:
        snapshot = store.snapshot(request.id)
        verdict = judge(request.id, snapshot, get_settings().max_redeliveries)
        if verdict is None or snapshot is None:
            return
        store.client.hset(store.keys.snapshot(request.id), "redeliveries", verdict.redeliveries)
    except (redis.RedisError, OSError):
        return
    producer.emit(replace(verdict.event, parent=parent_in(snapshot)))
    if verdict.stop:
        from celery.worker import state  # only workers receive tasks

        state.revoked.add(request.id)


def record_running(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if not (task_id and records_lifecycle(task)):
        return
    _started[task_id] = time.monotonic()
    canvas.joined(task_id, task.request)
    emitter.emit_running(task_id, task.name, worker=task.request.hostname)


def record_completed(sender: Any = None, result: Any = None, **_: Any) -> None:
    if not records_lifecycle(sender) or not sender.request.id:
        return
    task_id = sender.request.id
    started = _started.pop(task_id, None)
    duration = None if started is None else round(time.monotonic() - started, 6)
    emitter.emit_result(task_id, result)
    emitter.emit_completed(task_id, duration)
    canvas.left(task_id)


def record_failed(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    einfo: Any = None,
    **_: Any,
) -> None:
    if not (task_id and records_lifecycle(sender)):
        return
    _started.pop(task_id, None)
    status = "lost" if isinstance(exception, WorkerLostError) else "failed"
    trace = getattr(einfo, "traceback", None) if get_settings().send_traceback else None
    error = str(exception) or type(exception).__name__
    emitter.emit_error(task_id, error, type(exception).__name__, status, trace)
    _end_held(task_id, error, type(exception).__name__, status)


def record_revoked(
    sender: Any = None,
    request: Any = None,
    terminated: bool = False,
    signum: Any = None,
    expired: bool = False,
    **_: Any,
) -> None:
    task_id = getattr(request, "id", None)
    if not (task_id and records_lifecycle(sender)):
        return
    _started.pop(task_id, None)
    if expired:
        reason = "expired before a worker could run it"
    elif terminated:
        reason = f"terminated by signal {signum}"
    else:
        reason = "revoked"
    canvas.joined(task_id, request)  # a revoked request carries its group, chord and chain
    emitter.emit_error(task_id, reason, "TaskRevokedError", "revoked")
    _end_held(task_id, reason, "TaskRevokedError", "revoked")


def _end_held(task_id: str, error: str, error_type: str, status: str) -> None:
    """End the ids ``task_id`` held (see :mod:`taskcast.tasks.canvas`): Celery will never
    run them now, and their holders would otherwise watch a ``queued`` forever."""
    for held in canvas.left(task_id):
        message = f"{held.role} {task_id} {status}: {error}"
        emitter.emit_error(held.operation_id, message, error_type)


_heartbeat: list[Heartbeat] = []


def _runsrecords_lifecycle(app: Any) -> bool:
    if not isinstance(app, Celery):
        return False
    return app in _instrumented or any(records_lifecycle(task) for task in app.tasks.values())


def check_settings(sender: Any = None, **_: Any) -> None:
    """A worker of an app whose tasks taskcast records reads its settings before it
    takes a task: a bad value stops it in one line, not at its first event."""
    if _runsrecords_lifecycle(getattr(sender, "app", None)):
        settings_at_start()


def start_heartbeat(sender: Any = None, **_: Any) -> None:
    """Beat from the worker's main process, which outlives task crashes (see heartbeat.py)."""
    if not _runsrecords_lifecycle(getattr(sender, "app", None)):
        return
    interval = get_settings().heartbeat_interval
    if interval > 0:
        from taskcast.tasks.heartbeat import Heartbeat  # only workers beat

        _heartbeat.append(
            Heartbeat(sender.hostname, interval, lambda: get_producer().store).start()
        )


def stop_heartbeat(**_: Any) -> None:
    while _heartbeat:
        _heartbeat.pop().stop()


def store_before_exit(**_: Any) -> None:
    """A pool child exits without atexit hooks: held-back progress and events still in
    the outbox (the store was down) would go with it, terminal events included."""
    if _heartbeat or _instrumented or _lifecycle_names:
        producer = get_producer()
        producer.flush()
        producer.drain_until(get_settings().shutdown_timeout)


_HANDLERS: tuple[tuple[signals.Signal, Any], ...] = (
    (signals.before_task_publish, record_queued),
    (signals.after_task_publish, record_published),
    (signals.task_received, record_redelivered),
    (signals.task_prerun, record_running),
    (signals.task_success, record_completed),
    (signals.task_failure, record_failed),
    (signals.task_revoked, record_revoked),
    (signals.worker_init, check_settings),
    (signals.worker_ready, start_heartbeat),
    (signals.worker_shutdown, stop_heartbeat),
    (signals.worker_process_shutdown, store_before_exit),
)
