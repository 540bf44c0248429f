"""Python client for the taskcast bridge: follow operations from scripts and services.

``watch(operation_id)`` is an async iterator that ends after the operation's
terminal event and survives bridge restarts: on reconnect it resubscribes with
``since`` = the last seq it delivered, so no event is skipped or repeated.
:class:`SyncClient` wraps it for code without an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import random
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from taskcast.events import FINISHED_STATUSES, TERMINAL_EVENT_TYPES
from taskcast.protocol import RATE_LIMITED, UNAVAILABLE

DEFAULT_URL = "ws://127.0.0.1:8765/ws"
# PROTOCOL.md: reconnect after these close codes (and 4000-4499), not after others.
RECONNECT_CODES = frozenset({1001, 1006, 1011, 1012, 1013})


class BridgeUnavailable(ConnectionError):
    """The bridge cannot be reached (not running, wrong URL, or gone for good)."""


class CommandError(Exception):
    """The bridge answered a command with an error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


TokenSource = Callable[[], str | Awaitable[str]]
CLOSE_TOKEN_EXPIRED = 4401
REFRESH_MARGIN = 30.0  # at most this long before expiry a token is replaced
EXPIRY_SLACK = 1.0  # a token closer than this to expiry is not presented again
# How long after a rate_limited reply the bridge takes commands again (it answers one
# refusal a second), and the reply a request dropped over the rate limit gets.
RATE_LIMIT_RETRY = 1.0
DROPPED = {
    "status": "error",
    "code": RATE_LIMITED,
    "message": "dropped unanswered: too many commands (TASKCAST_COMMAND_RATE)",
}


def token_expires_in(token: str) -> float:
    """Seconds until ``token`` expires, read without verifying it (that is the bridge's job)."""
    import jwt

    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return float("inf")
    exp = claims.get("exp")
    return float(exp) - time.time() if isinstance(exp, (int, float)) else float("inf")


def with_token(url: str, token: str | None) -> str:
    """``url`` with the ``token`` query parameter (PROTOCOL.md "Access control")."""
    if token is None:
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "token"] + [("token", token)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def should_reconnect(code: int | None) -> bool:
    """Whether PROTOCOL.md lets a client reconnect after this close code."""
    return code is None or code in RECONNECT_CODES or 4000 <= code <= 4499


def backoff_delay(attempt: int, base: float = 0.25, cap: float = 10.0) -> float:
    """Exponential back-off with full jitter, so clients of a restarted bridge spread out."""
    return random.uniform(0, min(cap, base * 2**attempt))


# An iterator's queue: events, then None (the end) or the error that ended it.
_Queue = asyncio.Queue[dict[str, Any] | BridgeUnavailable | None]


async def _next_event(queue: _Queue) -> dict[str, Any] | None:
    """The next event, None at the end; raises if the bridge went away for good."""
    item = await queue.get()
    if isinstance(item, BridgeUnavailable):
        raise item
    return item


class _Watcher:
    """One ``watch()`` iterator: its own queue and the last seq it was given.

    It takes events only once the reply to a subscribe sent for it has arrived:
    live events of the connection's older subscription may come first, and
    taking them would make it drop the older events its own replay brings.
    """

    def __init__(self, since: int, epoch: str | None) -> None:
        self.queue: _Queue = asyncio.Queue()
        self.last_seq = since
        self.epoch = epoch
        self.active = False

    def adopt(self, epoch: str | None) -> None:
        """Count in ``epoch`` from now on; seqs of another epoch start over from 0."""
        if epoch and self.epoch and epoch != self.epoch:
            self.last_seq = 0
        self.epoch = epoch or self.epoch

    def accept(self, event: dict[str, Any]) -> None:
        if not self.active:
            return
        self.adopt(event.get("epoch"))
        seq = event.get("seq", 0)
        if seq > self.last_seq:
            self.last_seq = seq
            self.queue.put_nowait(event)


class _Monitor:
    """One ``monitor()`` iterator: its queue, and per operation the last seq it was given.

    The connection also carries the replays of its watches; a monitor takes
    each event of an operation once, whichever way it came.
    """

    REMEMBERED = 100_000  # operations whose last seq is kept (oldest forgotten first)

    def __init__(self) -> None:
        self.queue: _Queue = asyncio.Queue()
        self.seen: OrderedDict[str, tuple[str | None, int]] = OrderedDict()

    def accept(self, event: dict[str, Any]) -> None:
        operation_id, seq, epoch = (
            event.get("operation_id", ""),
            event.get("seq", 0),
            event.get("epoch"),
        )
        seen_epoch, seen_seq = self.seen.get(operation_id, (epoch, 0))
        if seq <= seen_seq and epoch == seen_epoch:
            return
        self.seen[operation_id] = (epoch, seq)
        self.seen.move_to_end(operation_id)
        if len(self.seen) > self.REMEMBERED:
            self.seen.popitem(last=False)
        self.queue.put_nowait(event)


class _Subscription:
    """The connection's one subscription to an operation, shared by all its watchers.

    The bridge holds one subscription per operation and connection, so watchers
    that started at different seqs share it: it is (re)made from the lowest seq
    any of them needs, and each watcher drops what it already had.
    """

    def __init__(self) -> None:
        self.watchers: list[_Watcher] = []
        self.snapshot: dict[str, Any] | None = None
        # The bridge keeps only the latest subscribe of an operation, so subscribes
        # go one at a time, each from the lowest seq wanted when it is sent.
        self.lock = asyncio.Lock()

    @property
    def since(self) -> int:
        return min((watcher.last_seq for watcher in self.watchers), default=0)

    @property
    def epoch(self) -> str | None:
        """The epoch ``since`` counts in (watchers of one connection share it)."""
        return next((watcher.epoch for watcher in self.watchers if watcher.epoch), None)

    def renew(self, reply: dict[str, Any]) -> None:
        """Take a subscribe reply's snapshot: its epoch may start the watchers' counts over."""
        self.snapshot = reply.get("operation")
        epoch = (self.snapshot or {}).get("epoch")
        for watcher in self.watchers:
            watcher.adopt(epoch)

    def accept(self, event: dict[str, Any]) -> None:
        for watcher in self.watchers:
            watcher.accept(event)

    def end(self, item: BridgeUnavailable | None) -> None:
        for watcher in self.watchers:
            watcher.queue.put_nowait(item)


class TaskcastClient:
    """One WebSocket connection to a bridge, re-established when the bridge restarts."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        get_token: TokenSource | None = None,
        refresh: bool = True,
        reconnect: bool = True,
        open_timeout: float = 5.0,
        max_reconnect_time: float = 60.0,
    ) -> None:
        """``token`` for a bridge that requires one; ``get_token`` (a function, sync or
        async, returning a fresh token) lets the client send a new one before the
        current one expires (``refresh``) and reconnect after a 4401 without losing
        an event."""
        self.url = url
        self.token = token
        self.get_token = get_token
        self.refresh = refresh
        self._refresher: asyncio.Task[None] | None = None
        self.reconnect = reconnect
        self.open_timeout = open_timeout
        self.max_reconnect_time = max_reconnect_time
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, tuple[asyncio.Future[dict[str, Any]], Callable | None]] = {}
        self._ids = itertools.count(1)
        self._pinger: asyncio.Task[None] | None = None
        self._subs: dict[str, _Subscription] = {}
        self._monitors: list[_Monitor] = []
        self._monitor_type: str | None = None
        self._closing = False
        self._connected = asyncio.Event()

    async def connect(self) -> TaskcastClient:
        """Open the connection; raises :class:`BridgeUnavailable` if nobody answers."""
        await self._open()
        self._reader = asyncio.create_task(self._read_loop())
        return self

    async def close(self) -> None:
        """Close for good: pending commands fail, iterators end."""
        self._closing = True
        if self._refresher is not None:
            self._refresher.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await self._reader
        self._finish_iterators()

    async def __aenter__(self) -> TaskcastClient:
        return await self.connect()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def request(self, command: str, **fields: Any) -> dict[str, Any]:
        """Send one command and return its reply; error replies raise :class:`CommandError`."""
        return await self._request(command, fields)

    async def _request(
        self,
        command: str,
        fields: dict[str, Any],
        on_reply: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """:meth:`request`; ``on_reply`` runs as the reply is read, before any later frame."""
        await self._wait_connected()
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (future, on_reply)
        frame = {"command": command, "request_id": request_id, **fields}
        try:
            assert self._ws is not None
            await self._ws.send(orjson.dumps(frame).decode())
            reply = await future
        finally:
            self._pending.pop(request_id, None)
        if reply.get("status") == "error":
            raise CommandError(reply.get("code", "error"), reply.get("message", ""))
        return reply

    async def get_operation(self, operation_id: str) -> dict[str, Any]:
        """The operation's snapshot; unknown ids raise ``CommandError('not_found')``."""
        return (await self.request("get_operation", operation_id=operation_id))["operation"]

    async def list_operations(
        self,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
        operation_type: str | None = None,
    ) -> list[dict]:
        """Snapshots, most recently updated first; ``offset`` skips that many (the next page),
        ``operation_type`` keeps one type, or those starting with a prefix (``reports.*``)."""
        fields: dict[str, Any] = {"limit": limit}
        if status:
            fields["status"] = status
        if offset:
            fields["offset"] = offset
        if operation_type:
            fields["operation_type"] = operation_type
        return (await self.request("list_operations", **fields))["operations"]

    async def get_stats(self) -> dict[str, Any]:
        """The bridge's statistics."""
        return (await self.request("get_stats"))["stats"]

    async def ping(self) -> dict[str, Any]:
        """Round trip to the bridge."""
        return await self.request("ping")

    async def cancel(self, operation_id: str, terminate: bool = False) -> dict[str, Any]:
        """Revoke the operation's task; the ``cancelling`` reply (the token needs ``cancel``).

        The operation then ends ``revoked``: a running task stops at its next
        progress/status/log call, or at once on prefork with ``terminate``. An
        unknown id raises ``CommandError('not_found')``, one that already ended
        ``CommandError('bad_request')``.
        """
        return await self.request("cancel", operation_id=operation_id, terminate=terminate)

    async def watch(
        self, operation_id: str, since: int = 0, epoch: str | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Every event of the operation after ``since``, ending after its terminal event.

        ``epoch`` is the history epoch ``since`` counts in (an event's or the
        snapshot's ``epoch``): if the history began a new one since (Redis lost
        it), the watch gets the new epoch's events from its start.

        If the operation already finished and no event follows ``since`` (the
        history expired, or ``since`` is its last seq), the iterator ends after
        the reply; :meth:`get_operation` then tells how it ended. Raises
        :class:`BridgeUnavailable` if the bridge goes away for good (a close
        code that forbids reconnecting, or no bridge within
        ``max_reconnect_time``), so that is never mistaken for the end. A watch
        begun while the bridge's Redis is down waits for it as long, then raises
        ``CommandError('unavailable')``.
        """
        sub = self._subs.setdefault(operation_id, _Subscription())
        watcher = _Watcher(since, epoch)
        sub.watchers.append(watcher)
        try:
            try:
                await self._while_store_down(lambda: self._subscribe(operation_id, sub))
            except BridgeUnavailable:
                if self._closing:
                    raise  # otherwise the reconnect resubscribes everything in _subs
            while True:
                event = await _next_event(watcher.queue)
                if event is None:
                    return
                yield event
                if event["event_type"] in TERMINAL_EVENT_TYPES:
                    return
        finally:
            sub.watchers.remove(watcher)
            if not sub.watchers and self._subs.get(operation_id) is sub:
                del self._subs[operation_id]
                if self._ws is not None and not self._closing:
                    await self._quietly("unsubscribe", operation_id=operation_id)

    def snapshot(self, operation_id: str) -> dict[str, Any] | None:
        """The snapshot from the latest subscribe reply of a watched operation."""
        sub = self._subs.get(operation_id)
        return sub.snapshot if sub else None

    async def monitor(
        self, operation_type: str | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Subscribe to every live event of every operation (optionally of one type).

        Returns once the bridge confirmed the subscription, so nothing published
        after the call is missed; iterate the result to get the events. Several
        monitors on one client each get every event; they must share the
        ``operation_type`` (the bridge filters by it, per connection).
        """
        if self._monitors and operation_type != self._monitor_type:
            raise ValueError(
                f"this client already monitors operation_type={self._monitor_type!r}; "
                "use another client for a different one"
            )
        monitor = _Monitor()
        self._monitors.append(monitor)
        self._monitor_type = operation_type
        try:
            await self._subscribe_all()
        except BaseException:
            self._monitors.remove(monitor)
            raise
        return self._monitor_events(monitor)

    async def _monitor_events(self, monitor: _Monitor) -> AsyncGenerator[dict[str, Any], None]:
        try:
            while event := await _next_event(monitor.queue):
                yield event
        finally:
            self._monitors.remove(monitor)
            if not self._monitors and self._ws is not None and not self._closing:
                await self._quietly("unsubscribe_all")

    async def _subscribe(self, operation_id: str, sub: _Subscription) -> None:
        async with sub.lock:
            fields: dict[str, Any] = {"operation_id": operation_id}
            if sub.since:
                fields["since"] = sub.since
                if sub.epoch:
                    fields["epoch"] = sub.epoch
            newcomers = [watcher for watcher in sub.watchers if not watcher.active]

            def activate(reply: dict[str, Any]) -> None:
                for watcher in newcomers:
                    watcher.active = reply.get("status") != "error"

            reply = await self._request("subscribe", fields, activate)
        sub.renew(reply)
        # Finished with nothing replayed: the terminal event is either expired or
        # one the watchers already had (their since is the last seq); none will come.
        snapshot = sub.snapshot or {}
        if snapshot.get("status") in FINISHED_STATUSES and reply.get("replayed", 0) == 0:
            sub.end(None)

    async def _while_store_down(self, attempt: Callable[[], Awaitable[None]]) -> None:
        """``attempt()``, again with back-off while the bridge answers ``unavailable`` (its
        Redis is down, restarting or frozen), for up to ``max_reconnect_time``: a watch
        begun during a store outage waits for the store, as one begun during a bridge
        restart waits for the bridge; the refusal is raised only after that."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_reconnect_time
        for attempt_number in itertools.count():
            try:
                return await attempt()
            except CommandError as exc:
                delay = backoff_delay(attempt_number)
                if exc.code != UNAVAILABLE or loop.time() + delay > deadline:
                    raise
            await asyncio.sleep(delay)

    async def _subscribe_all(self) -> None:
        fields = {"operation_type": self._monitor_type} if self._monitor_type else {}
        await self.request("subscribe_all", **fields)

    async def _quietly(self, command: str, **fields: Any) -> None:
        with contextlib.suppress(CommandError, ConnectionError, ConnectionClosed):
            await self.request(command, **fields)

    async def _fresh_token(self) -> str | None:
        """The token to present: a new one from ``get_token`` when there is none or it is
        about to expire, else the one we have."""
        if self.get_token is not None and (
            self.token is None or token_expires_in(self.token) < EXPIRY_SLACK
        ):
            fetched = self.get_token()
            self.token = await fetched if inspect.isawaitable(fetched) else fetched
        return self.token

    async def _open(self) -> None:
        try:
            token = await self._fresh_token()
            self._ws = await connect(
                with_token(self.url, token),
                open_timeout=self.open_timeout,
                max_size=None,
                compression=None,
            )
            await asyncio.wait_for(self._ws.recv(), self.open_timeout)  # the connected frame
        except ConnectionClosed as exc:
            if exc.rcvd is not None and exc.rcvd.code == CLOSE_TOKEN_EXPIRED:
                self.token = None  # fetch another before the next attempt
            raise BridgeUnavailable(
                f"the bridge at {self.url} refused the connection: {exc}"
            ) from exc
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            raise BridgeUnavailable(
                f"cannot reach the taskcast bridge at {self.url}: {exc}"
            ) from exc
        self._connected.set()
        if self.get_token is not None and self.refresh and self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_tokens())

    async def _refresh_tokens(self) -> None:
        """Send ``auth`` with a new token when four fifths of the current one's life (at
        most all but ``REFRESH_MARGIN`` seconds of it) have passed."""
        while not self._closing:
            assert self.token is not None
            remaining = token_expires_in(self.token)
            if remaining == float("inf"):
                return  # a token without expiry needs no refresh
            await asyncio.sleep(max(0.0, remaining - min(REFRESH_MARGIN, remaining / 5)))
            with contextlib.suppress(BridgeUnavailable, CommandError, ConnectionError):
                await self._wait_connected()
                self.token = None
                token = await self._fresh_token()
                await self.request("auth", token=token)

    async def _wait_connected(self) -> None:
        if self._closing:
            raise BridgeUnavailable("the client is closed")
        await self._connected.wait()
        if self._closing:
            raise BridgeUnavailable("the client is closed")

    async def _read_loop(self) -> None:
        """Read and reconnect until the client closes or the bridge is lost for good.

        However it ends, cancelled too (``asyncio.run`` cancels every task at exit, this
        one with the rest), the client is closed and everything waiting on it released:
        else a watch's clean-up, or a request, would wait for a connection for ever.
        """
        lost: BridgeUnavailable | None = None  # None: the caller closed the client
        try:
            lost = await self._read_until_lost()
        finally:
            self._closing = True
            self._connected.set()
            self._fail_pending(BridgeUnavailable("the client is closed"))
            self._finish_iterators(lost)

    async def _read_until_lost(self) -> BridgeUnavailable | None:
        """The read loop proper; why the bridge is lost, or None if the client closed."""
        while True:
            assert self._ws is not None
            try:
                async for frame in self._ws:
                    self._dispatch(orjson.loads(frame))
            except ConnectionClosed:
                pass
            self._connected.clear()
            self._fail_pending(BridgeUnavailable("connection to the bridge lost"))
            code = self._ws.close_code
            if self._closing:
                return None
            if code == CLOSE_TOKEN_EXPIRED:
                if self.get_token is None:
                    return BridgeUnavailable("the token expired (4401); pass get_token to renew")
                self.token = None  # reconnect with a fresh one and resume
            if not self.reconnect or not should_reconnect(code):
                return BridgeUnavailable(f"the bridge closed the connection (code {code})")
            if not await self._reopen():
                return BridgeUnavailable(
                    f"the bridge at {self.url} did not come back within "
                    f"{self.max_reconnect_time:.0f}s"
                )

    async def _reopen(self) -> bool:
        """Reconnect with back-off and resume every subscription; False if it gave up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_reconnect_time
        for attempt in itertools.count():
            await asyncio.sleep(backoff_delay(attempt))
            if self._closing:
                return False
            try:
                await self._open()
                break
            except BridgeUnavailable:
                if loop.time() > deadline or self._closing:
                    return False
        if self._closing:  # close() came during the handshake: it could not see this socket
            assert self._ws is not None
            await self._ws.close()
            return False
        asyncio.create_task(self._resume())
        return True

    async def _resume(self) -> None:
        """Resubscribe everything after a reconnect.

        ``unavailable`` (the bridge cannot reach Redis yet) is transient: retry
        with back-off, or the watches would wait for events that never come.
        """
        for attempt in itertools.count():
            try:
                for operation_id, sub in list(self._subs.items()):
                    await self._subscribe(operation_id, sub)
                if self._monitors:
                    await self._subscribe_all()
                return
            except CommandError as exc:
                if exc.code != UNAVAILABLE:
                    return
            except (ConnectionError, ConnectionClosed):
                return  # the read loop sees the connection drop and resumes again
            await asyncio.sleep(backoff_delay(attempt))

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message.get("status") == "subscribed" and message.get("request_id") is None:
            renewed = self._subs.get(message.get("operation_id", ""))
            if renewed is not None:  # a new epoch: its whole history follows
                renewed.renew(message)
            return
        if "event_type" not in message:
            request_id = message.get("request_id")
            entry = self._pending.get(request_id)  # type: ignore[arg-type]
            if entry is not None and not entry[0].done():
                future, on_reply = entry
                if on_reply is not None:
                    on_reply(message)
                future.set_result(message)
                self._dropped_before(request_id)  # type: ignore[arg-type]
                if message.get("code") == RATE_LIMITED:
                    self._ping_later()
            return
        for monitor in self._monitors:
            monitor.accept(message)
        sub = self._subs.get(message.get("operation_id", ""))
        if sub is not None:
            sub.accept(message)

    def _dropped_before(self, request_id: int) -> None:
        """Fail the requests sent before ``request_id`` that got no reply.

        The bridge answers commands in the order they came and answers only one
        command a second over the rate limit: a reply passing an unanswered
        request means that request was dropped.
        """
        for earlier, (future, _) in list(self._pending.items()):
            if earlier < request_id and not future.done():
                future.set_result(DROPPED)

    def _ping_later(self) -> None:
        """After a refusal, ask once more when the rate allows, so that requests
        dropped behind it learn it from the ping's reply instead of waiting."""
        if self._pinger is None or self._pinger.done():
            self._pinger = asyncio.get_running_loop().create_task(self._ping_after_refusal())

    async def _ping_after_refusal(self) -> None:
        await asyncio.sleep(RATE_LIMIT_RETRY)
        if any(not future.done() for future, _ in self._pending.values()):
            with contextlib.suppress(CommandError, BridgeUnavailable, ConnectionClosed):
                await self.request("ping")

    def _fail_pending(self, error: Exception) -> None:
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(error)

    def _finish_iterators(self, error: BridgeUnavailable | None = None) -> None:
        """End every iterator: quietly after close(), with ``error`` when the bridge is gone."""
        for sub in self._subs.values():
            sub.end(error)
        for monitor in self._monitors:
            monitor.queue.put_nowait(error)


class SyncClient:
    """Blocking wrapper for scripts: the async client runs on a private event-loop thread."""

    def __init__(self, url: str = DEFAULT_URL, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._client = TaskcastClient(url, **options)
        try:
            self._run(self._client.connect())
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _iterate(self, iterator: AsyncGenerator[dict[str, Any], None]) -> Iterator[dict[str, Any]]:
        try:
            while True:
                try:
                    yield self._run(iterator.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(iterator.aclose())

    def watch(
        self, operation_id: str, since: int = 0, epoch: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Blocking :meth:`TaskcastClient.watch`."""
        return self._iterate(self._client.watch(operation_id, since, epoch))

    def monitor(self, operation_type: str | None = None) -> Iterator[dict[str, Any]]:
        """Blocking :meth:`TaskcastClient.monitor`."""
        return self._iterate(self._run(self._client.monitor(operation_type)))

    def get_operation(self, operation_id: str) -> dict[str, Any]:
        return self._run(self._client.get_operation(operation_id))

    def list_operations(
        self,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
        operation_type: str | None = None,
    ) -> list[dict]:
        return self._run(self._client.list_operations(status, limit, offset, operation_type))

    def get_stats(self) -> dict[str, Any]:
        return self._run(self._client.get_stats())

    def cancel(self, operation_id: str, terminate: bool = False) -> dict[str, Any]:
        """Blocking :meth:`TaskcastClient.cancel`."""
        return self._run(self._client.cancel(operation_id, terminate))

    def close(self) -> None:
        """Close the connection and stop the loop thread."""
        try:
            self._run(self._client.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
