"""The bridge service: a thin asyncio adapter between WebSocket clients, the hub and Redis.

Every delivery decision lives in :mod:`bridge.hub` and every parsing rule in
:mod:`bridge.commands`; this module only moves bytes.

Frames leave by two paths. The direct path: once per event-loop turn, every
connection whose outbox filled is flushed synchronously, all its queued frames
encoded and handed to the transport in one write, as long as the transport
holds less than ``DIRECT_WRITE_LIMIT``; a live batch fanned out to many
subscribers so costs one write per subscriber, with no task and no await.
The writer path: what a backed-up transport cannot take now is sent by a
per-connection writer task that awaits each send (and so the client's
reading); it exists only while that connection has a backlog, and while it
runs it alone takes from that outbox, which keeps every connection's frames
in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame as WireFrame
from websockets.frames import Opcode
from websockets.protocol import State

from taskcast.bridge import presence
from taskcast.bridge.access import (
    AUTH_DEADLINE,
    OPEN,
    BrowserPolicy,
    Grant,
    OperationScope,
    TokenRejected,
    check_exposure,
    permits,
    query_token,
    verifier_for,
)
from taskcast.bridge.commands import (
    Command,
    CommandError,
    connected_frame,
    encode,
    error_frame,
    not_found_message,
    parse_command,
    request_id_of,
    subscribed_frame,
)
from taskcast.bridge.event_stream import EventStream, EventStreams
from taskcast.bridge.http import SERVER_HEADER, HttpRoutes, connection_class
from taskcast.bridge.hub import LIVE, Connection, Hub, Subscription
from taskcast.bridge.limits import (
    ConnectionCaps,
    RateLimitedLog,
    TokenBucket,
    client_address,
    default_max_buffered_bytes,
    default_max_connections,
)
from taskcast.bridge.metrics import BridgeMetrics
from taskcast.bridge.reader import PROBE_TIMEOUT, STORE_ERRORS, LiveTail, StoreReader
from taskcast.bridge.revoke import Revoker
from taskcast.bridge.sweeper import sweep_periodically
from taskcast.events import FINISHED_STATUSES
from taskcast.keys import is_recovered
from taskcast.protocol import (
    BAD_REQUEST,
    FORBIDDEN,
    NOT_FOUND,
    RATE_LIMITED,
    TOO_MANY_SUBSCRIPTIONS,
    UNAUTHORIZED,
    UNAVAILABLE,
)
from taskcast.worker_config.settings import Settings

log = logging.getLogger("taskcast.bridge")

try:
    SERVER_NAME = f"taskcast/{version('taskcast')}"
except PackageNotFoundError:  # running from a source tree that was never installed
    SERVER_NAME = "taskcast/unknown"

CLOSE_SLOW_CONSUMER = 4008
CLOSE_TRY_AGAIN_LATER = 1013
# How long a closing handshake may take before the TCP connection is dropped;
# short enough that shutdown finishes within 5 s even with unresponsive clients.
CLOSE_TIMEOUT = 2.0
STATS_CACHE_SECONDS = 1.0
STORE_DOWN = "event store (Redis) is unreachable; retry later"
RATE_MESSAGE = "too many commands; slow down (TASKCAST_COMMAND_RATE)"
UNAUTHENTICATED = "authenticate first: send auth with a token, or connect with ?token="
# Commands on one operation, and the scope of it they need; those of every operation.
OPERATION_COMMANDS: dict[str, OperationScope] = {
    "subscribe": "read",
    "get_operation": "read",
    "cancel": "cancel",
}
MONITOR_COMMANDS = frozenset({"subscribe_all", "list_operations", "get_stats"})
CLOSE_POLICY = 1008
# Commands refused without a second's pause between refusals before the connection
# goes, and how often at most one refusal is answered.
REFUSALS_BEFORE_CLOSE = 1000
REFUSAL_INTERVAL = 1.0
# How long a client may stay over its send budget with replies unread before 4008.
SLOW_READER_GRACE = 10.0
CLOSE_TOKEN_EXPIRED = 4401
LOOP_ERROR_LOG_INTERVAL = 1.0
# The direct path writes to a transport only while it buffers less than this
# (websockets' own default write limit), so beyond the hub's send budget a
# client that stops reading makes the bridge hold at most this plus two frames
# in its transport: one written past the limit by the direct path, one by the
# writer task before it waits for the client.
DIRECT_WRITE_LIMIT = 32 * 1024
# Frames websockets reads ahead of the handler before it stops reading the socket: a
# client over its budget is not read (see _wait_drained), and what it sent meanwhile
# waits in the kernel, not in up to 16 frames of TASKCAST_MAX_MESSAGE_BYTES each.
INBOUND_FRAMES = 4


class Peer(Connection):
    """A hub connection with its socket and, while it has a backlog, its writer task.

    ``flush_due`` is set while the connection waits for this turn's direct flush.
    """

    __slots__ = (
        "ws",
        "writer",
        "drained",
        "flush_due",
        "address",
        "bucket",
        "refused",
        "refused_at",
        "answered_refusal",
        "grant",
        "expiry",
    )

    def __init__(
        self, client_id: str, ws: ServerConnection, bucket: TokenBucket, grant: Grant | None
    ) -> None:
        super().__init__(client_id)
        self.ws = ws
        self.writer: asyncio.Task[None] | None = None
        self.drained: asyncio.Future[None] | None = None
        self.flush_due = False
        self.address = client_address(ws)
        self.bucket = bucket
        # Commands refused by the rate limit with less than a second between two of
        # them, when the last was refused, and when a refusal was last answered.
        self.refused = 0
        self.refused_at = self.answered_refusal = float("-inf")
        # None until a valid token arrives; ``expiry`` closes the connection when
        # the token runs out (4401), or when none came in time (1008).
        self.grant = grant
        self.expiry: asyncio.TimerHandle | None = None


class Bridge:
    """One bridge process: the live tail, the hub, and the WebSocket/HTTP server.

    ``await start()`` returns once the port accepts connections; ``await stop()``
    closes every connection with 1001.
    """

    def __init__(
        self, settings: Settings, static_dir: Path | None = None, reuse_port: bool = False
    ) -> None:
        """``reuse_port``: listen with SO_REUSEPORT, sharing the port with the other
        processes of ``taskcast serve --processes``."""
        check_exposure(settings)
        self.settings = settings
        self.reuse_port = reuse_port
        self.verifier = verifier_for(settings)
        self.browsers = BrowserPolicy.of(settings)
        self.hub = Hub(
            send_buffer_bytes=settings.send_buffer_bytes,
            max_buffered_bytes=settings.max_buffered_bytes
            or default_max_buffered_bytes(settings.processes),
            max_subscriptions=settings.max_subscriptions,
            on_ready=self._on_ready,
            on_overflow=self._on_overflow,
            on_resync=self._on_resync,
        )
        self.reader = StoreReader(
            settings.redis_url,
            settings.prefix,
            settings.history_ttl,
            partitions=settings.live_partitions,
            cluster=settings.redis_cluster,
        )
        self.tail = LiveTail(
            settings.redis_url,
            self.reader.keys.lives,
            self.hub.publish,
            cluster=settings.redis_cluster,
        )
        self.process = presence.process_id()
        self.metrics = BridgeMetrics(
            self.hub.snapshot_stats, lambda: self.tail.healthy, self.process
        )
        self.http = HttpRoutes(self, static_dir or Path(__file__).with_name("static"))
        self.streams = EventStreams(self)
        self.caps = ConnectionCaps(
            settings.max_connections or default_max_connections(),
            settings.max_connections_per_ip,
        )
        self._loop_errors = RateLimitedLog(log, LOOP_ERROR_LOG_INTERVAL)
        self.started = time.monotonic()
        self.port: int | None = None
        self._server: Server | None = None
        self._tail_task: asyncio.Task[None] | None = None
        self._sweep_task: asyncio.Task[None] | None = None
        self._presence_task: asyncio.Task[None] | None = None
        self._presence_stop = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        self._due: list[Peer] = []
        self._counts: tuple[float, tuple[int, int]] | None = None
        self._handlers: dict[str, Callable[[Peer, Command], Awaitable[None]]] = {
            "subscribe": self.subscribe,
            "unsubscribe": self._unsubscribe,
            "subscribe_all": self._subscribe_all,
            "unsubscribe_all": self._unsubscribe_all,
            "get_operation": self._get_operation,
            "list_operations": self._list_operations,
            "get_stats": self._get_stats,
            "ping": self._ping,
            "auth": self._auth,
            "cancel": self._cancel,
        }
        self._revoker: Revoker | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.settings.host}:{self.port}/ws"

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Find the live-stream position, start the tail, then listen.

        Redis being down is not fatal: the tail keeps retrying and commands
        that need the store answer ``unavailable`` meanwhile.
        """
        # Out of file descriptors, asyncio reports every failed accept: once a second is plenty.
        asyncio.get_running_loop().set_exception_handler(self._loop_errors.loop_handler)
        try:
            await self.tail.find_position()
        except STORE_ERRORS as exc:
            log.warning("Redis unreachable at start-up (%s); will keep retrying", exc)
        self._tail_task = asyncio.create_task(self.tail.run())
        self._sweep_task = asyncio.create_task(sweep_periodically(self.settings))
        self._presence_task = asyncio.create_task(self._report_presence())
        try:
            self._server = await serve(
                self._handle,
                self.settings.host,
                self.settings.port,
                process_request=self.http,
                server_header=SERVER_HEADER,
                create_connection=connection_class(self.streams),
                compression="deflate" if self.settings.compression else None,
                max_size=self.settings.max_message_bytes,
                max_queue=INBOUND_FRAMES,
                ping_interval=self.settings.ping_interval,
                ping_timeout=self.settings.ping_interval,
                close_timeout=CLOSE_TIMEOUT,
                reuse_port=self.reuse_port,
            )
        except BaseException:
            await self._stop_store_tasks()
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        self.streams.start()
        log.info("taskcast bridge listening on %s", self.url)

    async def stop(self) -> None:
        """Close every connection with 1001 (going away), stop the tail, release Redis."""
        self.streams.stop()
        if self._server is not None:
            self._server.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), timeout=CLOSE_TIMEOUT + 1)
            except asyncio.TimeoutError:
                log.warning("some connections did not close in time")
        if self._background:
            await asyncio.wait(self._background, timeout=1)
        await self._stop_store_tasks()

    async def _stop_store_tasks(self) -> None:
        if self._revoker is not None:
            self._revoker.close()
        if self._sweep_task is not None:
            self._sweep_task.cancel()  # its Redis calls run in a thread
        if self._presence_task is not None:
            self._presence_stop.set()
            done, _ = await asyncio.wait([self._presence_task], timeout=CLOSE_TIMEOUT)
            if not done:
                self._presence_task.cancel()
        if self._tail_task is not None:
            await self.tail.stop(self._tail_task)
        await self.tail.close()
        await self.reader.close()

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` in the background; stop() waits a moment for what is left."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- connections -------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        try:
            grant = self.grant_for(query_token(ws.request.path if ws.request else ""))
        except TokenRejected as exc:
            # A token in the URL that is forged or malformed ends the connection (1008);
            # an expired one asks for a fresh token (4401).
            await ws.close(CLOSE_TOKEN_EXPIRED if exc.expired else CLOSE_POLICY, str(exc)[:120])
            return
        settings = self.settings
        bucket = TokenBucket(settings.command_rate, settings.command_burst, time.monotonic())
        peer = Peer(uuid.uuid4().hex, ws, bucket, grant)
        self.caps.opened(peer.address)
        self.hub.connect(peer)
        self.hub.send(peer, connected_frame(peer.client_id, SERVER_NAME))
        self._schedule_expiry(peer)
        try:
            async for message in ws:
                # Commands a client sent before it closed are still buffered here;
                # carrying them out would read and queue replies nobody receives.
                if ws.protocol.state is not State.OPEN:
                    break
                await self._command(peer, message)
                if self.hub.over_budget(peer) and not peer.closed:
                    await self._wait_drained(peer)
        except ConnectionClosed:
            pass
        finally:
            if peer.expiry is not None:
                peer.expiry.cancel()
            self.hub.disconnect(peer)
            self.caps.closed(peer.address)

    # -- access control ------------------------------------------------------------

    def grant_for(self, token: str | None) -> Grant | None:
        """The grant of ``token`` (raises TokenRejected); OPEN without a key; None: no token."""
        if self.verifier is None:
            return OPEN
        if token is None:
            return None
        return self.verifier.verify(token)

    def _schedule_expiry(self, peer: Peer) -> None:
        """Close at the token's expiry (4401), or after the auth deadline without one (1008)."""
        if peer.expiry is not None:
            peer.expiry.cancel()
            peer.expiry = None
        loop = asyncio.get_running_loop()
        if peer.grant is None:
            peer.expiry = loop.call_later(
                AUTH_DEADLINE, self._close, peer, CLOSE_POLICY, "no valid token in time"
            )
        elif peer.grant.expires_at is not None:
            delay = max(0.0, peer.grant.expires_at - time.time())
            peer.expiry = loop.call_later(
                delay, self._close, peer, CLOSE_TOKEN_EXPIRED, "token expired"
            )

    async def _authorize(self, peer: Peer, command: Command) -> None:
        """Raise the CommandError refusing ``peer`` the ``command`` (PROTOCOL.md "Access
        control"), if any."""
        if command.name in ("ping", "auth"):
            return
        grant = peer.grant
        if grant is None:
            raise CommandError(UNAUTHORIZED, UNAUTHENTICATED, command.request_id)
        scope = OPERATION_COMMANDS.get(command.name)
        if scope is not None:
            operation_id = command.operation_id
            allowed = operation_id is not None and await permits(
                grant, scope, operation_id, self.reader
            )
        else:
            allowed = command.name not in MONITOR_COMMANDS or grant.monitors()
        if not allowed:
            message = f"your token does not allow {command.name}"
            raise CommandError(FORBIDDEN, message, command.request_id)

    # -- connections (continued) -----------------------------------------------------

    async def _wait_drained(self, peer: Peer) -> None:
        """Stop reading a client's commands until it has read most of our replies.

        Replies are never dropped, so this is what bounds the memory a client
        that sends commands without reading can make us hold.
        """
        if peer.flush_due:
            peer.flush_due = False
            self._flush(peer)
        if peer.writer is None:
            return
        drained = peer.drained = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(drained, SLOW_READER_GRACE)
        except asyncio.TimeoutError:
            # Over budget and not reading: PROTOCOL.md "Limits" closes it (4008); it may
            # reconnect and resume once it reads again.
            self.hub.evict(peer)

    def _on_ready(self, conn: Connection) -> None:
        """Flush this outbox at the end of the loop turn, unless its writer task runs.

        Deferring lets one flush carry everything queued in this turn (a whole
        live batch, or a reply with its history) in a single transport write.
        """
        if isinstance(conn, EventStream):
            conn.ready()
            return
        peer: Peer = conn  # type: ignore[assignment]
        if peer.writer is None and not peer.flush_due:
            peer.flush_due = True
            self._due.append(peer)
            if len(self._due) == 1:
                asyncio.get_running_loop().call_soon(self._flush_due)

    def _flush_due(self) -> None:
        due, self._due = self._due, []
        for peer in due:
            if peer.flush_due:
                peer.flush_due = False
                self._flush(peer)

    def _flush(self, peer: Peer) -> None:
        """Write what the transport may take now; start the writer task for the rest.

        A connection that is no longer open gets the writer too, whose send
        fails the way it always has, so no frame vanishes without the
        connection ending.
        """
        ws = peer.ws
        if ws.protocol.state is State.OPEN:
            room = DIRECT_WRITE_LIMIT - ws.transport.get_write_buffer_size()
            if room > 0:
                self._write_direct(peer, room)
        if peer.outbox and peer.writer is None:
            peer.writer = asyncio.get_running_loop().create_task(self._drain(peer))

    def _write_direct(self, peer: Peer, room: int) -> None:
        """Take frames until ``room`` bytes are used up and write them at once.

        Without a compression extension a frame's bytes are the same for every
        connection, so each is serialized once (``Frame.wire``) and shared; the
        protocol object, which only tracks fragmentation and closing, is not
        involved in sending complete text frames. With compression, websockets
        encodes per connection (each has its own deflate context).
        """
        hub, ws = self.hub, peer.ws
        lag, now = self.metrics.delivery_lag, time.time()
        shared = not ws.protocol.extensions
        chunks: list[bytes] = []
        while room > 0 and (frame := hub.take(peer)) is not None:
            if shared:
                wire = frame.wire
                if wire is None:
                    wire = frame.wire = WireFrame(Opcode.TEXT, frame.payload).serialize(mask=False)
                chunks.append(wire)
            else:
                ws.protocol.send_text(frame.payload)
            room -= len(frame.payload)
            if frame.kind == LIVE:
                if frame.lag is None:
                    frame.lag = lag.measure(frame.stored_at, now)
                lag.add(frame.lag)
        if not shared:
            chunks = ws.protocol.data_to_send()
        ws.transport.write(b"".join(chunks))

    async def _drain(self, peer: Peer) -> None:
        ws, hub, lag = peer.ws, self.hub, self.metrics.delivery_lag
        try:
            while (frame := hub.take(peer)) is not None:
                await ws.send(frame.payload, text=True)
                if frame.kind == LIVE:
                    lag.observe(max(0.0, time.time() - frame.stored_at))
                if peer.drained is not None and not hub.over_budget(peer):
                    self._release_reader(peer)
        except ConnectionClosed:
            pass
        finally:
            peer.writer = None
            self._release_reader(peer)

    @staticmethod
    def _release_reader(peer: Peer) -> None:
        if peer.drained is not None:
            if not peer.drained.done():
                peer.drained.set_result(None)
            peer.drained = None

    def _on_overflow(self, conn: Connection) -> None:
        log.info("closing slow consumer %s (4008)", conn.client_id)
        self._close(conn, CLOSE_SLOW_CONSUMER, "slow consumer; reconnect and resume")

    def _close(self, conn: Connection, code: int, reason: str) -> None:
        """Close a WebSocket with ``code``, or end an event stream (whose client resumes)."""
        if isinstance(conn, EventStream):
            conn.end()
        else:
            peer: Peer = conn  # type: ignore[assignment]
            self.spawn(peer.ws.close(code, reason))

    def _on_resync(self, conn: Connection, sub: Subscription) -> None:
        self.spawn(self._resync(conn, sub))

    async def _resync(self, peer: Connection, sub: Subscription) -> None:
        """Fill a gap the live tail left, or serve a new epoch, by re-reading history
        (see Hub.publish); a new epoch is announced with an unasked ``subscribed``."""
        try:
            snapshot, history = await self.reader.snapshot_and_history(sub.operation_id, sub.since)
        except STORE_ERRORS:
            self._close(peer, CLOSE_TRY_AGAIN_LATER, "event store unavailable; resume later")
            return
        reply = None
        if sub.renew:
            unasked = Command("subscribe", operation_id=sub.operation_id)
            reply = subscribed_frame(unasked, snapshot, False, len(history))
        self._finish(peer, sub, reply, snapshot, history)

    def _finish(
        self,
        peer: Connection,
        sub: Subscription,
        reply: bytes | None,
        snapshot: dict[str, Any] | None,
        history: list[tuple[int, bytes]],
    ) -> None:
        last_seq, epoch = (snapshot["last_seq"], snapshot["epoch"] or "") if snapshot else (0, "")
        self.hub.finish_subscribe(peer, sub, reply, history, last_seq, epoch)

    # -- commands ----------------------------------------------------------------

    async def _command(self, peer: Peer, message: str | bytes) -> None:
        now = time.monotonic()
        if not peer.bucket.take(now):
            self._refuse(peer, message, now)
            return
        try:
            command = parse_command(message)
        except CommandError as exc:
            self.hub.send(peer, exc.frame())
            return
        try:
            await self._authorize(peer, command)
            await self._handlers[command.name](peer, command)
        except CommandError as exc:
            self.hub.send(peer, exc.frame())
        except STORE_ERRORS:
            self.hub.send(peer, error_frame(UNAVAILABLE, STORE_DOWN, command.request_id))

    def _refuse(self, peer: Peer, message: str | bytes, now: float) -> None:
        """Answer one command over the rate limit a second; drop the rest unanswered.

        A reply to each would cost the bridge memory and CPU for a client that is not
        listening; one a second says what happens. Replies keep the commands' order,
        so a client learns that a command went unanswered from the reply to a later
        one (PROTOCOL_NOTES.md). A client refused ``REFUSALS_BEFORE_CLOSE`` times
        without a second's pause between refusals is not slowing down, and is closed
        (1008); the bucket refilling now and then does not make it well-behaved.
        """
        if now - peer.refused_at >= REFUSAL_INTERVAL:
            peer.refused = 0
        peer.refused_at = now
        peer.refused += 1
        if peer.refused == REFUSALS_BEFORE_CLOSE:
            log.info("closing %s: it kept sending past the rate limit (1008)", peer.client_id)
            # What it sent on is not read: websockets would parse every frame of it while
            # waiting for the closing handshake, all for nothing.
            peer.ws.transport.pause_reading()
            self._close(peer, CLOSE_POLICY, "too many commands past the rate limit")
        elif now - peer.answered_refusal >= REFUSAL_INTERVAL:
            peer.answered_refusal = now
            refusal = error_frame(RATE_LIMITED, RATE_MESSAGE, request_id_of(message))
            self.hub.send(peer, refusal)

    async def subscribe(self, peer: Connection, command: Command) -> None:
        """``subscribe`` for a WebSocket peer or an event stream (the same hub rules)."""
        assert command.operation_id is not None
        if not self.tail.positioned.is_set():
            raise CommandError(UNAVAILABLE, STORE_DOWN, command.request_id)
        sub = self.hub.begin_subscribe(peer, command.operation_id, command.since)
        if sub is None:
            raise CommandError(
                TOO_MANY_SUBSCRIPTIONS,
                f"at most {self.hub.max_subscriptions} subscriptions per connection",
                command.request_id,
            )
        try:
            snapshot, history = await self._read_for(sub, command.since, command.epoch)
        except BaseException:
            self.hub.abort_subscribe(peer, sub)
            raise
        last_seq = snapshot["last_seq"] if snapshot else 0
        recovered = sub.since == command.since and is_recovered(sub.since, history, last_seq)
        reply = subscribed_frame(command, snapshot, recovered, len(history))
        self._finish(peer, sub, reply, snapshot, history)

    async def _read_for(
        self, sub: Subscription, since: int, epoch: str | None
    ) -> tuple[dict[str, Any] | None, list[tuple[int, bytes]]]:
        """Snapshot and history for a subscribe; a ``since`` of another epoch counts for
        nothing: the client gets the current epoch's whole history (not recovered)."""
        snapshot, history = await self.reader.snapshot_and_history(sub.operation_id, since)
        if since and epoch and snapshot is not None and snapshot["epoch"] not in (None, epoch):
            sub.since = sub.last_seq = 0
            snapshot, history = await self.reader.snapshot_and_history(sub.operation_id, 0)
        return snapshot, history

    async def _unsubscribe(self, peer: Peer, command: Command) -> None:
        assert command.operation_id is not None
        self.hub.unsubscribe(peer, command.operation_id)
        body = {"status": "unsubscribed", "operation_id": command.operation_id}
        self.hub.send(peer, encode(body, command.request_id))

    async def _subscribe_all(self, peer: Peer, command: Command) -> None:
        self.hub.subscribe_all(peer, command.operation_type)
        body: dict[str, Any] = {"status": "subscribed", "operation_id": "*"}
        if command.operation_type is not None:
            body["operation_type"] = command.operation_type
        self.hub.send(peer, encode(body, command.request_id))

    async def _unsubscribe_all(self, peer: Peer, command: Command) -> None:
        self.hub.unsubscribe_all(peer)
        body = {"status": "unsubscribed", "operation_id": "*"}
        self.hub.send(peer, encode(body, command.request_id))

    async def _get_operation(self, peer: Peer, command: Command) -> None:
        assert command.operation_id is not None
        snapshot = await self.reader.operation(command.operation_id)
        if snapshot is None:
            raise CommandError(
                NOT_FOUND, not_found_message(command.operation_id), command.request_id
            )
        self.hub.send(peer, encode({"operation": snapshot}, command.request_id))

    async def _list_operations(self, peer: Peer, command: Command) -> None:
        operations = await self.reader.operations(
            command.status, command.limit, command.offset, command.operation_type
        )
        self.hub.send(peer, encode({"operations": operations}, command.request_id))

    async def _get_stats(self, peer: Peer, command: Command) -> None:
        self.hub.send(peer, encode({"stats": await self.stats()}, command.request_id))

    async def _auth(self, peer: Peer, command: Command) -> None:
        assert command.token is not None
        try:
            grant = self.grant_for(command.token)
        except TokenRejected as exc:
            raise CommandError(UNAUTHORIZED, str(exc), command.request_id) from None
        assert grant is not None
        peer.grant = grant
        self._schedule_expiry(peer)
        body = {
            "status": "authenticated",
            "expires_at": grant.expires_at,
            "scopes": sorted(grant.scopes),
        }
        self.hub.send(peer, encode(body, command.request_id))

    async def _cancel(self, peer: Peer, command: Command) -> None:
        assert command.operation_id is not None
        subject = peer.grant.subject if peer.grant else None
        try:
            body = await self.cancel(command.operation_id, command.terminate, subject)
        except CommandError as exc:
            raise CommandError(exc.code, exc.message, command.request_id) from None
        self.hub.send(peer, encode(body, command.request_id))

    async def _ping(self, peer: Peer, command: Command) -> None:
        self.hub.send(
            peer, encode({"status": "pong", "timestamp": time.time()}, command.request_id)
        )

    # -- shared with HTTP ----------------------------------------------------------

    async def cancel(
        self, operation_id: str, terminate: bool, subject: str | None = None
    ) -> dict[str, Any]:
        """Revoke an operation's task; the ``cancel`` reply (CommandError if it cannot be)."""
        snapshot = await self.reader.operation(operation_id)
        if snapshot is None:
            raise CommandError(NOT_FOUND, not_found_message(operation_id))
        if snapshot["status"] in FINISHED_STATUSES:
            raise CommandError(BAD_REQUEST, f"operation already ended ({snapshot['status']})")
        if self._revoker is None:
            self._revoker = Revoker(self.settings)
        await asyncio.to_thread(self._revoker.cancel, operation_id, terminate)
        log.info("operation %s cancelled by %s", operation_id, subject or "a client")
        return {"status": "cancelling", "operation_id": operation_id}

    async def stats(self) -> dict[str, Any]:
        """``get_stats``' object; operation counts are null while Redis is unreachable."""
        stats: dict[str, Any] = self.hub.snapshot_stats()
        active: int | None
        total: int | None
        bridges: dict[str, int] | None
        try:
            active, total = await self._operation_counts()
            bridges = await presence.totals(self.reader.client, self.reader.keys, time.time())
        except STORE_ERRORS:
            active = total = bridges = None
        stats.update(
            process=self.process,
            bridges=bridges,
            active_operations=active,
            total_operations=total,
            uptime=round(time.monotonic() - self.started, 3),
            redis_connected=self.tail.healthy,
            server=SERVER_NAME,
        )
        return stats

    async def _report_presence(self) -> None:
        """Tell the other bridge processes of this store what this one serves (presence.py).

        Stopped through ``_presence_stop``, not cancelled: cancelling a redis.asyncio
        call while it connects can leave the task hanging (see LiveTail.stop)."""
        while not self._presence_stop.is_set():
            try:
                await presence.report(
                    self.reader.client,
                    self.reader.keys,
                    self.process,
                    self.hub.snapshot_stats(),
                    time.time(),
                )
            except STORE_ERRORS as exc:
                log.debug("presence report skipped: %s", exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._presence_stop.wait(), presence.REPORT_SECONDS)

    async def producer_totals(self) -> dict[str, int]:
        """Worker processes' producer counters for /metrics; none while Redis is down or
        slower than ``PROBE_TIMEOUT``: a scrape must not time out with the store, when
        the bridge's own figures matter most."""
        try:
            return await asyncio.wait_for(self.reader.producer_totals(), PROBE_TIMEOUT)
        except STORE_ERRORS:
            return {}

    async def _operation_counts(self) -> tuple[int, int]:
        """Counts cached for a second: many dashboards polling must not each scan the index."""
        now = time.monotonic()
        if self._counts is None or now - self._counts[0] > STATS_CACHE_SECONDS:
            self._counts = (now, await self.reader.operation_counts())
        return self._counts[1]
