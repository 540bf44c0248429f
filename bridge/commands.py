"""Client commands of PROTOCOL.md: parsing, validation, and the frames the bridge answers with.

Pure functions with no I/O, so every malformed input a client can send is
tested directly. A frame that cannot be turned into a :class:`Command` raises
:class:`CommandError`, which carries the PROTOCOL.md error code and the
``request_id`` to echo whenever the frame had a usable one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson

from taskcast.protocol import BAD_REQUEST, PROTOCOL_VERSION, UNKNOWN_COMMAND

MAX_ID_LENGTH = 256
MAX_STATUS_LENGTH = 64
MAX_EPOCH_LENGTH = 64
# The largest since a client may send: history reads ask Redis for ids above it (64-bit).
MAX_SEQ = 2**63 - 1
DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 1000
MAX_TOKEN_LENGTH = 8192

RequestId = str | int | float

# command name -> fields it understands (others are ignored)
COMMANDS: dict[str, tuple[str, ...]] = {
    "subscribe": ("operation_id", "since", "epoch"),
    "unsubscribe": ("operation_id",),
    "subscribe_all": ("operation_type",),
    "unsubscribe_all": (),
    "get_operation": ("operation_id",),
    "list_operations": ("status", "limit", "offset", "operation_type"),
    "get_stats": (),
    "ping": (),
    "auth": ("token",),
    "cancel": ("operation_id", "terminate"),
}


class CommandError(Exception):
    """A command that cannot be carried out; becomes an error reply, never a crash."""

    def __init__(self, code: str, message: str, request_id: RequestId | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id

    def frame(self) -> bytes:
        return error_frame(self.code, self.message, self.request_id)


@dataclass(frozen=True, slots=True)
class Command:
    """A validated command; fields a command does not use keep their defaults."""

    name: str
    request_id: RequestId | None = None
    operation_id: str | None = None
    since: int = 0
    epoch: str | None = None
    operation_type: str | None = None
    status: str | None = None
    limit: int = DEFAULT_LIST_LIMIT
    offset: int = 0
    token: str | None = None
    terminate: bool = False


def request_id_of(raw: str | bytes) -> RequestId | None:
    """The frame's usable ``request_id``, or None; never raises (for refusals before parsing)."""
    try:
        message = orjson.loads(raw)
        return _request_id(message) if isinstance(message, dict) else None
    except (orjson.JSONDecodeError, CommandError):
        return None


def _request_id(message: dict[str, Any]) -> RequestId | None:
    value = message.get("request_id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise CommandError(BAD_REQUEST, "request_id must be a string or a number")
    if isinstance(value, str) and len(value) > MAX_ID_LENGTH:
        raise CommandError(BAD_REQUEST, f"request_id must be at most {MAX_ID_LENGTH} characters")
    return value


def _text(value: Any, name: str, max_length: int, required: bool) -> str | None:
    if value is None:
        if required:
            raise ValueError(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    if not value or len(value) > max_length:
        raise ValueError(f"{name} must be 1 to {max_length} characters long")
    return value


def _integer(value: Any, name: str, low: int, default: int, high: int = MAX_SEQ) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}")
    if value > high:
        raise ValueError(f"{name} must be at most {high}")
    return value


def _flag(value: Any, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false")
    return value


def list_limit(value: Any) -> int:
    """``list_operations``' limit: default 50, at least 1, anything above 1000 means 1000."""
    return min(_integer(value, "limit", 1, DEFAULT_LIST_LIMIT), MAX_LIST_LIMIT)


def list_offset(value: Any) -> int:
    """``list_operations``' offset: how many of the listing's newest to skip (default 0)."""
    return _integer(value, "offset", 0, 0)


def list_status(value: Any) -> str | None:
    """``list_operations``' status filter: ``active``, ``finished`` or a status name."""
    return _text(value, "status", MAX_STATUS_LENGTH, required=False)


def list_type(value: Any) -> str | None:
    """``list_operations``' type filter: a type, or a prefix ending in ``*`` (``reports.*``)."""
    return _text(value, "operation_type", MAX_ID_LENGTH, required=False)


def parse_command(raw: str | bytes) -> Command:
    """Validate one inbound frame; raise :class:`CommandError` if it is not a usable command."""
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise CommandError(BAD_REQUEST, "frame is not valid JSON") from None
    if not isinstance(message, dict):
        raise CommandError(BAD_REQUEST, "frame must be a JSON object")
    request_id = _request_id(message)
    name = message.get("command")
    if name is None:
        raise CommandError(BAD_REQUEST, "command is required", request_id)
    if not isinstance(name, str):
        raise CommandError(BAD_REQUEST, "command must be a string", request_id)
    if name not in COMMANDS:
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise CommandError(UNKNOWN_COMMAND, f"unknown command {shown!r}", request_id)
    fields = COMMANDS[name]
    values: dict[str, Any] = {}
    try:
        if "operation_id" in fields:
            values["operation_id"] = _text(
                message.get("operation_id"), "operation_id", MAX_ID_LENGTH, required=True
            )
        if "since" in fields:
            values["since"] = _integer(message.get("since"), "since", 0, 0)
        if "epoch" in fields:
            values["epoch"] = _text(message.get("epoch"), "epoch", MAX_EPOCH_LENGTH, required=False)
        if "operation_type" in fields:
            values["operation_type"] = list_type(message.get("operation_type"))
        if "status" in fields:
            values["status"] = list_status(message.get("status"))
        if "limit" in fields:
            values["limit"] = list_limit(message.get("limit"))
        if "offset" in fields:
            values["offset"] = list_offset(message.get("offset"))
        if "token" in fields:
            values["token"] = _text(message.get("token"), "token", MAX_TOKEN_LENGTH, required=True)
        if "terminate" in fields:
            values["terminate"] = _flag(message.get("terminate"), "terminate")
    except ValueError as exc:
        raise CommandError(BAD_REQUEST, str(exc), request_id) from None
    return Command(name, request_id, **values)


def encode(body: dict[str, Any], request_id: RequestId | None = None) -> bytes:
    """A reply frame: ``body`` plus the echoed ``request_id`` when the command had one."""
    if request_id is not None:
        body["request_id"] = request_id
    return exact(orjson.dumps(body, default=str))


def exact(data: bytes) -> bytes:
    """``data`` in an allocation of its own size.

    orjson returns its working buffer, which holds 4 KiB for a 100-byte reply and
    up to ten times a large one's length; a frame queued for a client that reads
    slowly would hold all of that while being charged for its length.
    """
    return memoryview(data).tobytes()


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"status": "error", "code": code, "message": message}


def error_frame(code: str, message: str, request_id: RequestId | None = None) -> bytes:
    return encode(error_body(code, message), request_id)


def not_found_message(operation_id: str) -> str:
    return f"operation {operation_id!r} not found"


def connected_frame(client_id: str, server: str, now: float | None = None) -> bytes:
    """The first frame on every connection (PROTOCOL.md's ``connected`` event)."""
    now = time.time() if now is None else now
    return exact(
        orjson.dumps(
            {
                "event_type": "connected",
                "operation_id": "system",
                "timestamp": now,
                "data": {
                    "message": "Connected to the taskcast bridge",
                    "client_id": client_id,
                    "timestamp": datetime.fromtimestamp(now, timezone.utc).isoformat(),
                    "protocol": PROTOCOL_VERSION,
                    "server": server,
                },
            }
        )
    )


def subscribed_frame(
    command: Command,
    snapshot: dict[str, Any] | None,
    recovered: bool,
    replayed: int,
) -> bytes:
    """The reply to ``subscribe``, queued just before the replayed events."""
    return encode(
        {
            "status": "subscribed",
            "operation_id": command.operation_id,
            "operation": snapshot,
            "recovered": recovered,
            "replayed": replayed,
        },
        command.request_id,
    )
