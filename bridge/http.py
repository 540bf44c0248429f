"""Plain HTTP on the WebSocket port, through websockets' ``process_request`` hook.

Health checks, metrics, the JSON API (the same objects as the WebSocket
replies) and the dashboard's static files. WebSocket upgrades to ``/ws`` or
``/`` fall through to the WebSocket handler.
"""

from __future__ import annotations

import email.utils
import http
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from taskcast.bridge.commands import (
    MAX_ID_LENGTH,
    error_body,
    list_limit,
    list_status,
    not_found_message,
)
from taskcast.bridge.reader import STORE_ERRORS
from taskcast.protocol import BAD_REQUEST, NOT_FOUND, UNAVAILABLE

if TYPE_CHECKING:
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


def response(status: int, body: bytes, content_type: str) -> Response:
    """An HTTP response websockets sends instead of completing a handshake."""
    code = http.HTTPStatus(status)
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            ("Cache-Control", "no-cache"),
            # Pages on other origins import /taskcast.js as a module (a CORS fetch)
            # and read the JSON API; nothing here is private to one origin.
            ("Access-Control-Allow-Origin", "*"),
        ]
    )
    return Response(code.value, code.phrase, headers, body)


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
        url = urlsplit(request.path)
        path = url.path
        if is_upgrade(request):
            if path in WEBSOCKET_PATHS:
                return None
            return error_response(404, NOT_FOUND, "WebSocket endpoint is /ws")
        if request.method != "GET":
            return error_response(405, BAD_REQUEST, "only GET is supported")
        try:
            return await self._route(path, parse_qs(url.query))
        except STORE_ERRORS:
            return error_response(503, UNAVAILABLE, "event store (Redis) is unreachable")

    async def _route(self, path: str, query: dict[str, list[str]]) -> Response:
        bridge = self.bridge
        if path == "/healthz":
            return json_response(200, {"status": "ok"})
        if path == "/readyz":
            if await bridge.reader.ping():
                return json_response(200, {"status": "ready"})
            return error_response(503, UNAVAILABLE, "event store (Redis) is unreachable")
        if path == "/metrics":
            return response(200, bridge.metrics.render(), bridge.metrics.content_type)
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
            return self._static("index.html")
        if path == "/taskcast.js":
            return self._static("taskcast.js")
        if path.startswith("/static/"):
            return self._static(path[len("/static/") :])
        return error_response(404, NOT_FOUND, f"no such path: {path[:200]}")

    async def _operations(self, query: dict[str, list[str]]) -> Response:
        try:
            status = list_status(query["status"][-1]) if "status" in query else None
            limit = list_limit(_integer(query["limit"][-1]) if "limit" in query else None)
        except ValueError as exc:
            return error_response(400, BAD_REQUEST, str(exc))
        operations = await self.bridge.reader.operations(status, limit)
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
