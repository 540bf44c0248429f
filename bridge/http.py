"""Plain HTTP on the WebSocket port, through websockets' ``process_request`` hook.

Health checks, metrics, the JSON API (the same objects as the WebSocket
replies) and the dashboard's static files. WebSocket upgrades to ``/ws`` or
``/`` fall through to the WebSocket handler.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import http
import re
import socket
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from taskcast.bridge.access import BrowserPolicy, Grant, TokenRejected, permits, request_token
from taskcast.bridge.commands import (
    MAX_ID_LENGTH,
    CommandError,
    encode,
    error_body,
    list_limit,
    list_offset,
    list_status,
    list_type,
    not_found_message,
)
from taskcast.bridge.limits import IDLE_HEAD_TIMEOUT, client_address, client_address_of
from taskcast.bridge.reader import PROBE_TIMEOUT, STORE_ERRORS
from taskcast.bridge.sse import SINGLE_HEADERS, StreamRequestError, parse_stream_request
from taskcast.protocol import (
    BAD_REQUEST,
    FORBIDDEN,
    NOT_FOUND,
    RATE_LIMITED,
    UNAUTHORIZED,
    UNAVAILABLE,
)

if TYPE_CHECKING:
    from taskcast.bridge.event_stream import EventStream, EventStreams
    from taskcast.bridge.server import Bridge

WEBSOCKET_PATHS = frozenset({"/", "/ws"})
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".woff2": "font/woff2",
}
# One path segment, no leading dot: no traversal, no hidden files, no subdirectories.
_STATIC_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,200}")
_OPERATION_PREFIX = "/api/operations/"
_CANCEL_SUFFIX = "/cancel"
ONLY_GET = "only GET and HEAD are supported"
SMALL_BODY = 1024
BUSY = "the bridge holds all it may for its clients (TASKCAST_MAX_BUFFERED_BYTES); retry"
ORIGIN_REFUSED = (
    "this origin is not allowed: pages on other origins than the bridge's need "
    "TASKCAST_ALLOWED_ORIGINS"
)
METRICS_ORIGIN_REFUSED = "/metrics is not served to pages on other origins"
HOST_REFUSED = (
    "this Host is not a name of the bridge (refused against DNS rebinding): add it to "
    "TASKCAST_ALLOWED_HOSTS, or set TASKCAST_PUBLIC_URL"
)
CANCEL_NEEDS = (
    "cancel needs Content-Type: application/json or an Authorization header "
    "(no HTML form or simple cross-site request can send either)"
)
# Orchestrators probe these by whatever address they know: no Host check, no CORS.
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
METRICS_PATH = "/metrics"
# Paths a page on another origin never reads, listed or not.
NO_CORS_PATHS = PROBE_PATHS | {METRICS_PATH}
# A preflight's answer for a listed origin: what its fetch may send, cached 10 minutes.
PREFLIGHT = [
    ("Access-Control-Allow-Methods", "GET, HEAD, POST"),
    ("Access-Control-Allow-Headers", "Authorization, Content-Type, Last-Event-ID"),
    ("Access-Control-Max-Age", "600"),
]
ALLOW = "GET, HEAD, POST, OPTIONS"
CAP_REFUSALS = {
    503: (UNAVAILABLE, "this bridge is at its connection limit (TASKCAST_MAX_CONNECTIONS)"),
    429: (RATE_LIMITED, "too many connections from your address (TASKCAST_MAX_CONNECTIONS_PER_IP)"),
}


# The dashboard loads only its own files and talks only to this bridge.
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
SERVER_HEADER = "taskcast"  # no library or version for a scanner to match


def response_head(status: int, length: int, content_type: str) -> list[tuple[str, str]]:
    head = [
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Connection", "close"),
        ("Content-Length", str(length)),
        ("Content-Type", content_type),
        ("Cache-Control", "no-cache"),
    ]
    return head if status != 204 else [item for item in head if item[0] != "Content-Length"]


def response(status: int, body: bytes, content_type: str) -> Response:
    """An HTTP response websockets sends instead of completing a handshake."""
    code = http.HTTPStatus(status)
    headers = Headers(response_head(status, len(body), content_type))
    return Response(code.value, code.phrase, headers, body)


def raw_response(
    status: int, body: bytes, content_type: str, extra: list[tuple[str, str]] | None = None
) -> bytes:
    """The same response as bytes, for requests answered without websockets (bodies,
    event streams)."""
    code = http.HTTPStatus(status)
    head = [f"HTTP/1.1 {code.value} {code.phrase}"]
    fields = response_head(status, len(body), content_type) + (extra or [])
    head += [f"{name}: {value}" for name, value in fields]
    head.append(f"Server: {SERVER_HEADER}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def browser_refusal(
    policy: BrowserPolicy, path: str, origin: str | None, host: str | None
) -> tuple[int, str, str] | None:
    """Why a request is refused for its ``Host`` or ``Origin`` (status, code, message), or
    None: the one check of HTTP requests, WebSocket handshakes and event streams.

    Requests without an Origin (programs, not browsers) and the bridge's own pages pass;
    other origins only when listed, and never for ``/metrics``.
    """
    if path not in PROBE_PATHS and not policy.host_allowed(host):
        return 403, FORBIDDEN, HOST_REFUSED
    if origin is None or policy.own(origin, host):
        return None
    if path == METRICS_PATH:
        return 403, FORBIDDEN, METRICS_ORIGIN_REFUSED
    if policy.listed(origin):
        return None
    return 403, FORBIDDEN, ORIGIN_REFUSED


def cors_headers(policy: BrowserPolicy, path: str, origin: str | None) -> list[tuple[str, str]]:
    """CORS headers for a listed origin (its own origin echoed, never ``*``): pages there
    import /taskcast.js, read the JSON API and open event streams. The bridge's own pages
    need none, and probes and metrics are for no page."""
    if path in NO_CORS_PATHS or not policy.listed(origin):
        return []
    assert origin is not None
    return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]


def deliberate(headers: Headers) -> bool:
    """Whether a state-changing request carries what no HTML form or CORS "simple" request
    can: an ``Authorization`` header or a JSON body type (either needs a preflight across
    origins), so another site cannot make a user's browser send it unasked."""
    if headers.get_all("Authorization"):
        return True
    types = headers.get_all("Content-Type")
    return len(types) == 1 and types[0].partition(";")[0].strip().lower() == JSON


def json_response(status: int, body: Any) -> Response:
    return response(status, orjson.dumps(body, default=str), "application/json")


def error_response(status: int, code: str, message: str) -> Response:
    return json_response(status, error_body(code, message))


def preflight(cors: list[tuple[str, str]]) -> Response:
    """The answer to ``OPTIONS``: for a listed origin (``cors`` not empty) a CORS preflight's
    permissions; the methods for anyone else (who sends no preflight)."""
    answer = response(204, b"", JSON)
    answer.headers["Allow"] = ALLOW
    for name, value in PREFLIGHT if cors else []:
        answer.headers[name] = value
    return answer


def is_upgrade(request: Request) -> bool:
    return "websocket" in request.headers.get("Upgrade", "").lower()


class HttpRoutes:
    """``process_request`` for the bridge: None lets a WebSocket handshake proceed."""

    def __init__(self, bridge: Bridge, static_dir: Path) -> None:
        self.bridge = bridge
        self.static_dir = static_dir

    async def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        # Which of two Origins (or tokens) counts would be a guess an attacker steers.
        for name in SINGLE_HEADERS:
            if len(request.headers.get_all(name)) > 1:
                return error_response(400, BAD_REQUEST, f"the {name} header must be sent once")
        path = urlsplit(request.path).path
        origin = request.headers.get("Origin")
        policy = self.bridge.browsers
        refusal = browser_refusal(policy, path, origin, request.headers.get("Host"))
        if refusal is not None:
            return error_response(*refusal)
        cors = cors_headers(policy, path, origin)
        if request.method == "OPTIONS":
            answer: Response | None = preflight(cors)
        else:
            answer = await self._answer(connection, request)
        if answer is None:
            return None
        if isinstance(connection, BridgeConnection) and not connection.hold(answer.body):
            return error_response(503, UNAVAILABLE, BUSY)
        for name, value in cors:
            answer.headers[name] = value
        return answer

    async def _answer(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        path = url.path
        if is_upgrade(request):
            if path not in WEBSOCKET_PATHS:
                return error_response(404, NOT_FOUND, "WebSocket endpoint is /ws")
            refusal = self.bridge.caps.refusal(client_address(connection))
            if refusal is not None:
                return error_response(refusal, *CAP_REFUSALS[refusal])
            return None
        if request.method == "POST" and path.startswith(_OPERATION_PREFIX) and path.endswith(
            _CANCEL_SUFFIX
        ):
            return await self._cancel(path, parse_qs(url.query), request)
        if request.method not in ("GET", "HEAD"):
            return error_response(405, BAD_REQUEST, ONLY_GET)
        try:
            routed = await self._route(path, parse_qs(url.query), request)
        except STORE_ERRORS:
            routed = error_response(503, UNAVAILABLE, "event store (Redis) is unreachable")
        if request.method == "HEAD":  # the GET's headers, Content-Length included, no body
            return dataclasses.replace(routed, body=b"")
        return routed

    async def _route(self, path: str, query: dict[str, list[str]], request: Request) -> Response:
        bridge = self.bridge
        if path == "/api/config":  # what the dashboard needs to render: as open as the page
            return json_response(200, {"trace_url": bridge.settings.trace_url or None})
        if path.startswith("/api/") or path == METRICS_PATH:
            refusal = await self._refusal(path, request)
            if refusal is not None:
                return refusal
        if path == "/healthz":
            return json_response(200, {"status": "ok"})
        if path == "/readyz":
            if await bridge.reader.ping(PROBE_TIMEOUT):
                return json_response(200, {"status": "ready"})
            return error_response(503, UNAVAILABLE, "event store (Redis) is unreachable")
        if path == METRICS_PATH:
            producers = await bridge.producer_totals()
            return response(200, bridge.metrics.render(producers), bridge.metrics.content_type)
        if path == "/api/stats":
            return json_response(200, {"stats": await bridge.stats()})
        if path == "/api/operations":
            return await self._operations(query)
        if path.startswith(_OPERATION_PREFIX):
            return await self._operation(unquote(path[len(_OPERATION_PREFIX) :]))
        if path == "/ws":
            upgrade = error_response(426, BAD_REQUEST, "/ws is the WebSocket endpoint")
            upgrade.headers["Upgrade"] = "websocket"
            return upgrade
        if path == "/":
            page = self._static("index.html")
            page.headers["Content-Security-Policy"] = DASHBOARD_CSP
            return page
        if path == "/taskcast.js":
            return self._static("taskcast.js")
        if path.startswith("/static/"):
            return self._static(path[len("/static/") :])
        return error_response(404, NOT_FOUND, f"no such path: {path[:200]}")

    async def _cancel(
        self, path: str, query: dict[str, list[str]], request: Request
    ) -> Response:
        """``POST /api/operations/{id}/cancel[?terminate=true]``: the ``cancel`` command."""
        if not deliberate(request.headers):
            return error_response(415, BAD_REQUEST, CANCEL_NEEDS)
        operation_id = unquote(path[len(_OPERATION_PREFIX) : -len(_CANCEL_SUFFIX)])
        grant = self._grant(request)
        if isinstance(grant, Response):
            return grant
        terminate = query.get("terminate", ["false"])[-1].lower() in ("1", "true", "yes")
        try:
            if not await permits(grant, "cancel", operation_id, self.bridge.reader):
                return error_response(403, FORBIDDEN, "your token does not allow cancel")
            body = await self.bridge.cancel(operation_id, terminate, grant.subject)
        except CommandError as exc:
            return error_response(404 if exc.code == NOT_FOUND else 409, exc.code, exc.message)
        except STORE_ERRORS:
            return error_response(503, UNAVAILABLE, "event store (Redis) is unreachable")
        return json_response(202, body)

    def _grant(self, request: Request) -> Grant | Response:
        """The request's grant, or the 401 refusing a missing or invalid token."""
        try:
            grant = self.bridge.grant_for(request_token(request.path, request.headers))
        except TokenRejected as exc:
            return error_response(401, UNAUTHORIZED, str(exc))
        if grant is None:
            return error_response(401, UNAUTHORIZED, "a token is required (Authorization: Bearer)")
        return grant

    async def _refusal(self, path: str, request: Request) -> Response | None:
        """401 without a valid token, 403 outside its scope (PROTOCOL.md "Access control")."""
        grant = self._grant(request)
        if isinstance(grant, Response):
            return grant
        if path.startswith(_OPERATION_PREFIX):
            operation_id = unquote(path[len(_OPERATION_PREFIX) :])
            allowed = await permits(grant, "read", operation_id, self.bridge.reader)
        elif path == METRICS_PATH:
            allowed = grant.scrapes()
        else:
            allowed = grant.monitors()
        if allowed:
            return None
        return error_response(403, FORBIDDEN, "your token does not allow this")

    async def _operations(self, query: dict[str, list[str]]) -> Response:
        last = {name: values[-1] for name, values in query.items()}
        try:
            status = list_status(last.get("status"))
            limit = list_limit(_integer(last["limit"]) if "limit" in last else None)
            offset = list_offset(_integer(last["offset"]) if "offset" in last else None)
            operation_type = list_type(last.get("operation_type"))
        except ValueError as exc:
            return error_response(400, BAD_REQUEST, str(exc))
        operations = await self.bridge.reader.operations(status, limit, offset, operation_type)
        return json_response(200, {"operations": operations})

    async def _operation(self, operation_id: str) -> Response:
        if not operation_id or len(operation_id) > MAX_ID_LENGTH:
            message = f"operation_id must be 1 to {MAX_ID_LENGTH} characters long"
            return error_response(400, BAD_REQUEST, message)
        snapshot = await self.bridge.reader.operation(operation_id)
        if snapshot is None:
            return error_response(404, NOT_FOUND, not_found_message(operation_id))
        return json_response(200, {"operation": snapshot})

    def _static(self, name: str) -> Response:
        path = self.static_dir / name
        if not _STATIC_NAME.fullmatch(name) or not path.is_file():
            return error_response(404, NOT_FOUND, f"no such file: {name[:200]}")
        content_type = CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
        return response(200, path.read_bytes(), content_type)


def _integer(raw: str) -> int:
    """A query-string integer; ``limit=abc`` gets the same message as a wrongly typed field."""
    try:
        return int(raw)
    except ValueError:
        raise ValueError("limit must be an integer >= 1") from None


class BridgeConnection(ServerConnection):
    """Reads a request's head before websockets does, for what websockets cannot answer.

    websockets reads no request body, so a POST with a body (or any chunked
    request) would be closed without a reply: those get 405 (or 400) here. An
    event stream is a response that never ends, which ``process_request`` cannot
    give: the bridge's :class:`EventStreams` takes the transport over. Everything
    else goes to websockets untouched, whose handshake (and its open timeout)
    starts only then; until then ``HEAD_TIMEOUT`` bounds a client that sends
    slowly, and the caps' :class:`~taskcast.bridge.limits.Heads` one that stops
    sending or holds too many heads.
    """

    streams: ClassVar[EventStreams | None] = None  # set on each bridge's subclass
    _head = b""
    _sniffing = True
    _websocket = False
    _stream: EventStream | None = None
    _deadline: asyncio.TimerHandle | None = None
    _idle: asyncio.TimerHandle | None = None
    _raw: asyncio.Transport | None = None
    _cut: asyncio.TimerHandle | None = None
    _held = 0  # bytes of an HTTP body counted against the bridge's cap until the end

    def hold(self, body: bytes | bytearray) -> bool:
        """Count a response body against the bridge's cap while it is being sent (a
        client that does not read keeps it until websockets' handshake timeout);
        False if it does not fit. Small bodies (health checks, errors) always go:
        descriptors bound how many can be held, and a probe must never get 503."""
        if self.streams is None or len(body) < SMALL_BODY:
            return True
        if not self.streams.bridge.hub.reserve(len(body)):
            return False
        self._held = len(body)
        return True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = cast(asyncio.Transport, transport)
        sock = self._raw.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(HEAD_TIMEOUT, self._raw.abort)
        if self.streams is not None:
            heads = self.streams.bridge.caps.heads
            victim = heads.start(self, client_address_of(self._raw), loop.time())
            if victim is not None:
                victim.drop_head()
            self._idle = loop.call_later(IDLE_HEAD_TIMEOUT, self._check_idle)

    def _check_idle(self) -> None:
        """Drop a head that has gone ``IDLE_HEAD_TIMEOUT`` without a byte; else look again
        when it would have."""
        assert self.streams is not None
        loop = asyncio.get_running_loop()
        left = self.streams.bridge.caps.heads.idle(self, loop.time())
        if left <= 0:
            self.drop_head()
        else:
            self._idle = loop.call_later(left, self._check_idle)

    def drop_head(self) -> None:
        """Abort a connection whose head is in progress (idle, or making room for another)."""
        self._head_done()
        assert self._raw is not None
        self._raw.abort()

    def _head_done(self) -> None:
        for timer in (self._deadline, self._idle):
            if timer is not None:
                timer.cancel()
        if self.streams is not None:
            self.streams.bridge.caps.heads.done(self)

    def data_received(self, data: bytes) -> None:
        if self._websocket:
            super().data_received(data)
            return
        if not self._sniffing:
            # An event stream's client has nothing more to say: one that talks on is no
            # EventSource (and would make us read for nothing); a refused one is closing.
            if self._stream is not None:
                self._stream.end()
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0 and len(self._head) < MAX_HEAD_BYTES:
            if self.streams is not None:
                self.streams.bridge.caps.heads.progress(self, asyncio.get_running_loop().time())
            return
        head, self._head, self._sniffing = self._head, b"", False
        self._head_done()
        transport = self._raw
        assert transport is not None
        complete = 0 <= end <= MAX_HEAD_BYTES
        refusal = refuse_body(head[:end]) if complete else None
        if refusal is None and complete and len(head) > end + 4 and not _UPGRADE.search(head[:end]):
            refusal = raw_response(400, PIPELINED, JSON)
        if refusal is None and complete and self.streams is not None:
            try:
                request = parse_stream_request(head[:end])
            except StreamRequestError as exc:
                refusal = raw_response(400, encode(error_body(BAD_REQUEST, str(exc))), JSON)
            else:
                if request is not None:
                    self._stream = self.streams.take(transport, request, self.close_soon)
                    return
        if refusal is not None:
            transport.write(refusal)
            self.close_soon()
            return
        # Everything else, an oversized head included (websockets answers it with 431).
        self._websocket = True
        super().connection_made(transport)
        super().data_received(head)

    def eof_received(self) -> None:
        """Before a WebSocket handshake there is nothing to tell websockets; the
        transport closes itself."""
        if self._websocket:
            super().eof_received()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stream is not None:
            self._stream.flush()

    def close_soon(self) -> None:
        """Close once the buffer is sent; a client that does not read it is cut off after
        ``CLOSE_TIMEOUT``: it must not hold a socket, nor the kernel its unsent bytes."""
        assert self._raw is not None
        self._raw.close()
        if self._cut is None:
            self._cut = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._cut_off)

    def _cut_off(self) -> None:
        self._cut = None
        assert self._raw is not None
        sock = self._raw.get_extra_info("socket")
        if sock is not None:  # a reset, which drops what is unsent instead of lingering
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._raw.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_done()
        if self._held and self.streams is not None:
            self.streams.bridge.hub.release(self._held)
            self._held = 0
        if self._stream is not None and self.streams is not None:
            self.streams.release(self._stream)  # ends it, which asks for a cut-off too
        if self._cut is not None:
            self._cut.cancel()
        if self._websocket:
            super().connection_lost(exc)


def connection_class(streams: EventStreams) -> type[BridgeConnection]:
    """A BridgeConnection that hands event streams to ``streams`` (one bridge's)."""
    return type("BridgeConnection", (BridgeConnection,), {"streams": streams})


# What the kernel buffers from a client, and so what one read hands websockets, which
# parses all of it into frame objects (a 40-byte command takes ten times that as a
# frame) before it can stop reading: commands are small, and a flood stays in the
# client's socket instead of the bridge's memory.
RECEIVE_BUFFER = 16 * 1024
# websockets' own open_timeout for the rest of the handshake.
HEAD_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0
JSON = "application/json"
MAX_HEAD_BYTES = 16 * 1024
_BODY_HEADER = re.compile(rb"^(content-length:\s*0*[1-9]|transfer-encoding:)", re.I | re.M)
_UPGRADE = re.compile(rb"^upgrade:[^\r\n]*websocket", re.I | re.M)
# A second request sent before the first is answered: websockets answers one request
# per connection and would drop it unanswered, so the whole is refused with a status.
PIPELINED = orjson.dumps(
    error_body(BAD_REQUEST, "one request per connection: pipelined requests are not served")
)


def refuse_body(head: bytes) -> bytes | None:
    """The response for a request head that announces a body, else None."""
    if not _BODY_HEADER.search(head):
        return None
    method = head.split(b" ", 1)[0]
    status = 400 if method in (b"GET", b"HEAD") else 405
    message = "requests with a body are not supported" if status == 400 else ONLY_GET
    return raw_response(status, orjson.dumps(error_body(BAD_REQUEST, message)), JSON)
