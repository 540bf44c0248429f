"""Hostile clients against a bridge, mixed at random from a seed: does a promise break?

``python3 -m bench.hostile --seed N --seconds S [--connections C] [--json [PATH]]``

The seed picks a plan (:mod:`bench.hostile_plan`): whether the bridge has a key
(``TASKCAST_AUTH_SECRET``) or is the keyless loopback default, and which
misbehaviours run when, for how long, over how many sockets and with what
sizes: writers that never read (4 KiB ``SO_RCVBUF``) sending pings, subscribes,
listings, stats, garbage and unknown commands, with and without tokens; half
request heads and slow-loris trickles; connection churn; frames over the 64 KiB
inbound limit and messages in thousands of fragments; foreign ``Origin`` and
rebound ``Host`` headers on HTTP, SSE and WebSocket; forged, expired,
``alg: none`` and wrong-scope tokens; event streams and big histories never
read; pipelined HTTP requests; a task emitting multi-megabyte fields. About
``C`` sockets (default 300) come from four loopback source addresses
(127.0.0.10-13) against a bridge subprocess on a free port with its own
redis-server, its bridge-wide budget ``TASKCAST_MAX_BUFFERED_BYTES`` at 64 MiB.

Meanwhile a canary (a well-behaved WebSocket client, 127.0.0.3) follows an
operation the harness writes 20 times a second, resuming with ``since`` and
``epoch`` when the bridge closes it, and a prober (127.0.0.2) asks ``/healthz``
every 100 ms with a 1 s timeout. The invariants (:mod:`bench.hostile_checks`)
are then printed pass/fail with their figures; the exit status is 1 when one
failed. ``--json`` also writes the plan, figures and verdicts (default
bench/results/hostile-seed<N>.json). The run stops early, failing "bounded
memory", if the bridge passes 1.5 GiB: the machine is shared.

tests/test_hostile.py runs seed 6 for 55 s in CI. Seeds run outside CI on the
code before issue 18's fixes (55 s, default connections; figures in
docs/SECURITY.md, "The hostile-client harness"): 1 (keyed) and 3 (keyed) broke
only the access and pipelining invariants; 2 (keyless) also grew the bridge by
257 MiB and passed a 1.4 MB frame; 9 (keyed) grew it by 922 MiB, missed 3 % of
``/healthz`` probes and served the canary 79 % of the time. Replay a run with
the same ``--seed``, ``--seconds`` and ``--connections``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import random
import secrets
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import jwt
import orjson
from rich.console import Console
from rich.table import Table
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.frames import Frame, Opcode

from taskcast.embedded_redis import EmbeddedRedis
from taskcast.events import Event, log_data, status_data
from taskcast.store import EventStore
from taskcast.tasks.producer import Producer
from taskcast.tokens import mint_token
from taskcast.worker_config import load_settings

from .attacks import (
    BIG_OPERATION,
    EVIL_ORIGIN,
    PREFIX,
    PROBE_SOURCE,
    ROOT,
    TARGET,
    BridgeProcess,
    HealthProbe,
    RssSampler,
    Version,
    git_head,
    handshake,
    http_get,
    machine_info,
    seed,
)
from .hostile_checks import HEALTHZ_TIMEOUT, MIB, CanaryLedger, Figures, Verdict, verdicts
from .hostile_plan import (
    ACCESS_SURFACES,
    BAD_TOKENS,
    DEFAULT_CONNECTIONS,
    Action,
    Kind,
    Plan,
    make_plan,
)

HOSTILE_SOURCES = ("127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.13")
CANARY_SOURCE = "127.0.0.3"
CANARY_OPERATION = "canary"
CANARY_INTERVAL = 0.05  # seconds between the canary operation's events
MAX_BUFFERED_BYTES = 64 * MIB  # TASKCAST_MAX_BUFFERED_BYTES given to the bridge
FRAME_LIMIT = 64 * 1024  # TASKCAST_MAX_EVENT_BYTES and TASKCAST_MAX_MESSAGE_BYTES
SMALL_RCVBUF = 4096
RSS_CEILING = 1536 * MIB  # past it the attack stops: the invariant failed, the host is shared
PROBE_INTERVAL = 0.1
DRAIN_SECONDS = 10.0  # after the attack, how long the canary may take to catch up
REPLY_TIMEOUT = 3.0  # an access attempt's answer, a handshake's head
REBOUND_HOST = "rebind.evil.example"
WRONG_SECRET = "not-the-bridge-key-" + "w" * 32
HARNESS_ERRORS = "harness errors"  # an action that failed in an unexpected way: a bug here


def masked(opcode: Opcode, payload: bytes, fin: bool = True) -> bytes:
    """One client frame as it goes on the wire (clients must mask)."""
    return Frame(opcode, payload, fin=fin).serialize(mask=True)


def command_frame(name: str) -> bytes:
    """A command of the silent writers' mix, encoded once and written many times."""
    bodies: dict[str, bytes] = {
        "ping": b'{"command":"ping"}',
        "subscribe": orjson.dumps({"command": "subscribe", "operation_id": BIG_OPERATION}),
        "list_operations": b'{"command":"list_operations","limit":1000}',
        "get_stats": b'{"command":"get_stats"}',
        "garbage": b'{"command": ping, }}',
        "unknown": b'{"command":"format_disk"}',
    }
    return masked(Opcode.TEXT, bodies[name])


def status_of(head: bytes) -> int | None:
    """The status code of a response head, None when there is none."""
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


class Tokens:
    """Valid tokens for the canary and the hostile clients that hold one, and bad ones."""

    def __init__(self, secret: str | None) -> None:
        self.secret = secret

    def _mint(self, ops: list[str], scopes: tuple[str, ...], key: str | None = None) -> str:
        assert self.secret is not None
        return mint_token(ops, scopes=scopes, ttl=3600, secret=key or self.secret)

    def canary(self) -> str | None:
        return self._mint([CANARY_OPERATION], ("read",)) if self.secret else None

    def monitor(self) -> str | None:
        return self._mint(["*"], ("read", "monitor")) if self.secret else None

    def bad(self, kind: str) -> str:
        """A token the bridge must refuse, or (``wrong-scope``) one that grants nothing here."""
        claims = {"exp": int(time.time()) + 3600, "ops": ["*"], "scopes": ["read", "monitor"]}
        if kind == "forged":
            return self._mint(["*"], ("read", "monitor"), WRONG_SECRET)
        if kind == "expired":
            assert self.secret is not None
            return jwt.encode({**claims, "exp": int(time.time()) - 60}, self.secret, "HS256")
        if kind == "alg-none":
            def part(value: dict[str, Any]) -> str:
                return base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()
            return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."
        if kind == "wrong-scope":
            return self._mint(["someone-else"], ("read",))
        return "not.a.token"


class Harness:
    """One run: the bridge, the plan's actions as asyncio tasks, and what they observed."""

    def __init__(self, plan: Plan, bridge: BridgeProcess, tokens: Tokens) -> None:
        self.plan = plan
        self.bridge = bridge
        self.port = bridge.port
        self.tokens = tokens
        self.monitor_token = tokens.monitor()
        self.outcomes: dict[str, Counter[str]] = {kind.value: Counter() for kind in Kind}
        self.outcomes[HARNESS_ERRORS] = Counter()
        self.cross_origin_attempts = 0
        self.cross_origin_reads: list[str] = []
        self.bad_token_attempts = 0
        self.bad_token_reads: list[str] = []
        self.pipelined = Counter[str]()
        self.huge_events: list[tuple[float, Event]] = []
        self._writers: set[asyncio.StreamWriter] = set()

    # -- sockets ---------------------------------------------------------------------

    async def open(
        self, source: str, rcvbuf: int = 0
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection from ``source``; ``rcvbuf`` shrinks its receive buffer first."""
        sock = socket.socket()
        sock.setblocking(False)
        try:
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind((source, 0))
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(sock, (TARGET, self.port)), REPLY_TIMEOUT
            )
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock)
        self._writers.add(writer)
        return reader, writer

    def drop(self, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()
        self._writers.discard(writer)

    def abort_all(self) -> None:
        for writer in list(self._writers):
            self.drop(writer)

    async def ws_open(
        self, source: str, path: str = "/ws", extra: str = "", host: str | None = None,
        rcvbuf: int = 0,
    ) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
        """A WebSocket handshake by hand: the status (``"101"``, ``"429"``...) and the streams.

        The streams are dropped unless the status is 101."""
        reader, writer = await self.open(source, rcvbuf)
        try:
            writer.write(handshake(self.port, path, extra, host))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REPLY_TIMEOUT)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            self.drop(writer)
            return type(exc).__name__, reader, writer
        status = str(status_of(head))
        if status != "101":
            self.drop(writer)
        return status, reader, writer

    def token_path(self, path: str, token: str | None) -> str:
        return f"{path}{'&' if '?' in path else '?'}token={token}" if token else path

    def held_token(self, action: Action) -> str | None:
        """The monitor token for an action that presents one, on a keyed bridge."""
        return self.monitor_token if action.token else None

    async def exchange(
        self, source: str, request: bytes, head_only: bool
    ) -> tuple[int | None, bytes]:
        """Send ``request``; the status and what came back (the head only, for streams)."""
        reader, writer = await self.open(source)
        data = bytearray()
        try:
            writer.write(request)
            if head_only:
                data += await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REPLY_TIMEOUT)
            else:
                await asyncio.wait_for(_read_all(reader, data), REPLY_TIMEOUT)
        except asyncio.IncompleteReadError as exc:
            data += exc.partial
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            self.drop(writer)
        return status_of(bytes(data)), bytes(data)

    # -- misbehaviours ---------------------------------------------------------------

    async def silent_commands(self, action: Action, source: str, deadline: float) -> None:
        """Write ``count`` commands and never read: the replies pile up in the bridge."""
        rng = _rng(action)
        frames = {name: command_frame(name) for name in action.commands}

        async def one() -> None:
            path = self.token_path("/ws", self.held_token(action))
            status, _, writer = await self.ws_open(source, path, rcvbuf=SMALL_RCVBUF)
            self.outcomes[action.kind.value][status] += 1
            if status != "101":
                return
            stop_reading(writer)
            blob = b"".join(frames[rng.choice(action.commands)] for _ in range(action.count))
            slices = 1 if action.variant == "burst" else 10  # "paced": spread over the action
            width = math.ceil(len(blob) / slices)
            for start in range(0, len(blob), width):
                writer.write(blob[start:start + width])
                await _sleep_until(min(deadline, time.monotonic() + action.duration / slices))
            await _sleep_until(deadline)

        await self.each_connection(action, one)

    async def half_heads(self, action: Action, source: str, deadline: float) -> None:
        """Send part of a request head and stop; re-open whatever the bridge drops."""
        head = self.head_of(action.variant)
        cut = _rng(action).randint(1, len(head) - 2)

        async def one() -> None:
            while time.monotonic() < deadline:
                reader, writer = await self.open(source)
                writer.write(head[:cut])
                got = await _read_until(reader, deadline)
                self.drop(writer)
                self.outcomes[action.kind.value]["dropped by bridge" if got else "held"] += 1
                await asyncio.sleep(0.05)

        await self.each_connection(action, one)

    async def slowloris(self, action: Action, source: str, deadline: float) -> None:
        """Trickle a whole request head a byte at a time, ``size`` ms apart."""
        head = self.head_of(action.variant) + b"\r\n"

        async def one() -> None:
            while time.monotonic() < deadline:
                reader, writer = await self.open(source)
                for byte in range(len(head)):
                    if time.monotonic() >= deadline or reader.at_eof():
                        break
                    writer.write(head[byte:byte + 1])
                    await asyncio.sleep(action.size / 1000)
                outcome = "dropped by bridge" if reader.at_eof() else "held"
                if time.monotonic() < deadline and not reader.at_eof():
                    got = await _read_until(reader, min(deadline, time.monotonic() + 2))
                    outcome = str(status_of(got)) if got else "no answer"
                self.drop(writer)
                self.outcomes[action.kind.value][outcome] += 1

        await self.each_connection(action, one)

    async def churn(self, action: Action, source: str, deadline: float) -> None:
        """Handshakes opened and dropped as fast as they go."""
        ping = command_frame("ping")
        close = masked(Opcode.CLOSE, b"\x03\xe8")

        async def one() -> None:
            while time.monotonic() < deadline:
                status, _, writer = await self.ws_open(source)
                self.outcomes[action.kind.value][status] += 1
                if status == "101":
                    if action.variant == "close":
                        writer.write(close)
                    elif action.variant == "command-then-abort":
                        writer.write(ping)
                    self.drop(writer)
                await asyncio.sleep(0.01)

        await self.each_connection(action, one)

    async def huge_frames(self, action: Action, source: str, deadline: float) -> None:
        """One frame of ``size`` bytes (over the 64 KiB limit) per connection, ``count`` times."""
        opcode = Opcode.BINARY if action.variant == "binary" else Opcode.TEXT
        frame = masked(opcode, b"x" * action.size)
        if action.variant == "declared-only":  # the header promises it all; 1 KiB follows
            frame = frame[:14 + 1024]

        async def one() -> None:
            for _ in range(action.count):
                if time.monotonic() >= deadline:
                    return
                path = self.token_path("/ws", self.held_token(action))
                status, reader, writer = await self.ws_open(source, path)
                if status != "101":
                    self.outcomes[action.kind.value][status] += 1
                    continue
                writer.write(frame)
                closed = await _closed_within(reader, min(deadline, time.monotonic() + 5))
                self.outcomes[action.kind.value]["closed" if closed else "still open"] += 1
                self.drop(writer)

        await self.each_connection(action, one)

    async def fragments(self, action: Action, source: str, deadline: float) -> None:
        """A message in ``count`` continuation frames of ``size`` bytes (or endless ones)."""

        async def one() -> None:
            path = self.token_path("/ws", self.held_token(action))
            status, reader, writer = await self.ws_open(source, path)
            if status != "101":
                self.outcomes[action.kind.value][status] += 1
                return
            if action.variant == "endless":
                writer.write(masked(Opcode.TEXT, b'{"command":"ping","pad":"', fin=False))
                while time.monotonic() < deadline and not reader.at_eof():
                    writer.write(masked(Opcode.CONT, b"x" * action.size, fin=False))
                    await asyncio.sleep(0.02)
            else:
                total = action.count * action.size
                if action.variant == "over-limit":
                    total = max(total, FRAME_LIMIT + 4096)
                body = b'{"command":"ping","pad":"' + b"x" * total + b'"}'
                pieces = [body[i:i + action.size] for i in range(0, len(body), action.size)]
                writer.write(masked(Opcode.TEXT, pieces[0], fin=len(pieces) == 1))
                for n, piece in enumerate(pieces[1:], 2):
                    writer.write(masked(Opcode.CONT, piece, fin=n == len(pieces)))
            closed = await _closed_within(reader, min(deadline, time.monotonic() + 5))
            self.outcomes[action.kind.value]["closed" if closed else "still open"] += 1
            self.drop(writer)

        await self.each_connection(action, one)

    async def cross_origin(self, action: Action, source: str, deadline: float) -> None:
        """Reads from a foreign ``Origin`` or through a rebound ``Host``; any 2xx/101 is a read."""
        rng = _rng(action)
        rebound = action.kind is Kind.REBOUND_HOST
        host = f"{REBOUND_HOST}:{self.port}" if rebound else None
        origin = f"http://{REBOUND_HOST}:{self.port}" if rebound else EVIL_ORIGIN

        async def one() -> None:
            for _ in range(action.count):
                if time.monotonic() >= deadline:
                    return
                surface = rng.choice(ACCESS_SURFACES)
                token = self.monitor_token if rng.random() < 0.7 else None
                # A browser sends Origin on every WebSocket handshake, not on a same-origin GET.
                send_origin = not rebound or surface == "ws" or rng.random() < 0.5
                extra = f"Origin: {origin}\r\n" if send_origin else ""
                await self.access_attempt(
                    action, source, surface, extra, host, token, self.cross_origin_reads
                )
                self.cross_origin_attempts += 1
                await asyncio.sleep(rng.uniform(0, 0.5))

        await self.each_connection(action, one)

    async def token_abuse(self, action: Action, source: str, deadline: float) -> None:
        """Forged, expired, ``alg: none``, garbage and wrong-scope tokens on every surface."""
        rng = _rng(action)

        async def one() -> None:
            for _ in range(action.count):
                if time.monotonic() >= deadline:
                    return
                kind = rng.choice(BAD_TOKENS)
                surface = rng.choice((*ACCESS_SURFACES, "ws-auth"))
                label = f"{kind} token"
                if surface in ("ws", "ws-auth"):
                    await self.ws_token_attempt(action, source, kind, surface == "ws-auth")
                else:
                    await self.access_attempt(
                        action, source, surface, "", None, self.tokens.bad(kind),
                        self.bad_token_reads, label,
                    )
                self.bad_token_attempts += 1
                await asyncio.sleep(rng.uniform(0, 0.3))

        await self.each_connection(action, one)

    async def access_attempt(
        self, action: Action, source: str, surface: str, extra: str, host: str | None,
        token: str | None, reads: list[str], label: str = "",
    ) -> None:
        """One request that must be refused: a 2xx (101 for WS), or the canary's data, is a read."""
        auth = f"Authorization: Bearer {token}\r\n" if token and surface.startswith("http") else ""
        operation = f"/api/operations/{CANARY_OPERATION}"
        if surface == "ws":
            request = handshake(self.port, self.token_path("/ws", token), extra, host)
        elif surface == "sse":
            path = self.token_path(f"{operation}/events", token)
            accept = f"Accept: text/event-stream\r\n{extra}"
            request = http_get(self.port, "GET", path, accept, host)
        else:
            path = operation if surface == "http-operation" else "/api/operations"
            request = http_get(self.port, "GET", path, f"{extra}{auth}Connection: close\r\n", host)
        try:
            status, body = await self.exchange(source, request, surface in ("ws", "sse"))
        except (OSError, asyncio.TimeoutError) as exc:
            self.outcomes[action.kind.value][f"{surface} {type(exc).__name__}"] += 1
            return
        self.outcomes[action.kind.value][f"{surface} {status}"] += 1
        if status is not None and (200 <= status < 300 or status == 101):
            reads.append(f"{label or action.kind.value} {surface} -> {status}")
        elif CANARY_OPERATION.encode() in body.partition(b"\r\n\r\n")[2]:
            reads.append(f"{label or action.kind.value} {surface} -> {status} with data")

    async def ws_token_attempt(
        self, action: Action, source: str, kind: str, in_auth: bool
    ) -> None:
        """A WebSocket with a bad token (in the URL or an ``auth`` command) asks for data."""
        token = self.tokens.bad(kind)
        url = f"ws://{TARGET}:{self.port}/ws" + ("" if in_auth else f"?token={token}")
        surface = "ws-auth" if in_auth else "ws-url"
        asks = [
            {"command": "subscribe", "operation_id": CANARY_OPERATION},
            {"command": "get_operation", "operation_id": CANARY_OPERATION},
            {"command": "list_operations"},
        ]
        if in_auth:
            asks.insert(0, {"command": "auth", "token": token})
        leaked: list[str] = []
        outcome = "answered"
        try:
            async with connect(
                url, local_addr=(source, 0), open_timeout=REPLY_TIMEOUT, max_size=None,
                compression=None, ping_interval=None, close_timeout=1,
            ) as ws:
                for ask in asks:
                    await ws.send(orjson.dumps(ask).decode())
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(_collect_leaks(ws, leaked), 1.5)
        except ConnectionClosed as exc:
            outcome = f"closed {exc.rcvd.code if exc.rcvd else None}"
        except (OSError, InvalidHandshake) as exc:
            outcome = f"refused {getattr(getattr(exc, 'response', None), 'status_code', '')}"
        self.outcomes[action.kind.value][f"{surface} {outcome}"] += 1
        self.bad_token_reads += [f"{kind} token {surface}: {what}" for what in leaked]

    async def sse_stall(self, action: Action, source: str, deadline: float) -> None:
        """Open an event stream (a big history, or every operation) and never read it."""
        path = f"/api/operations/{BIG_OPERATION}/events"
        if action.variant == "monitor":
            path = "/api/events"
        request = http_get(
            self.port, "GET", self.token_path(path, self.held_token(action)),
            "Accept: text/event-stream\r\n",
        )

        async def one() -> None:
            _, writer = await self.open(source, SMALL_RCVBUF)
            stop_reading(writer)
            writer.write(request)
            self.outcomes[action.kind.value]["held"] += 1
            await _sleep_until(deadline)

        await self.each_connection(action, one)

    async def history_stall(self, action: Action, source: str, deadline: float) -> None:
        """Subscribe ``count`` times to the big history and never read."""
        subscribe = command_frame("subscribe")

        async def one() -> None:
            path = self.token_path("/ws", self.held_token(action))
            status, _, writer = await self.ws_open(source, path, rcvbuf=SMALL_RCVBUF)
            self.outcomes[action.kind.value][status] += 1
            if status == "101":
                stop_reading(writer)
                writer.write(subscribe * action.count)
                await _sleep_until(deadline)

        await self.each_connection(action, one)

    async def pipelined_requests(self, action: Action, source: str, deadline: float) -> None:
        """``count`` requests in one write, again and again: how many get an answer."""
        rng = _rng(action)
        auth = f"Authorization: Bearer {self.monitor_token}\r\n" if self.monitor_token else ""
        paths = ("/healthz", "/api/stats", "/api/operations?limit=1", "/readyz")

        async def one() -> None:
            while time.monotonic() < deadline:
                requests = [http_get(self.port, "GET", rng.choice(paths), auth)
                            for _ in range(action.count)]
                self.pipelined["writes"] += 1
                try:
                    _, answer = await self.exchange(source, b"".join(requests), head_only=False)
                except (OSError, asyncio.TimeoutError) as exc:  # not even accepted: unanswered
                    self.outcomes[action.kind.value][type(exc).__name__] += 1
                    await asyncio.sleep(0.5)
                    continue
                answered = answer.count(b"HTTP/1.1 ")
                self.pipelined["writes answered"] += answered > 0
                self.pipelined["requests"] += action.count
                self.pipelined["requests answered"] += answered
                self.outcomes[action.kind.value][f"{answered} of {action.count}"] += 1
                await asyncio.sleep(rng.uniform(0.1, 0.5))

        await self.each_connection(action, one)

    async def huge_event(self, action: Action, source: str, deadline: float) -> None:
        """Hand the producer ``count`` oversized events for the canary's operation."""
        for _ in range(action.count):
            self.huge_events.append((time.monotonic(), oversized(action.variant, action.size)))
            self.outcomes[action.kind.value][f"{action.variant} {action.size:,} B"] += 1
            await _sleep_until(min(deadline, time.monotonic() + action.duration / action.count))

    # -- running ---------------------------------------------------------------------

    def head_of(self, path: str) -> bytes:
        """A request head without its final blank line (``/ws``: an upgrade)."""
        request = handshake(self.port, path) if path == "/ws" else http_get(self.port, "GET", path)
        return request[:-2]

    async def each_connection(self, action: Action, one: Callable[[], Awaitable[None]]) -> None:
        """``one`` once per connection of ``action``, concurrently; failures are outcomes."""

        async def guarded() -> None:
            try:
                await one()
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
                self.outcomes[action.kind.value][type(exc).__name__] += 1

        await asyncio.gather(*(guarded() for _ in range(max(1, action.connections))))

    async def run_action(self, action: Action, started: float) -> None:
        await _sleep_until(started + action.start)
        behaviour = BEHAVIOURS[action.kind]
        source = HOSTILE_SOURCES[action.source % len(HOSTILE_SOURCES)]
        await behaviour(self, action, source, started + action.end)

    async def attack(self) -> tuple[float, str | None]:
        """Every action of the plan; returns the seconds it ran and why it stopped early."""
        started = time.monotonic()
        tasks = [asyncio.ensure_future(self.run_action(a, started)) for a in self.plan.actions]
        end = started + self.plan.seconds
        stopped: str | None = None
        while time.monotonic() < end:
            await asyncio.sleep(0.25)
            if self.bridge.process.poll() is not None:
                stopped = "bridge exited"
                break
            if self.bridge.rss() > RSS_CEILING:
                stopped = f"bridge RSS over {RSS_CEILING / MIB:.0f} MiB"
                break
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        self.abort_all()
        for result in results:
            if isinstance(result, Exception):
                self.outcomes[HARNESS_ERRORS][f"{type(result).__name__}: {result}"[:80]] += 1
        return time.monotonic() - started, stopped


Behaviour = Callable[[Harness, Action, str, float], Awaitable[None]]
BEHAVIOURS: dict[Kind, Behaviour] = {
    Kind.SILENT_COMMANDS: Harness.silent_commands,
    Kind.HALF_HEADS: Harness.half_heads,
    Kind.SLOWLORIS: Harness.slowloris,
    Kind.CHURN: Harness.churn,
    Kind.HUGE_FRAMES: Harness.huge_frames,
    Kind.FRAGMENTS: Harness.fragments,
    Kind.FOREIGN_ORIGIN: Harness.cross_origin,
    Kind.REBOUND_HOST: Harness.cross_origin,
    Kind.TOKEN_ABUSE: Harness.token_abuse,
    Kind.SSE_STALL: Harness.sse_stall,
    Kind.HISTORY_STALL: Harness.history_stall,
    Kind.PIPELINED: Harness.pipelined_requests,
    Kind.HUGE_EVENT: Harness.huge_event,
}


def stop_reading(writer: asyncio.StreamWriter) -> None:
    """Never read again: what the bridge sends fills the small receive buffer, then its own."""
    cast(asyncio.Transport, writer.transport).pause_reading()


def _rng(action: Action) -> random.Random:
    return random.Random(action.seed)


async def _sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


async def _read_until(reader: asyncio.StreamReader, deadline: float) -> bytes:
    """What the bridge sends before ``deadline`` (b"" when it sent nothing)."""
    try:
        return await asyncio.wait_for(reader.read(65536), max(0.0, deadline - time.monotonic()))
    except (asyncio.TimeoutError, OSError):
        return b""


async def _read_all(reader: asyncio.StreamReader, into: bytearray) -> None:
    """Read until the bridge closes, into ``into`` (kept when a timeout cuts this short)."""
    while chunk := await reader.read(65536):
        into += chunk


async def _closed_within(reader: asyncio.StreamReader, deadline: float) -> bool:
    """Whether the bridge ended the connection before ``deadline`` (reading what it sends)."""
    try:
        await asyncio.wait_for(_read_all(reader, bytearray()), deadline - time.monotonic())
        return True
    except asyncio.TimeoutError:
        return False
    except OSError:
        return True


async def _collect_leaks(ws: ClientConnection, leaked: list[str]) -> None:
    async for message in ws:
        leaked += _leaks(orjson.loads(message))


def _leaks(frame: dict[str, Any]) -> list[str]:
    """What of a reply or event gives a bad token's holder data."""
    if frame.get("operation_id") == CANARY_OPERATION and "seq" in frame:
        return ["an event"]
    if frame.get("status") == "subscribed":
        return ["subscribed"]
    if frame.get("operation"):
        return ["a snapshot"]
    if frame.get("operations"):
        return [f"{len(frame['operations'])} operations listed"]
    return []


def oversized(field: str, size: int) -> Event:
    """An event for the canary's operation with one field of ``size`` bytes."""
    blob = "x" * size
    if field == "status":
        return Event("status", CANARY_OPERATION, status_data(blob))
    if field == "status-message":
        return Event("status", CANARY_OPERATION, status_data("running", blob))
    if field == "status-details":
        return Event("status", CANARY_OPERATION, status_data("running", "", {"blob": blob}))
    if field == "log-level":
        return Event("log", CANARY_OPERATION, {"level": blob, "message": "level"})
    return Event("log", CANARY_OPERATION, log_data("info", blob))


# -- the canary and its producer ---------------------------------------------------------


class Canary:
    """A well-behaved client: follows the canary operation, resumes on every close.

    Runs in a thread with its own event loop, so the harness's busy loop does not
    delay what it measures. Every close is followed by a resume with ``since`` and
    ``epoch`` at once: a 4008 or 1013 is allowed, a gap is not.
    """

    def __init__(self, url: str, ledger: CanaryLedger) -> None:
        self.url = url
        self.ledger = ledger
        self.subscribed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> Canary:
        self._thread.start()
        if not self.subscribed.wait(15):
            raise RuntimeError("the canary could not subscribe")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    async def _run(self) -> None:
        since, epoch = 0, None
        while not self._stop.is_set():
            try:
                async with connect(
                    self.url, local_addr=(CANARY_SOURCE, 0), max_size=None, compression=None,
                    open_timeout=5, close_timeout=1,
                ) as ws:
                    ask: dict[str, Any] = {"command": "subscribe", "operation_id": CANARY_OPERATION}
                    if since:
                        ask.update(since=since, epoch=epoch)
                        self.ledger.resumes += 1
                    await ws.send(orjson.dumps(ask).decode())
                    while not self._stop.is_set():
                        with contextlib.suppress(asyncio.TimeoutError):
                            message = await asyncio.wait_for(ws.recv(decode=False), 0.2)
                            epoch = self._frame(message, since, epoch)
                            since = self.ledger.last_received
            except ConnectionClosed as exc:
                self.ledger.closed(exc.rcvd.code if exc.rcvd else None)
            except (OSError, asyncio.TimeoutError, InvalidHandshake):
                self.ledger.closed(None)
                await asyncio.sleep(0.1)

    def _frame(self, message: bytes, since: int, epoch: str | None) -> str | None:
        """Record one frame; returns the epoch to resume with."""
        now = time.monotonic()
        self.ledger.frame(len(message))
        frame = orjson.loads(message)
        if frame.get("operation_id") != CANARY_OPERATION:
            return epoch
        if "seq" in frame:
            self.ledger.receive(frame["seq"], now)
        elif frame.get("status") == "subscribed":
            self.subscribed.set()
            if since and not frame.get("recovered"):
                self.ledger.unrecovered += 1
            epoch = (frame.get("operation") or {}).get("epoch", epoch)
        return epoch


class CanaryProducer:
    """Writes the canary operation's events, every 50 ms, through the real producer.

    Oversized events the plan asks for go out between them, so the producer's caps
    are what stands between a task's 2 MB field and the canary's frame limit.
    """

    def __init__(self, redis_url: str, ledger: CanaryLedger, harness: Harness) -> None:
        settings = load_settings(
            {}, redis_url=redis_url, prefix=PREFIX, emit_timeout=5.0, max_event_bytes=FRAME_LIMIT
        )
        self.producer = Producer(settings)
        self.ledger = ledger
        self.harness = harness
        self.numbered = 0
        self.errors: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> CanaryProducer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.producer.close()

    def _emit(self, event: Event) -> None:
        """Store one event; an exception is the producer breaking a task, kept as a figure."""
        try:
            seq = self.producer.emit(event)
        except Exception as exc:  # the promise is that emit never raises into a task
            self.errors[f"{event.event_type}: {type(exc).__name__}: {exc}"[:120]] += 1
            return
        if seq > 0:
            self.ledger.store(seq, time.monotonic())

    def _run(self) -> None:
        self._emit(Event("status", CANARY_OPERATION, status_data("running")))
        handed = 0
        while not self._stop.wait(CANARY_INTERVAL):
            self.numbered += 1
            self._emit(Event("log", CANARY_OPERATION, log_data("info", str(self.numbered))))
            while handed < len(self.harness.huge_events):
                self._emit(self.harness.huge_events[handed][1])
                handed += 1


def last_seq(redis_url: str) -> int:
    """The canary operation's last stored seq, as the store says."""
    store = EventStore.connect(load_settings({}, redis_url=redis_url, prefix=PREFIX))
    snapshot = store.snapshot(CANARY_OPERATION) or {}
    return int(snapshot.get("last_seq") or 0)


# -- one run ----------------------------------------------------------------------------


def bridge_environment(secret: str | None) -> dict[str, str]:
    env = {
        "TASKCAST_MAX_BUFFERED_BYTES": str(MAX_BUFFERED_BYTES),
        "TASKCAST_MAX_EVENT_BYTES": str(FRAME_LIMIT),
        "TASKCAST_MAX_MESSAGE_BYTES": str(FRAME_LIMIT),
    }
    if secret:
        env["TASKCAST_AUTH_SECRET"] = secret
    return env


async def wait_caught_up(ledger: CanaryLedger, redis_url: str) -> None:
    """Until the canary has the store's last event, or DRAIN_SECONDS."""
    target = await asyncio.to_thread(last_seq, redis_url)
    deadline = time.monotonic() + DRAIN_SECONDS
    while ledger.last_received < target and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def run_plan(plan: Plan, console: Console) -> dict[str, Any]:
    """Start Redis and a bridge, attack it per ``plan``, and judge it."""
    secret = secrets.token_hex(32) if plan.keyed else None
    tokens = Tokens(secret)
    ledger = CanaryLedger(CANARY_OPERATION)
    version = Version("after", git_head(ROOT), ROOT)
    with EmbeddedRedis() as server:
        seed(server.url)
        bridge = BridgeProcess(version, server.url, bridge_environment(secret), 20_000)
        try:
            harness = Harness(plan, bridge, tokens)
            token = tokens.canary()
            url = bridge.url + (f"?token={token}" if token else "")
            with RssSampler(bridge) as sampler, HealthProbe(
                bridge.port, PROBE_INTERVAL, HEALTHZ_TIMEOUT, PROBE_SOURCE
            ) as probe:
                canary = Canary(url, ledger).start()
                await asyncio.sleep(1.0)  # the baseline window: connected, not yet attacked
                now = time.monotonic()
                baseline = sampler.median(now - 1.0, now)
                producer = CanaryProducer(server.url, ledger, harness).start()
                console.log(f"seed {plan.seed}: {plan.connections} connections, "
                            f"{'keyed' if plan.keyed else 'keyless'} bridge on {bridge.port}")
                started, cpu = time.monotonic(), bridge.cpu_seconds()
                ran, stopped = await harness.attack()
                cpu = bridge.cpu_seconds() - cpu
                producer.stop()
                await wait_caught_up(ledger, server.url)
                peak = sampler.peak(started, time.monotonic())
                canary.stop()
            replies = list(probe.replies)
            alive = bridge.process.poll() is None
            final = await asyncio.to_thread(last_seq, server.url)
        finally:
            bridge.stop()
    answered = [r for r in replies if r.status == 200 and r.seconds <= HEALTHZ_TIMEOUT]
    figures = Figures(
        rss_baseline=baseline,
        rss_peak=peak,
        buffered_budget=MAX_BUFFERED_BYTES,
        probes=len(replies),
        probes_answered=len(answered),
        canary_events=len(ledger.stored),
        canary_served=ledger.served_share(),
        canary_lost=ledger.lost(final),
        canary_duplicates=ledger.tracker.duplicates,
        canary_unrecovered=ledger.unrecovered,
        canary_max_frame=ledger.max_frame,
        frame_limit=FRAME_LIMIT,
        cross_origin_attempts=harness.cross_origin_attempts,
        cross_origin_reads=harness.cross_origin_reads,
        bad_token_attempts=harness.bad_token_attempts,
        bad_token_reads=harness.bad_token_reads,
        pipelined_writes=harness.pipelined["writes"],
        pipelined_answered=harness.pipelined["writes answered"],
        producer_errors=list(producer.errors),
        alive=alive,
    )
    failures = Counter(r.describe() for r in replies if r not in answered)
    return {
        "plan": {
            "seed": plan.seed, "seconds": plan.seconds, "keyed": plan.keyed,
            "connections": plan.connections, "kinds": dict(plan.kinds()),
            "actions": [{**asdict(a), "kind": a.kind.value} for a in plan.actions],
        },
        "ran_seconds": round(ran, 1),
        "bridge_cpu_seconds": round(cpu, 1),
        "stopped_early": stopped,
        "figures": figures.to_json(),
        "verdicts": [asdict(v) for v in verdicts(figures)],
        "healthz_failures": dict(failures.most_common(5)),
        "healthz_p50_ms": round(statistics.median(r.seconds for r in answered) * 1000, 1)
        if answered else None,
        "canary": {"resumes": ledger.resumes, "closes": ledger.close_codes,
                   "events_received": len(ledger.arrived)},
        "pipelined": dict(harness.pipelined),
        "outcomes": {kind: dict(c.most_common(6)) for kind, c in harness.outcomes.items() if c},
        "bridge_problems": dict(bridge.problems.most_common(5)),
    }


# -- report ---------------------------------------------------------------------------


def report(console: Console, result: dict[str, Any]) -> None:
    plan = result["plan"]
    title = (f"taskcast bridge vs hostile clients: seed {plan['seed']}, "
             f"{'keyed' if plan['keyed'] else 'keyless'}, {plan['connections']} connections, "
             f"{result['ran_seconds']} s")
    table = Table(title=title, show_lines=True)
    for column in ("invariant", "verdict", "figure", "limit"):
        table.add_column(column, overflow="fold")
    for verdict in result["verdicts"]:
        mark = "[green]pass[/]" if verdict["passed"] else "[red]FAIL[/]"
        table.add_row(verdict["name"], mark, verdict["figure"], verdict["limit"])
    console.print(table)
    actions: Counter[str] = Counter()
    connections: Counter[str] = Counter()
    for action in plan["actions"]:
        actions[action["kind"]] += 1
        connections[action["kind"]] += action["connections"]
    behaviours = Table(title="what the hostile clients did and got", show_lines=True)
    for column in ("behaviour", "actions", "connections", "outcomes (most common)"):
        behaviours.add_column(column, overflow="fold")
    for kind, outcomes in result["outcomes"].items():
        shown = ", ".join(f"{k}: {v}" for k, v in outcomes.items())
        behaviours.add_row(kind, str(actions[kind]), str(connections[kind]), shown)
    console.print(behaviours)
    pipelined = result["pipelined"]
    console.print(
        f"pipelined HTTP requests answered: {pipelined.get('requests answered', 0)} of "
        f"{pipelined.get('requests', 0)}; bridge CPU: {result['bridge_cpu_seconds']} s; "
        f"canary: {result['canary']}; /healthz misses: {result['healthz_failures'] or 'none'}"
    )
    console.print(f"bridge errors and warnings logged: {result['bridge_problems'] or 'none'}")
    if result["stopped_early"]:
        console.print(f"[red]stopped early: {result['stopped_early']}[/]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.hostile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS)
    parser.add_argument("--json", nargs="?", const="", default=None, metavar="PATH",
                        help="also write the results (default bench/results/hostile-seed<N>.json)")
    args = parser.parse_args(argv)
    plan = make_plan(args.seed, args.seconds, args.connections, len(HOSTILE_SOURCES))
    console = Console(width=max(140, Console().width))
    machine = machine_info()
    result = asyncio.run(run_plan(plan, console))
    report(console, result)
    if args.json is not None:
        path = Path(args.json or ROOT / "bench" / "results" / f"hostile-seed{args.seed}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        command = " ".join(["python3 -m bench.hostile", *(argv or sys.argv[1:])])
        document = {"command": command, "machine": machine, **result}
        path.write_text(json.dumps(document, indent=2, default=str) + "\n")
        console.print(f"wrote {path}")
    return 0 if all(Verdict(**v).passed for v in result["verdicts"]) else 1


if __name__ == "__main__":
    sys.exit(main())
