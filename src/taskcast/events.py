"""The event envelope of PROTOCOL.md and what each event does to a snapshot.

Pure functions, no I/O: the store turns an :class:`Event` into the exact
bytes clients receive (only ``seq`` is filled in by Redis), and into the
snapshot fields the same atomic append writes.
"""

from __future__ import annotations

import re
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
# A ``queued`` status: reopens an operation that ended, and stores nothing for one that
# is still waiting (an id announced before its message was sent, see tasks/canvas.py).
KIND_QUEUED = b"q"


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
        status = self.data.get("status") if self.event_type == "status" else None
        if not isinstance(status, str):  # a task may set any value; only names count
            status = None
        if status == "queued" and not self.reopens:
            return KIND_QUEUED
        if self.reopens or status in REOPENING_STATUSES:
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
                details = data.get("details")  # a cut event's details may be text
                worker = details.get("worker") if isinstance(details, dict) else None
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


# PROTOCOL.md 1.2 "Limits": every string of an event is bounded, whatever a task or
# Celery put there (the figures are in PROTOCOL_NOTES.md, "Limits: the bridge's choices").
STATUS_CHARS = 64  # status and log level: as long as the status list_operations filters on
ERROR_TYPE_CHARS = 128  # an exception's class name
OPERATION_TYPE_CHARS = 256  # as long as the operation ids and type filters the bridge takes
KEY_CHARS = 128  # every key of data, details and metadata, at any depth
MAX_DEPTH = 32  # deeper containers become "...", well before orjson refuses the nesting
FLOOR_BYTES = 64  # JSON each field may keep when sharing the limit is not enough
# What the store's script puts between an event's prefix and suffix: the seq (at most
# 20 digits) and ``,"epoch":`` with the epoch's 19 characters in quotes.
STORE_ADDS = 20 + len(',"epoch":""') + 19
ELLIPSIS = "..."
# The ``data`` fields this module's builders write; a cut event keeps only these.
PROTOCOL_FIELDS = frozenset(
    {
        "status", "message", "details", "progress", "current", "total", "eta", "rate",
        "retry_in", "reason", "level", "result", "serializable", "duration", "error",
        "error_type", "traceback",
    }
)  # fmt: skip
_NAME_CHARS = {"status": STATUS_CHARS, "level": STATUS_CHARS, "error_type": ERROR_TYPE_CHARS}
_CONTAINERS = (dict, list, tuple)
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_SPAN_ID = re.compile(r"[0-9a-f]{16}")


class EventTooLarge(ValueError):
    """The operation id (or event type) alone leaves no room under the size limit.

    Such an event is not stored: cutting the id would file it under another operation.
    """


def stored_size(event: Event) -> int:
    """The most bytes ``event`` costs: the JSON clients receive, plus its metadata.

    The metadata goes to the snapshot, not into the frame; it counts against the same
    limit so that a ``queued`` event cannot give the snapshot a field of any size.
    """
    prefix, suffix = event.encode()
    return len(prefix) + STORE_ADDS + len(suffix) + len(dumps(event.metadata or {}))


def cut_text(text: str, max_json_bytes: int) -> str:
    """``text``, or its longest start followed by ``...``, whose JSON fits ``max_json_bytes``.

    Measured as JSON, not in characters or UTF-8 bytes: a control character takes six
    bytes there (``\\u0001``), so a string cut any other way could still be 6 times over.
    """
    keep, size = len(text), len(dumps(text))
    while size > max_json_bytes and keep:
        keep = min(keep - 1, keep * max_json_bytes // size)  # in proportion to the excess
        size = len(dumps(text[:keep] + ELLIPSIS))
    return text if keep == len(text) else text[:keep] + ELLIPSIS


def _shortened(value: Any, max_json_bytes: int) -> Any:
    """``value`` if its JSON fits, else the string (or that JSON as text) cut to fit."""
    encoded = dumps(value)
    if len(encoded) <= max_json_bytes:
        return value
    return cut_text(value if isinstance(value, str) else encoded.decode(), max_json_bytes)


def _name(value: Any, chars: int) -> Any:
    """A name (status, key, type) of at most ``chars`` characters: a list or an object
    becomes its JSON text, cut like a string; numbers, booleans and null stay as they are."""
    if isinstance(value, _CONTAINERS):
        value = dumps(value).decode()
    if isinstance(value, str) and len(value) > chars:
        return value[: chars - len(ELLIPSIS)] + ELLIPSIS
    return value


class _Bounded:
    """Bounded copies of JSON-like containers: every key within ``KEY_CHARS``, nesting
    within ``MAX_DEPTH`` (deeper containers become ``"..."``) and at most ``nodes``
    values in all (past that, every container is cut short; a list ends with ``"..."``).

    Cyclic or shared structures and lists of millions of items so cost a bounded time
    here and in the JSON encoder. A container with nothing to change is returned as it
    is, and ``cut`` stays false: the usual, small event costs no copy.
    """

    def __init__(self, nodes: int) -> None:
        self.nodes = nodes
        self.cut = False

    def copy(self, value: Any, depth: int = 0) -> Any:
        if not isinstance(value, _CONTAINERS):
            return value
        if depth >= MAX_DEPTH:
            self.cut = True
            return ELLIPSIS
        outer, self.cut = self.cut, False
        out: dict[Any, Any] | list[Any]
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if self.nodes <= 0:
                    self.cut = True
                    break
                self.nodes -= 1
                if isinstance(key, str) and len(key) > KEY_CHARS:
                    key, self.cut = _name(key, KEY_CHARS), True
                out[key] = self.copy(item, depth + 1) if isinstance(item, _CONTAINERS) else item
        else:
            out = []
            for item in value:
                if self.nodes <= 0:
                    self.cut = True
                    out.append(ELLIPSIS)
                    break
                self.nodes -= 1
                out.append(self.copy(item, depth + 1) if isinstance(item, _CONTAINERS) else item)
        inner, self.cut = self.cut, outer or self.cut
        return out if inner else value


def _bounded_fields(event: Event, max_bytes: int) -> Event:
    """``event`` with every name and key within its limit, and trace ids only of W3C form
    (the event itself when that changes nothing).

    Whatever the event's size: a status is also a snapshot field and a listing filter,
    and a key a reader's code indexes with, not only bytes in a frame.
    """
    walk = _Bounded(max_bytes)  # each value costs at least a byte of JSON
    data = walk.copy(event.data)
    metadata = walk.copy(event.metadata)
    names = {key: _name(data[key], chars) for key, chars in _NAME_CHARS.items() if key in data}
    operation_type = _name(event.operation_type, OPERATION_TYPE_CHARS)
    cut = (
        walk.cut
        or operation_type is not event.operation_type
        or any(name is not data[key] for key, name in names.items())
    )
    traced = event.trace_id is None or (
        isinstance(event.trace_id, str)
        and isinstance(event.span_id, str)
        and _TRACE_ID.fullmatch(event.trace_id) is not None
        and _SPAN_ID.fullmatch(event.span_id) is not None
    )
    if not cut and traced:
        return event
    return replace(
        event,
        data={**data, **names, "truncated": True} if cut else data,
        metadata=metadata,
        operation_type=operation_type,
        trace_id=event.trace_id if traced else None,
        span_id=event.span_id if traced else None,
    )


def _each_cut(event: Event, max_json_bytes: int) -> Event:
    """Every field of ``data`` and ``metadata`` cut to ``max_json_bytes`` of JSON."""
    data = {key: _shortened(value, max_json_bytes) for key, value in event.data.items()}
    metadata = event.metadata and {
        key: _shortened(value, max_json_bytes) for key, value in event.metadata.items()
    }
    return replace(event, data={**data, "truncated": True}, metadata=metadata)


def _protocol_only(event: Event) -> Event:
    """Only PROTOCOL.md's fields, each in ``FLOOR_BYTES``, and no metadata: for events
    with too many fields of their own for a share of the limit each."""
    data = {k: _shortened(v, FLOOR_BYTES) for k, v in event.data.items() if k in PROTOCOL_FIELDS}
    return replace(event, data={**data, "truncated": True}, metadata=None)


def _status_only(event: Event) -> Event:
    """The least an event can say: its status, which the snapshot needs (if it has one)."""
    data = {"status": event.data["status"]} if "status" in event.data else {}
    return replace(event, data={**data, "truncated": True})


def capped(event: Event, max_bytes: int) -> Event:
    """``event`` bounded so that :func:`stored_size` is at most ``max_bytes``.

    PROTOCOL.md "Limits": one task must not make every subscriber receive a frame
    larger than it accepts (a client closed with 1009 does not come back). Names and
    keys are always bounded; then, only while the event is still too large: each field
    is cut to an eighth of the limit; then only the protocol's fields are kept, at
    ``FLOOR_BYTES`` each; then only ``status``. A cut event says ``"truncated": true``.
    ``event_type``, ``operation_id``, ``timestamp`` and the append's kind are never
    changed. The one place the limit is checked, on the encoded bytes: the producer and
    the Celery-event ingester both store what this returns.

    Raises :class:`EventTooLarge` when even the last step does not fit, and
    ``orjson.JSONEncodeError`` for data JSON cannot carry (a non-string key).
    """
    bounded = _bounded_fields(event, max_bytes)
    if stored_size(bounded) <= max_bytes:
        return bounded
    share = max(FLOOR_BYTES, max_bytes // 8)
    for shrink in (lambda e: _each_cut(e, share), _protocol_only, _status_only):
        bounded = shrink(bounded)
        if stored_size(bounded) <= max_bytes:
            return bounded
    raise EventTooLarge(
        f"a {event.event_type!r} event of an operation id of {len(event.operation_id)} "
        f"characters cannot fit in {max_bytes} bytes"
    )
