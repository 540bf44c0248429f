"""WebSocket receivers for the benchmarks, run in client processes of their own.

One process holds many connections (asyncio), each subscribed to some
operations (taskcast) or simply connected (the thin relay, which sends
everything to everyone). Each connection checks ``seq`` per operation and
records the latency of every event carrying a producer timestamp, then the
process reports one merged :class:`~bench.stats.Delivery`. With ``reconnect``
a connection that drops comes back and resubscribes with ``since`` = its last
seq, the way PROTOCOL.md tells clients to resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from taskcast.events import TERMINAL_EVENT_TYPES

from .procs import raise_nofile_limit
from .stats import Delivery, SeqTracker

HANDSHAKES_IN_FLIGHT = 64  # below the listen backlog, so no SYN is dropped and retried


@dataclass(frozen=True)
class ReceiverSpec:
    """What one client process does; ``deadline`` (epoch seconds) bounds all of it."""

    url: str
    subscriptions: tuple[tuple[str, ...], ...]  # per connection: the operations it follows
    expected_last: dict[str, int] | None  # final seq of each operation; None: until terminal
    deadline: float
    protocol: bool = True  # False: the thin relay (no welcome, no commands)
    latency_types: frozenset[str] = frozenset({"progress"})
    reconnect: bool = False
    idle: bool = False  # hold the connections open until released, receive nothing
    local_hosts: tuple[str, ...] = ("127.0.0.1",)


@dataclass
class _Conn:
    ops: tuple[str, ...]
    tracker: SeqTracker = field(default_factory=SeqTracker)
    ended: set[str] = field(default_factory=set)  # operations whose terminal event arrived
    resumed_at: list[float] = field(default_factory=list)


class _Receiver:
    def __init__(self, spec: ReceiverSpec) -> None:
        self.spec = spec
        self.delivery = Delivery()
        self.hosts = itertools.cycle(spec.local_hosts)
        self.handshakes = asyncio.Semaphore(HANDSHAKES_IN_FLIGHT)
        self.pending = len(spec.subscriptions)
        self.connected = 0
        self.all_ready = asyncio.Event()
        self.errors: list[str] = []
        self.conns = [_Conn(ops) for ops in spec.subscriptions]
        if not self.conns:
            self.all_ready.set()

    def expected_for(self, conn: _Conn) -> dict[str, int]:
        expected = self.spec.expected_last
        if expected is None:
            return {}
        return expected if not self.spec.protocol else {op: expected[op] for op in conn.ops}

    def done(self, conn: _Conn) -> bool:
        if self.spec.expected_last is None:
            return len(conn.ended) == len(conn.ops)
        return conn.tracker.complete(self.expected_for(conn))

    async def open(self) -> ClientConnection:
        """Connect (and read the welcome frame) with bounded handshake concurrency."""
        async with self.handshakes:
            ws = await connect(
                self.spec.url,
                compression=None,
                max_size=None,
                max_queue=None,
                ping_interval=None,
                open_timeout=30,
                local_addr=(next(self.hosts), 0),
            )
            if self.spec.protocol:
                await ws.recv()
            return ws

    async def subscribe(self, ws: ClientConnection, conn: _Conn) -> None:
        """Send every subscribe, then read until each has its reply (events may interleave)."""
        for n, op in enumerate(conn.ops):
            command: dict[str, Any] = {"command": "subscribe", "operation_id": op, "request_id": n}
            if conn.tracker.last.get(op):
                command["since"] = conn.tracker.last[op]
            await ws.send(orjson.dumps(command).decode())
        awaiting = len(conn.ops)
        while awaiting:
            message = orjson.loads(await ws.recv())
            if "event_type" in message:
                self.handle(conn, message)
            elif message.get("status") == "subscribed":
                awaiting -= 1
            else:
                raise RuntimeError(f"subscribe refused: {message}")

    def handle(self, conn: _Conn, message: dict[str, Any]) -> None:
        seq = message.get("seq")
        if seq is None:
            return
        conn.tracker.record(message["operation_id"], seq)
        if message["event_type"] in TERMINAL_EVENT_TYPES:
            conn.ended.add(message["operation_id"])
        if message["event_type"] in self.spec.latency_types:
            self.delivery.histogram.record(time.time() - message["timestamp"])

    async def run_connection(self, conn: _Conn) -> None:
        try:
            ws = await self.open()
            if self.spec.protocol and conn.ops:
                await self.subscribe(ws, conn)
        finally:
            self.pending -= 1
            if not self.pending:
                self.all_ready.set()
        self.connected += 1
        if self.spec.idle:
            await self.hold(ws)
            return
        while not self.done(conn):
            try:
                frame = await ws.recv()
            except ConnectionClosed:
                if not self.spec.reconnect:
                    raise
                ws = await self.resume(conn)
                continue
            self.handle(conn, orjson.loads(frame))
        await ws.close()

    async def resume(self, conn: _Conn) -> ClientConnection:
        """Reconnect with jittered back-off, resubscribe with ``since``; bounded by the deadline."""
        for tries in itertools.count():
            if time.time() > self.spec.deadline:
                raise TimeoutError("could not reconnect before the deadline")
            await asyncio.sleep(random.uniform(0, min(1.0, 0.05 * 2 ** min(tries, 5))))
            try:
                ws = await self.open()
                await self.subscribe(ws, conn)
            except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError):
                continue
            conn.resumed_at.append(time.time())
            return ws
        raise AssertionError("unreachable")

    async def hold(self, ws: ClientConnection) -> None:
        """Keep an idle connection until the deadline or until the run is over."""
        with contextlib.suppress(ConnectionClosed):
            await ws.wait_closed()

    async def run(self, ready: Any, release: MpEvent | None) -> dict[str, Any]:
        tasks = [asyncio.create_task(self.run_connection(c)) for c in self.conns]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.all_ready.wait(), self.spec.deadline - time.time())
        self._note_failures(tasks)
        ready.put(("ready", self.connected, sorted(set(self.errors))[:5]))
        self.errors.clear()
        if release is not None:
            while not release.is_set() and time.time() < self.spec.deadline:
                await asyncio.sleep(0.1)
            for task in tasks:
                task.cancel()
        timeout = max(0.1, self.spec.deadline - time.time())
        await asyncio.wait(tasks, timeout=timeout)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._note_failures(tasks)
        return self.report()

    def _note_failures(self, tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                self.errors.append(repr(task.exception()))

    def report(self) -> dict[str, Any]:
        for conn in self.conns:
            tracker = conn.tracker
            self.delivery.received += tracker.received
            self.delivery.duplicates += tracker.duplicates
            if not self.spec.idle:
                self.delivery.lost += tracker.missing(self.expected_for(conn))
        unfinished = [
            (op, conn.tracker.last.get(op, 0))
            for conn in self.conns
            for op in conn.ops
            if op not in conn.ended
        ]
        return {
            "delivery": self.delivery,
            "unfinished": unfinished,
            "resumed_at": [t for c in self.conns for t in c.resumed_at],
            "errors": sorted(set(self.errors))[:5],
            "error_count": len(self.errors),
        }


def receive(spec: ReceiverSpec, results: Any, release: MpEvent | None = None) -> None:
    """Process entry point: connect, report ready, receive until done, report the delivery."""
    raise_nofile_limit()
    report = asyncio.run(_Receiver(spec).run(results, release))
    results.put(("done", report))
