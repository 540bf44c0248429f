"""Helpers for tests that talk to a real bridge: in-process or as a ``taskcast serve`` process.

- :func:`running_bridge`: an in-process :class:`~bridge.server.Bridge` on a free
  port against a given Redis URL and prefix (``async with``).
- :class:`WsClient`: a real ``websockets`` client that collects every frame in
  the background, with ``request()`` (send a command, await the reply with the
  same request_id) and ``wait_for()``/``wait_events()`` (poll with a deadline).
- :class:`BridgeProcess`: ``python -m taskcast serve --port 0`` as a subprocess,
  its port read from the ``listening on`` log line, for restart and signal tests.
- :class:`RestartableBridge`: ``taskcast serve`` on a fixed port, stopped or
  killed and started again in its place (clients must resume across it).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from taskcast.bridge.server import Bridge
from taskcast.client import TaskcastClient
from taskcast.embedded_redis import free_port
from taskcast.events import TERMINAL_EVENT_TYPES, Event, log_data, status_data
from taskcast.store import EventStore
from taskcast.worker_config.settings import load_settings

LISTENING = re.compile(r"taskcast bridge listening on ws://(?P<host>[^:]+):(?P<port>\d+)/ws")
Frame = dict[str, Any]


@contextlib.asynccontextmanager
async def running_bridge(
    redis_url: str, prefix: str, static_dir: Path | None = None, **overrides: Any
) -> AsyncIterator[Bridge]:
    """A started bridge on a free port; stopped (connections closed with 1001) on exit.

    ``overrides`` are :class:`Settings` fields (e.g. ``send_buffer_bytes``).
    """
    settings = load_settings({}, redis_url=redis_url, prefix=prefix, port=0, **overrides)
    bridge = Bridge(settings, static_dir)
    await bridge.start()
    try:
        yield bridge
    finally:
        await bridge.stop()


async def frames_until_end(url: str, operation_id: str, timeout: float = 20.0) -> list[str]:
    """The raw frames a client left at websockets' defaults (``max_size`` 1 MiB) receives
    when it subscribes to ``operation_id``, up to its terminal event. A close (1009 for a
    frame over 1 MiB) raises ``ConnectionClosed``, which fails the test."""
    async with connect(url) as ws, asyncio.timeout(timeout):
        await ws.send(orjson.dumps({"command": "subscribe", "operation_id": operation_id}).decode())
        frames: list[str] = []
        while True:
            frame = str(await ws.recv())
            frames.append(frame)
            if orjson.loads(frame).get("event_type") in TERMINAL_EVENT_TYPES:
                return frames


class WsClient:
    """A WebSocket client that records every frame it receives, decoded."""

    _request_ids = itertools.count(1)

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[Frame] = []
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> WsClient:
        """Connect and wait for the ``connected`` frame."""
        client = cls(await connect(url, **kwargs))
        await client.wait_for(lambda f: f.get("event_type") == "connected")
        return client

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                self.frames.append(orjson.loads(message))
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()

    async def wait_for(self, predicate: Callable[[Frame], bool], timeout: float = 5.0) -> Frame:
        """The first frame (received so far or later) that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            for frame in self.frames:
                if predicate(frame):
                    return frame
            if self.closed.is_set() or time.monotonic() > deadline:
                raise AssertionError(f"no matching frame; got {self.frames[-5:]}")
            await asyncio.sleep(0.005)

    async def send(self, message: Any) -> None:
        """Send a JSON-encoded message, or a str/bytes frame as it is."""
        if isinstance(message, str | bytes):
            await self.ws.send(message)
        else:
            await self.ws.send(orjson.dumps(message).decode())

    async def request(self, command: str, timeout: float = 5.0, **fields: Any) -> Frame:
        """Send a command with a fresh request_id and return its reply."""
        request_id = next(self._request_ids)
        await self.send({"command": command, "request_id": request_id, **fields})
        return await self.wait_for(lambda f: f.get("request_id") == request_id, timeout)

    def events(self, operation_id: str | None = None) -> list[Frame]:
        """Event frames received so far (those with a seq), optionally of one operation."""
        return [
            f
            for f in self.frames
            if "seq" in f and (operation_id is None or f["operation_id"] == operation_id)
        ]

    def seqs(self, operation_id: str) -> list[int]:
        return [f["seq"] for f in self.events(operation_id)]

    async def wait_events(
        self, operation_id: str | None, count: int, timeout: float = 5.0
    ) -> list[Frame]:
        """Wait until at least ``count`` events (of ``operation_id``) have arrived."""
        deadline = time.monotonic() + timeout
        while len(self.events(operation_id)) < count:
            if self.closed.is_set() or time.monotonic() > deadline:
                got = [(f["operation_id"], f["seq"]) for f in self.events(operation_id)]
                raise AssertionError(f"expected {count} events, got {len(got)}: {got[-10:]}")
            await asyncio.sleep(0.005)
        return self.events(operation_id)

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.close_code

    async def close(self) -> None:
        await self.ws.close()
        await self._reader


async def eventually(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll ``check`` (a function or a coroutine function) until it returns something truthy
    (short deadline, no long sleeps)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {result!r})")
        await asyncio.sleep(0.01)


def http_get(url: str) -> tuple[int, str, bytes]:
    """``(status, content type, body)`` of a GET, also for error statuses."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


class BridgeProcess:
    """``taskcast serve`` in a subprocess, for signal and restart tests."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, python: str = sys.executable
    ) -> None:
        self.process = subprocess.Popen(
            [python, "-m", "taskcast", "serve", *args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.port: int | None = None
        self._listening = threading.Event()
        self._collector = threading.Thread(target=self._collect, daemon=True)
        self._collector.start()

    def _collect(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            match = LISTENING.search(line)
            if match:
                self.port = int(match["port"])
                self._listening.set()
        self._listening.set()

    def wait_listening(self, timeout: float = 15.0) -> int:
        """The real port from the log line (``--port 0`` picks one)."""
        if not self._listening.wait(timeout) or self.port is None:
            raise AssertionError(f"bridge did not start: {self.lines[-10:]}")
        return self.port

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``signum`` and return the exit code, once every line it logged is in ``lines``."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        code = self.process.wait(timeout)
        self._collector.join(timeout)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class RestartableBridge:
    """``taskcast serve`` on a fixed port: stopped or killed, then started again in its place."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.port = free_port()
        self.process: BridgeProcess | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> None:
        self.process = BridgeProcess("--port", str(self.port), env=self.env)
        self.process.wait_listening()

    def stop(self, signum: signal.Signals = signal.SIGTERM) -> None:
        if self.process is not None:
            self.process.stop(signum)


def produce_numbered(
    store: EventStore, operations: list[str], go: threading.Event, count: int, pause: float
) -> None:
    """``queued`` for each operation, then (once ``go`` is set) log lines 1..``count``
    round-robin over them, ``pause`` seconds apart, then ``completed`` for each."""
    for op in operations:
        store.append(Event("status", op, status_data("queued")))
    go.wait()
    for number in range(1, count + 1):
        for op in operations:
            store.append(Event("log", op, log_data("info", str(number))))
        threading.Event().wait(pause)
    for op in operations:
        store.append(Event("completed", op, {"status": "completed"}))


async def follow_seqs(url: str, operation_id: str, subscribed: asyncio.Event) -> list[int]:
    """Watch one operation to its end with a :class:`TaskcastClient`; the seqs it got.

    ``subscribed`` is set once the watch's subscribe has gone out."""
    async with TaskcastClient(url, max_reconnect_time=60) as client:
        events = client.watch(operation_id)
        first = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0)
        subscribed.set()
        seqs = [(await first)["seq"]]
        seqs += [event["seq"] async for event in events]
    return seqs
