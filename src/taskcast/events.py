"""The event envelope of PROTOCOL.md and what each event does to a snapshot.

Pure functions, no I/O: the store turns an :class:`Event` into the exact
bytes clients receive (only ``seq`` is filled in by Redis), and into the
snapshot fields the same atomic append writes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

TERMINAL_EVENT_TYPES = frozenset({"completed", "error"})
# Statuses that start an operation (again): allowed after a terminal event,
# because Celery re-runs a task under the same id when it retries or redelivers.
REOPENING_STATUSES = frozenset({"queued", "running"})
LOG_LEVELS = ("debug", "info", "warning", "error")
FINISHED_STATUSES = frozenset({"completed", "failed", "revoked", "lost"})

# How an append treats the operation's terminal flag (see the store's script).
KIND_NORMAL = b"n"
KIND_TERMINAL = b"t"
KIND_REOPEN = b"r"


def dumps(value: Any) -> bytes:
    """JSON-encode like every stored event: compact, UTF-8, non-JSON values as str."""
    return orjson.dumps(value, default=str)


@dataclass(frozen=True, slots=True)
class Parent:
    """The operation an event's operation belongs to (its snapshot's ``parent_id``).

    A member of a Celery group or chord (``aggregates``) also moves its parent:
    the store updates the parent's aggregate with the same append (see
    :mod:`taskcast.members`). A chain link only names its chain's first task.
    """

    operation_id: str
    aggregates: bool = True
    # Set by the publisher of a member: the type the parent gets when it is created.
    operation_type: str = ""
    # Set by the publisher of a group's last member: how many members it has.
    size: int = 0
    # A chord's body, the chord's last member from the moment its size is known.
    body_id: str = ""


@dataclass(frozen=True, slots=True)
class Event:
    """One event before it is stored; ``seq`` does not exist until then."""

    event_type: str
    operation_id: str
    data: dict[str, Any]
    timestamp: float = field(default_factory=time.time)
    operation_type: str | None = None
    metadata: dict[str, Any] | None = None
    # A status that reopens an operation that ended, whatever the status: a task
    # redelivered after its worker died (and was swept ``lost``) runs again.
    reopens: bool = False
    # The producer's own number for this event (0: none). An append retried after
    # its reply was lost carries the same number, so the store keeps it once.
    token: int = 0
    # The OpenTelemetry span the event was produced in (taskcast.tracing), as hex.
    trace_id: str | None = None
    span_id: str | None = None
    parent: Parent | None = None

    @property
    def kind(self) -> bytes:
        if self.event_type in TERMINAL_EVENT_TYPES:
            return KIND_TERMINAL
        if self.reopens or (
            self.event_type == "status" and self.data.get("status") in REOPENING_STATUSES
        ):
            return KIND_REOPEN
        return KIND_NORMAL

    def encode(self) -> tuple[bytes, bytes]:
        """Split the envelope around ``seq``: the store joins ``prefix + seq + suffix``."""
        prefix = (
            b'{"event_type":'
            + dumps(self.event_type)
            + b',"operation_id":'
            + dumps(self.operation_id)
            + b',"seq":'
        )
        suffix = b',"timestamp":' + dumps(self.timestamp)
        if self.trace_id:
            suffix += b',"trace_id":' + dumps(self.trace_id) + b',"span_id":' + dumps(self.span_id)
        return prefix, suffix + b',"data":' + dumps(self.data) + b"}"

    def snapshot_changes(self) -> tuple[dict[str, bytes], dict[str, bytes]]:
        """Snapshot fields this event overwrites, and those it sets only if absent.

        Values are JSON-encoded; ``last_seq`` is kept by the store itself.
        """
        data = self.data
        ts = dumps(self.timestamp)
        overwrite: dict[str, bytes] = {"updated_at": ts}
        if_absent: dict[str, bytes] = {
            "operation_id": dumps(self.operation_id),
            "created_at": ts,
            "metadata": dumps(self.metadata or {}),
        }
        if self.operation_type:
            if_absent["operation_type"] = dumps(self.operation_type)
        if self.trace_id:  # the operation's latest trace: one more field, only when traced
            overwrite["trace_id"] = dumps(self.trace_id)
        if self.parent is not None:
            overwrite["parent_id"] = dumps(self.parent.operation_id)
        message = data.get("message")
        # A status says what the operation does now: one without a message clears the
        # last (a finished task must not keep saying "Waiting for a worker").
        if self.event_type == "status" or (message and self.event_type == "progress"):
            overwrite["message"] = dumps(message or "")
        if self.event_type == "status":
            status = data.get("status")
            overwrite["status"] = dumps(status)
            if status in REOPENING_STATUSES:
                overwrite.update(
                    finished_at=b"null", result=b"null", error=b"null", error_type=b"null"
                )
            if status == "queued":
                overwrite["progress"] = b"0.0"
            elif status == "running":
                overwrite["started_at"] = ts
                worker = (data.get("details") or {}).get("worker")
                if worker:
                    overwrite["worker"] = dumps(worker)
        elif self.event_type == "progress":
            if data.get("progress") is not None:
                overwrite["progress"] = dumps(data["progress"])
        elif self.event_type == "result":
            overwrite["result"] = dumps(data.get("result"))
        elif self.event_type == "completed":
            overwrite.update(status=b'"completed"', finished_at=ts, progress=b"1.0")
        elif self.event_type == "error":
            overwrite.update(
                status=dumps(data.get("status", "failed")),
                finished_at=ts,
                error=dumps(data.get("error")),
                error_type=dumps(data.get("error_type")),
            )
        return overwrite, if_absent


def progress_fraction(
    progress: float | None, current: float | None, total: float | None
) -> float | None:
    """The 0.0-1.0 value of a progress call given as a fraction or as counts."""
    if progress is None and current is not None and total:
        progress = current / total
    if progress is None:
        return None
    return min(1.0, max(0.0, float(progress)))


def progress_data(
    progress: float | None = None,
    message: str = "",
    details: dict[str, Any] | None = None,
    current: float | None = None,
    total: float | None = None,
) -> dict[str, Any]:
    """The ``data`` of a progress event; ``current``/``total`` only when given."""
    data: dict[str, Any] = {
        "progress": progress_fraction(progress, current, total),
        "message": message,
        "details": details or {},
    }
    if current is not None:
        data["current"] = current
    if total is not None:
        data["total"] = total
    return data


def status_data(status: str, message: str = "", details: dict[str, Any] | None = None) -> dict:
    """The ``data`` of a status event."""
    return {"status": status, "message": message, "details": details or {}}


def log_data(level: str, message: str) -> dict[str, Any]:
    """The ``data`` of a log event; an unknown level is an error in the caller."""
    level = level.lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    return {"level": level, "message": message}


def error_data(
    error: str, error_type: str = "Error", status: str = "failed", traceback: str | None = None
) -> dict[str, Any]:
    """The ``data`` of a terminal error event."""
    data: dict[str, Any] = {"error": error, "error_type": error_type, "status": status}
    if traceback:
        data["traceback"] = traceback
    return data


def bounded_result(value: Any, max_bytes: int) -> dict[str, Any]:
    """The ``data`` of a result event, never larger than ``max_bytes`` of JSON.

    A value that is not JSON-serializable, or too large, is replaced by a
    truncated ``repr`` with ``truncated: true``; the full value stays in
    Celery's result backend.
    """
    try:
        encoded = orjson.dumps(value)
    except TypeError:
        encoded = None
    if encoded is not None and len(encoded) <= max_bytes:
        return {"result": value}
    text = repr(value)
    raw = text.encode()
    if len(raw) > max_bytes:
        text = raw[: max(0, max_bytes - 3)].decode("utf-8", "ignore") + "..."
    return {"result": text, "truncated": True, "serializable": encoded is not None}


# Fields of ``data`` (and of ``metadata``) that may carry a task's own, unbounded values.
_CAPPED_FIELDS = ("message", "details", "result", "error", "traceback", "args", "kwargs")


def _shortened(value: Any, limit: int) -> Any:
    """``value`` if its JSON fits in ``limit`` bytes, else a string cut to about that size."""
    encoded = dumps(value)
    if len(encoded) <= limit:
        return value
    text = value if isinstance(value, str) else encoded.decode()
    return text.encode()[: max(0, limit - 3)].decode("utf-8", "ignore") + "..."


def capped(event: Event, max_bytes: int) -> Event:
    """``event`` with its large fields truncated so that it stores in about ``max_bytes``.

    PROTOCOL.md "Limits": a too large ``message``, ``details`` or ``result``
    (or log line, error, traceback, recorded arguments) is cut at the producer
    and ``data`` says ``"truncated": true``, so one task cannot make every
    subscriber receive a frame larger than it will accept.
    """
    data, metadata = event.data, event.metadata or {}
    if len(dumps(data)) + len(dumps(metadata)) <= max_bytes:
        return event
    share = max(64, max_bytes // 8)
    data = {k: _shortened(v, share) if k in _CAPPED_FIELDS else v for k, v in data.items()}
    data["truncated"] = True
    if event.metadata:
        metadata = {
            k: _shortened(v, share) if k in _CAPPED_FIELDS else v for k, v in metadata.items()
        }
    return replace(event, data=data, metadata=metadata if event.metadata else None)
