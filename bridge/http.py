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

from taskcast.bridge.access import Grant, TokenRejected, origin_allowed, request_token
from taskcast.bridge.commands import (
    MAX_ID_LENGTH,
    CommandError,
    encode,
    error_body,
    list_limit,
    list_offset,
    list_status,
    not_found_message,
)
from taskcast.bridge.limits import client_address, client_address_of
from taskcast.bridge.reader import STORE_ERRORS
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
    from taskcast.worker_config.settings import Settings

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
ORIGIN_REFUSED = "this origin is not allowed (TASKCAST_ALLOWED_ORIGINS)"
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


def cors_headers(settings: Settings, origin: str | None) -> list[tuple[str, str]]:
    """Pages on other origins import /taskcast.js as a module (a CORS fetch), read the
    JSON API and open event streams: any origin may while no allowlist is set, else
    only the listed ones (the others were refused before)."""
    if not settings.allowed_origins:
        return [("Access-Control-Allow-Origin", "*")]
    if origin is None:
        return []
    return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]


def json_response(status: int, body: Any) -> Response:
    return response(status, orjson.dumps(body, default=str), "application/json")


def error_response(status: int, code: str, message: str) -> Response:
    return json_response(status, error_body(code, message))


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
        origin = request.headers.get("Origin")
        if not origin_allowed(self.bridge.settings, origin, request.headers.get("Host")):
            return error_response(403, FORBIDDEN, ORIGIN_REFUSED)
        answer = await self._answer(connection, request)
        if answer is not None:
            self._add_cors(answer, origin)
        return answer

    def _add_cors(self, answer: Response, origin: str | None) -> None:
        for name, value in cors_headers(self.bridge.settings, origin):
            answer.headers[name] = value

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
        if path.startswith("/api/"):
            refusal = self._refusal(path, request)
            if refusal is not None:
                return refusal
        if path == "/healthz":
            return json_response(200, {"status": "ok"})
        if path == "/readyz":
            if await bridge.reader.ping():
                return json_response(200, {"status": "ready"})
            return error_response(503, UNAVAILABLE, "event store (Redis) is unreachable")
        if path == "/metrics":
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
        operation_id = unquote(path[len(_OPERATION_PREFIX) : -len(_CANCEL_SUFFIX)])
        grant = self._grant(request)
        if isinstance(grant, Response):
            return grant
        if not grant.cancels(operation_id):
            return error_response(403, FORBIDDEN, "your token does not allow cancel")
        terminate = query.get("terminate", ["false"])[-1].lower() in ("1", "true", "yes")
        try:
            body = await self.bridge.cancel(operation_id, terminate, grant.subject)
        except CommandError as exc:
            return error_response(404 if exc.code == NOT_FOUND else 409, exc.code, exc.message)
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

    def _refusal(self, path: str, request: Request) -> Response | None:
        """401 without a valid token, 403 outside its scope (PROTOCOL.md "Access control")."""
        grant = self._grant(request)
        if isinstance(grant, Response):
            return grant
        if path.startswith(_OPERATION_PREFIX):
            allowed = grant.reads(unquote(path[len(_OPERATION_PREFIX) :]))
        else:
            allowed = grant.monitors()
        if allowed:
            return None
        return error_response(403, FORBIDDEN, "your token does not allow this")

    async def _operations(self, query: dict[str, list[str]]) -> Response:
        try:
            status = list_status(query["status"][-1]) if "status" in query else None
            limit = list_limit(_integer(query["limit"][-1]) if "limit" in query else None)
            offset = list_offset(_integer(query["offset"][-1]) if "offset" in query else None)
        except ValueError as exc:
            return error_response(400, BAD_REQUEST, str(exc))
        operations = await self.bridge.reader.operations(status, limit, offset)
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
    nothing.
    """

    streams: ClassVar[EventStreams | None] = None  # set on each bridge's subclass
    _head = b""
    _sniffing = True
    _websocket = False
    _stream: EventStream | None = None
    _deadline: asyncio.TimerHandle | None = None
    _raw: asyncio.Transport | None = None
    _address: str | None = None  # set while the head is counted against the caps
    _cut: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = cast(asyncio.Transport, transport)
        if self.streams is not None:
            address = client_address_of(self._raw)
            if not self.streams.bridge.caps.head_started(address):
                self._raw.abort()  # over the caps before a request: nothing to answer yet
                return
            self._address = address
        self._deadline = asyncio.get_running_loop().call_later(HEAD_TIMEOUT, self._raw.abort)

    def _head_done(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        if self._address is not None and self.streams is not None:
            self.streams.bridge.caps.head_done(self._address)
            self._address = None

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
            return
        head, self._head, self._sniffing = self._head, b"", False
        self._head_done()
        transport = self._raw
        assert transport is not None
        complete = 0 <= end <= MAX_HEAD_BYTES
        refusal = refuse_body(head[:end]) if complete else None
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
        if self._cut is not None:
            self._cut.cancel()
        self._head_done()
        if self._stream is not None and self.streams is not None:
            self.streams.release(self._stream)
        if self._websocket:
            super().connection_lost(exc)


def connection_class(streams: EventStreams) -> type[BridgeConnection]:
    """A BridgeConnection that hands event streams to ``streams`` (one bridge's)."""
    return type("BridgeConnection", (BridgeConnection,), {"streams": streams})


# websockets' own open_timeout for the rest of the handshake.
HEAD_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0
JSON = "application/json"
MAX_HEAD_BYTES = 16 * 1024
_BODY_HEADER = re.compile(rb"^(content-length:\s*0*[1-9]|transfer-encoding:)", re.I | re.M)


def refuse_body(head: bytes) -> bytes | None:
    """The response for a request head that announces a body, else None."""
    if not _BODY_HEADER.search(head):
        return None
    method = head.split(b" ", 1)[0]
    status = 400 if method in (b"GET", b"HEAD") else 405
    message = "requests with a body are not supported" if status == 400 else ONLY_GET
    return raw_response(status, orjson.dumps(error_body(BAD_REQUEST, message)), JSON)
