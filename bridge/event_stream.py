"""Server-Sent Events, the adapter: an event stream is a hub connection that writes SSE
messages straight to its TCP transport (PROTOCOL.md "Server-Sent Events").

A stream gets what a WebSocket ``subscribe`` (or ``subscribe_all``) gets, through the
same hub, so ordering, resume, epochs and the send budget are the WebSocket's; only
the encoding differs. The HTTP head is written when the first reply is ready, so a
resume of an operation that ended and was fully seen can still answer 204 (the
one answer after which EventSource stops reconnecting), and a store outage 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from taskcast.bridge.access import Grant, TokenRejected, permits, request_token
from taskcast.bridge.commands import Command, CommandError, encode, error_body, error_frame
from taskcast.bridge.http import (
    CAP_REFUSALS,
    browser_refusal,
    cors_headers,
    raw_response,
)
from taskcast.bridge.hub import LIVE, REPLY, Connection, Frame, Hub
from taskcast.bridge.limits import client_address_of
from taskcast.bridge.metrics import LagHistogram
from taskcast.bridge.reader import STORE_ERRORS
from taskcast.bridge.sse import (
    KEEPALIVE,
    StreamRequest,
    event_message,
    opening_status,
    reply_message,
    response_head,
)
from taskcast.protocol import FORBIDDEN, UNAUTHORIZED, UNAVAILABLE

if TYPE_CHECKING:
    from taskcast.bridge.server import Bridge

log = logging.getLogger("taskcast.bridge")

# Write to a stream's transport only while it buffers less than this; the rest waits
# in the hub's outbox, where it counts against the send budget. The transport's high
# mark sits just below it, so a write that fills it pauses the transport, and its
# resume_writing writes again.
WRITE_LIMIT = 32 * 1024
# A stream over its send budget this long, not reading, is ended (the WebSocket's
# 4008 rule, see Bridge._wait_drained); its client resumes with Last-Event-ID.
SLOW_READER_GRACE = 10.0
STORE_DOWN = "event store (Redis) is unreachable; retry later"
TOKEN_REQUIRED = "a token is required (Authorization: Bearer, or ?token= for EventSource)"
NOT_ALLOWED = "your token does not allow this"


class EventStream(Connection):
    """One SSE client. ``operation_id`` None: the monitor stream, which never ends by itself."""

    __slots__ = (
        "transport",
        "address",
        "operation_id",
        "since",
        "cors",
        "head_sent",
        "ended",
        "flush_due",
        "expiry",
        "grace",
        "hub",
        "lag",
        "streams",
        "close",
    )

    def __init__(
        self,
        streams: EventStreams,
        transport: asyncio.Transport,
        address: str,
        request: StreamRequest,
        cors: list[tuple[str, str]],
        close: Callable[[], None],
    ) -> None:
        """``close`` closes the connection after what was written (cut off if unread)."""
        super().__init__(uuid.uuid4().hex)
        self.streams = streams
        self.close = close
        self.hub: Hub = streams.bridge.hub
        self.lag: LagHistogram = streams.bridge.metrics.delivery_lag
        self.transport = transport
        self.address = address
        self.operation_id = request.operation_id
        self.since = request.since
        self.cors = cors
        self.head_sent = False
        self.ended = False
        self.flush_due = False
        self.expiry: asyncio.TimerHandle | None = None
        self.grace: asyncio.TimerHandle | None = None

    def ready(self) -> None:
        """The hub queued frames: write them at the end of this loop turn, all at once."""
        if not self.flush_due:
            self.flush_due = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write while the transport takes it; the rest waits for ``resume_writing``.

        A stream left over its send budget must read within ``SLOW_READER_GRACE``.
        """
        self.flush_due = False
        transport = self.transport
        while not self.ended and (room := WRITE_LIMIT - transport.get_write_buffer_size()) > 0:
            chunks: list[bytes] = []
            end = False
            while not end and room > 0 and (frame := self.hub.take(self)) is not None:
                data, end = self._message(frame)
                chunks.append(data)
                room -= len(data)
            if not chunks:
                break
            transport.write(b"".join(chunks))
            if end:
                self.end()
        self._watch_budget()

    def _watch_budget(self) -> None:
        over = not self.ended and self.hub.over_budget(self)
        if over and self.grace is None:
            self.grace = asyncio.get_running_loop().call_later(SLOW_READER_GRACE, self._evict)
        elif not over and self.grace is not None:
            self.grace.cancel()
            self.grace = None

    def _evict(self) -> None:
        self.grace = None
        if not self.ended and self.hub.over_budget(self):
            self.hub.evict(self)

    def _message(self, frame: Frame) -> tuple[bytes, bool]:
        """A frame's bytes on the wire, and whether the stream ends after them."""
        return self._reply(frame.payload) if frame.kind == REPLY else self._event(frame)

    def _reply(self, payload: bytes) -> tuple[bytes, bool]:
        """The first reply decides the HTTP status; later ones (a renewed epoch's
        ``subscribed``) are messages."""
        if not self.head_sent:
            self.head_sent = True
            status = opening_status(payload, self.since)
            if status != 200:
                body = payload if status != 204 else b""
                return raw_response(status, body, "application/json", self.cors), True
            data, ended = reply_message(payload)
            return response_head(self.cors) + data, ended and self.operation_id is not None
        data, ended = reply_message(payload)
        return data, ended and self.operation_id is not None

    def _event(self, frame: Frame) -> tuple[bytes, bool]:
        """An event's message, built once per frame and shared by every stream it goes to."""
        if frame.sse is None:
            frame.sse = event_message(frame.payload)
        data, terminal = frame.sse
        if frame.kind == LIVE:
            self.lag.observe(max(0.0, time.time() - frame.stored_at))
        return data, terminal and self.operation_id is not None

    def keepalive(self) -> None:
        if self.head_sent and not self.ended and not self.transport.get_write_buffer_size():
            self.transport.write(KEEPALIVE)

    def end(self) -> None:
        """Stop delivering; close after what was written (cut off if it is not read).
        Safe to call twice. The connection counts against the caps until it is gone."""
        if self.ended:
            return
        self.ended = True
        for timer in (self.expiry, self.grace):
            if timer is not None:
                timer.cancel()
        self.close()
        self.streams.detach(self)


class EventStreams:
    """The bridge's open event streams: opening (access, caps, subscribe), keep-alive, shutdown."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.open: set[EventStream] = set()
        self._keepalive: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._keepalive = asyncio.get_running_loop().create_task(self._keep_alive())

    def stop(self) -> None:
        """End every stream (clients resume on another bridge with Last-Event-ID)."""
        if self._keepalive is not None:
            self._keepalive.cancel()
        for stream in list(self.open):
            stream.end()

    async def _keep_alive(self) -> None:
        """A comment line every interval, so proxies and clients see the stream alive."""
        while True:
            await asyncio.sleep(self.bridge.settings.sse_keepalive)
            for stream in list(self.open):
                stream.keepalive()

    def take(
        self, transport: asyncio.Transport, request: StreamRequest, close: Callable[[], None]
    ) -> EventStream | None:
        """Start serving ``request`` on ``transport``, or refuse it (HTTP error, then
        ``close``): None.

        The checks are the WebSocket's: host and origin, connection caps, token and scope
        (an operation's read scope once the stream is open, since a group's member needs
        a store read: a refusal is then still the stream's 403 head).
        """
        bridge = self.bridge
        origin = request.header("origin")
        path = urlsplit(request.path).path
        refusal = browser_refusal(bridge.browsers, path, origin, request.header("host"))
        cors = cors_headers(bridge.browsers, path, origin) if refusal is None else []
        address = client_address_of(transport)

        def refuse(status: int, code: str, message: str) -> EventStream | None:
            body = encode(error_body(code, message))
            transport.write(raw_response(status, body, "application/json", cors))
            close()
            return None

        if refusal is not None:
            return refuse(*refusal)
        cap = bridge.caps.refusal(address)
        if cap is not None:
            return refuse(cap, *CAP_REFUSALS[cap])
        authorization = {"Authorization": request.header("authorization") or ""}
        try:
            grant = bridge.grant_for(request_token(request.path, authorization))
        except TokenRejected as exc:
            return refuse(401, UNAUTHORIZED, str(exc))
        if grant is None:
            return refuse(401, UNAUTHORIZED, TOKEN_REQUIRED)
        operation_id = request.operation_id
        if operation_id is None and not grant.monitors():
            return refuse(403, FORBIDDEN, NOT_ALLOWED)
        stream = EventStream(self, transport, address, request, cors, close)
        transport.set_write_buffer_limits(high=WRITE_LIMIT - 1, low=WRITE_LIMIT // 4)
        bridge.caps.opened(address)
        bridge.hub.connect(stream)
        self.open.add(stream)
        if grant.expires_at is not None:
            # EventSource cannot renew a token: the stream ends, the client reconnects
            # with a fresh one and resumes.
            delay = max(0.0, grant.expires_at - time.time())
            stream.expiry = asyncio.get_running_loop().call_later(delay, stream.end)
        if operation_id is None:
            bridge.hub.subscribe_all(stream, request.operation_type)
            body: dict[str, object] = {"status": "subscribed", "operation_id": "*"}
            if request.operation_type is not None:
                body["operation_type"] = request.operation_type
            bridge.hub.send(stream, encode(body))
        else:
            command = Command(
                "subscribe", operation_id=operation_id, since=request.since, epoch=request.epoch
            )
            bridge.spawn(self._subscribe(stream, command, grant))
        return stream

    async def _subscribe(self, stream: EventStream, command: Command, grant: Grant) -> None:
        assert command.operation_id is not None
        try:
            if not await permits(grant, "read", command.operation_id, self.bridge.reader):
                self.bridge.hub.send(stream, error_frame(FORBIDDEN, NOT_ALLOWED))
                return
            await self.bridge.subscribe(stream, command)
        except CommandError as exc:
            self.bridge.hub.send(stream, exc.frame())
        except STORE_ERRORS:
            self.bridge.hub.send(stream, error_frame(UNAVAILABLE, STORE_DOWN))

    def detach(self, stream: EventStream) -> None:
        """An ended stream gets nothing more: out of the hub at once."""
        self.bridge.hub.disconnect(stream)

    def release(self, stream: EventStream) -> None:
        """Its connection is gone: it no longer counts against the caps."""
        stream.end()
        if stream in self.open:
            self.open.discard(stream)
            self.bridge.caps.closed(stream.address)
