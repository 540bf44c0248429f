"""Server-Sent Events, the pure part: which requests are event streams, where they resume,
and how an event is written as an SSE message (PROTOCOL.md "Server-Sent Events").

No sockets here; :mod:`taskcast.bridge.event_stream` moves the bytes. The request
head is parsed before websockets sees it, because an event stream is an HTTP
response that never ends, which websockets' ``process_request`` cannot give.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from taskcast.bridge.commands import MAX_EPOCH_LENGTH, MAX_ID_LENGTH, MAX_SEQ
from taskcast.events import FINISHED_STATUSES
from taskcast.protocol import FORBIDDEN, UNAVAILABLE

OPERATION_PREFIX = "/api/operations/"
EVENTS_SUFFIX = "/events"
MONITOR_PATH = "/api/events"
KEEPALIVE = b": keep-alive\n\n"
TERMINAL_EVENTS = frozenset({"completed", "error"})
# Headers a request may carry once: with two, which one counts would be a guess an
# attacker could steer (one Origin for the allowlist, another for the browser).
SINGLE_HEADERS = frozenset({"origin", "host", "authorization", "last-event-id"})
# What an event name or id may hold: anything else (a line break above all) would let
# stored data write SSE fields of its own.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")

# The HTTP status of a stream whose subscribe was refused, by error code (else 400).
_REFUSALS = {UNAVAILABLE: 503, FORBIDDEN: 403}

# How long EventSource waits before reconnecting after a dropped stream (ms);
# short, because the bridge replays what was missed.
RETRY_MILLISECONDS = 1000


class StreamRequestError(ValueError):
    """An event-stream request that is malformed (HTTP 400, message for the client)."""


@dataclass(frozen=True)
class StreamRequest:
    """A parsed ``GET`` of an event stream.

    ``operation_id`` is None for the monitor stream (``/api/events``). ``since`` and
    ``epoch`` come from ``Last-Event-ID`` when the browser resumes, else from the
    query string (the first connection of a client that already holds events).
    """

    path: str
    headers: dict[str, str]
    operation_id: str | None
    since: int
    epoch: str | None
    operation_type: str | None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def stream_target(method: bytes, target: bytes) -> bool:
    """Whether a request line asks for an event stream (only then is it taken over)."""
    if method != b"GET":
        return False
    path = urlsplit(target.decode("latin-1")).path
    return path == MONITOR_PATH or (
        path.startswith(OPERATION_PREFIX) and path.endswith(EVENTS_SUFFIX)
    )


def parse_stream_request(head: bytes) -> StreamRequest | None:
    """The event-stream request in a request head, None for any other request.

    Raises StreamRequestError for a stream request with a bad id or resume point.
    A WebSocket upgrade is never a stream request, whatever its path.
    """
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not stream_target(parts[0].encode(), parts[1].encode()):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        name = name.strip().lower()
        if name in headers and name in SINGLE_HEADERS:
            raise StreamRequestError(f"the {name} header must be sent once")
        headers[name] = value.strip()
    if "websocket" in headers.get("upgrade", "").lower():
        return None
    target = parts[1]
    url = urlsplit(target)
    query = parse_qs(url.query)
    operation_id = None
    if url.path != MONITOR_PATH:
        operation_id = unquote(url.path[len(OPERATION_PREFIX) : -len(EVENTS_SUFFIX)])
        if not operation_id or len(operation_id) > MAX_ID_LENGTH or "/" in operation_id:
            raise StreamRequestError(f"operation_id must be 1 to {MAX_ID_LENGTH} characters long")
    since, epoch = resume_point(headers.get("last-event-id"), query)
    operation_type = query["operation_type"][-1] if "operation_type" in query else None
    return StreamRequest(target, headers, operation_id, since, epoch, operation_type)


def resume_point(last_event_id: str | None, query: dict[str, list[str]]) -> tuple[int, str | None]:
    """``(since, epoch)`` from ``Last-Event-ID: <epoch>:<seq>`` or ``?since=N&epoch=E``.

    The header wins: a browser sends it on every automatic reconnect, with the
    same URL (and so the same, older, ``since``) it first opened.
    """
    if last_event_id:
        held_epoch, sep, seq = last_event_id.rpartition(":")
        if not sep:
            raise StreamRequestError("Last-Event-ID must be <epoch>:<seq>")
        return _seq(seq, "Last-Event-ID"), _epoch(held_epoch)
    since = _seq(query["since"][-1], "since") if "since" in query else 0
    return since, _epoch(query.get("epoch", [""])[-1])


def _epoch(raw: str) -> str | None:
    if len(raw) > MAX_EPOCH_LENGTH:
        raise StreamRequestError(f"an epoch is at most {MAX_EPOCH_LENGTH} characters long")
    return raw or None


def _seq(raw: str, name: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEQ:
        raise StreamRequestError(f"{name} must end in a seq, an integer from 0 to {MAX_SEQ}")
    return value


def message(event: str, data: bytes, event_id: str | None = None) -> bytes:
    """One SSE message. ``data`` is compact JSON, so it never holds a line break."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\n".encode() + b"data: " + data + b"\n\n"


def event_message(payload: bytes) -> tuple[bytes, bool]:
    """An event's SSE message (``id: <epoch>:<seq>``), and whether it is terminal."""
    event = orjson.loads(payload)
    event_type = str(event.get("event_type", "message"))
    event_id = None
    if "seq" in event:
        event_id = _UNSAFE.sub("_", f"{event.get('epoch') or ''}:{event['seq']}")
    name = _UNSAFE.sub("_", event_type)
    return message(name, payload, event_id), event_type in TERMINAL_EVENTS


def reply_message(payload: bytes) -> tuple[bytes, bool]:
    """A command reply's SSE message (``subscribed`` or ``error``), and whether the
    stream has nothing more to give: the operation already ended and no event follows."""
    reply = orjson.loads(payload)
    if reply.get("status") != "subscribed":
        return message("error", payload), True
    snapshot = reply.get("operation") or {}
    ended = snapshot.get("status") in FINISHED_STATUSES and not reply.get("replayed")
    return message("subscribed", payload), ended


def opening_status(reply_payload: bytes, since: int) -> int:
    """A stream's HTTP status, decided by its first reply.

    204 for a resume of an ended operation whose client holds every event: the one
    answer after which EventSource stops reconnecting (it reconnects after any
    other end of stream). 503 while the store is down, 403 outside the token's scope,
    400 for other refusals.
    """
    reply = orjson.loads(reply_payload)
    if reply.get("status") != "subscribed":
        return _REFUSALS.get(reply.get("code"), 400)
    snapshot = reply.get("operation") or {}
    if since > 0 and not reply.get("replayed") and snapshot.get("status") in FINISHED_STATUSES:
        return 204
    return 200


def response_head(extra: list[tuple[str, str]]) -> bytes:
    """The 200 head of an event stream; its body ends when the connection closes."""
    lines = [
        "HTTP/1.1 200 OK",
        "Content-Type: text/event-stream; charset=utf-8",
        "Cache-Control: no-cache",
        "Connection: close",
        # Reverse proxies (nginx) would otherwise buffer the stream.
        "X-Accel-Buffering: no",
        *(f"{name}: {value}" for name, value in extra),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + f"retry: {RETRY_MILLISECONDS}\n\n".encode()
