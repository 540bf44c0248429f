"""What hostile clients can do to a bridge, before and after the security work.

``python3 -m bench.attacks [--before /tmp/taskcast-before] [--json] [--only NAME ...]``

Each attack runs against a bridge this script starts (a subprocess on a free
port, on a private redis-server), sends traffic only to 127.0.0.1 (127.0.0.2
is an extra loopback source for the health probe), is bounded in time, and
reports what an operator or a user would notice: memory, refused handshakes,
whether /healthz still answers, log volume, bytes sent back, frame sizes,
replies. ``--before`` points at a worktree of the commit before the work
(``git worktree add --detach /tmp/taskcast-before b119f4a``), whose bridge
is the top-level ``bridge`` package; without it only the current tree runs.

Nothing is written except, with ``--json``, bench/results/attacks.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
import redis
import websockets
from rich.console import Console
from rich.table import Table
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from taskcast.embedded_redis import EmbeddedRedis
from taskcast.events import Event, log_data
from taskcast.store import EventStore
from taskcast.tasks.producer import Producer
from taskcast.worker_config import load_settings

from .machine import host_info

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "attacks.json"
PREFIX = "attack:"
BEFORE_COMMIT = "b119f4a"
READY = re.compile(rb"taskcast bridge listening on ws://([\d.]+):(\d+)/ws")
SUPPRESSED = re.compile(r"\(\d+ similar reports suppressed\)")
LOG_RECORD = re.compile(rb"^\d{4}-\d\d-\d\d [\d:,]+ (ERROR|WARNING|CRITICAL) (.*)")
TARGET = "127.0.0.1"
PROBE_SOURCE = "127.0.0.2"  # loopback too: health probes are not counted as the flooder's

BIG_OPERATION = "big"
BIG_EVENTS = 1000
BIG_LINE = "line ..." + "x" * 200
SUBSCRIBE_BIG = orjson.dumps({"command": "subscribe", "operation_id": BIG_OPERATION})

MEMORY_CLIENTS = 4
MEMORY_FRAMES = 3000
MEMORY_PAUSE = 3.0  # seconds the "pause" variants keep their socket open without reading
# variant -> (send a close frame after the subscribes, stop reading MEMORY_PAUSE s first)
MEMORY_VARIANTS = {"abort": (True, False), "pause": (True, True), "pause-noclose": (False, True)}
MEMORY_AFTER = 10.0  # seconds after the clients vanished when RSS is read again
BUSY_LIMIT = 30.0  # how long to wait for a bridge still working for vanished clients
IDLE_CPU_SHARE = 0.05  # below 5% of a core over half a second, the bridge is idle
PROBE_DEADLINE = 5.0  # a normal client's subscribe reply must come within this
SAMPLE_INTERVAL = 0.01

FLOOD_SECONDS = 20.0
FLOOD_HOLD = 3.0  # connections stay open this long after the flood, /healthz still probed
FLOOD_MAX = 20_000
FLOOD_WORKERS = 200
FLOOD_TIMEOUT = 5.0
FD_HEADROOM = 300  # descriptors this process keeps for itself (Redis, probes, pipes)
COMMON_FD_LIMIT = 1024  # the soft limit most Linux services get unless raised

AMPLIFY_SECONDS = 20.0
HUGE_MESSAGE_BYTES = 20_000_000
EVIL_ORIGIN = "https://evil.example"
ACCESS_CLOSE_WAIT = 12.0  # the keyed bridge closes a token-less socket after 10 s

ORIGINAL_NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)


# -- machine ---------------------------------------------------------------------------


def git_head(root: Path) -> str:
    """The short commit of ``root`` (read-only), with ``+dirty`` for uncommitted edits."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+dirty" if head and dirty else head or "unknown"


def machine_info() -> dict[str, Any]:
    """Cores, load and versions: attack figures mean little without the machine."""
    return {
        **host_info(),
        "websockets": websockets.__version__,
        "nofile_limit_given": list(ORIGINAL_NOFILE),
    }


# -- the bridge under attack -----------------------------------------------------------


@dataclass(frozen=True)
class Version:
    """How to start one version's bridge: ``before`` (old top-level packages) or ``after``."""

    name: str
    commit: str
    source: Path

    @property
    def top_level(self) -> bool:
        """The old layout (b119f4a): a top-level ``bridge`` package run from the tree."""
        return not (self.source / "src" / "taskcast").is_dir()

    def command(self, redis_url: str) -> list[str]:
        if self.top_level:
            return [sys.executable, "-m", "bridge", "serve", "--port", "0"]
        # A checkout of the current layout runs from a venv of its own (an editable
        # install maps its folders into the taskcast namespace); this tree, from ours.
        venv = self.source / ".venv" / "bin" / "python"
        python = str(venv) if self.name == "before" and venv.exists() else sys.executable
        return [
            python, "-m", "taskcast", "serve", "--port", "0",
            "--redis-url", redis_url, "--prefix", PREFIX,
        ]

    def environment(self, redis_url: str, extra: dict[str, str]) -> dict[str, str]:
        """The caller's environment minus any taskcast/Celery setting, plus ours."""
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("TASKCAST_", "CELERY_"))
        }
        env.pop("PYTHONPATH", None)
        env.update(TASKCAST_REDIS_URL=redis_url, TASKCAST_PREFIX=PREFIX, **extra)
        if self.top_level:
            env["PYTHONPATH"] = str(self.source)
        return env


class BridgeProcess:
    """A bridge subprocess: its port, the bytes it wrote to stderr, and a sure stop.

    stderr is drained by a thread (a full pipe would stall the bridge) that
    counts every byte, since log volume under attack is one of the figures.
    """

    def __init__(
        self, version: Version, redis_url: str, extra_env: dict[str, str], nofile: int
    ) -> None:
        self.version = version
        self.nofile = nofile
        self.stderr_bytes = 0
        self.problems: Counter[str] = Counter()  # ERROR/WARNING records by message
        self.tail: deque[str] = deque(maxlen=40)
        self.port = 0
        self._ready = threading.Event()
        soft_hard = (nofile, max(nofile, ORIGINAL_NOFILE[1]))
        self.process = subprocess.Popen(
            version.command(redis_url),
            cwd=version.source,
            env=version.environment(redis_url, extra_env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, soft_hard),
        )
        self.ps = psutil.Process(self.process.pid)
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._ready.wait(30) or not self.port:
            self.stop()
            raise RuntimeError(f"{version.name} bridge did not start:\n{''.join(self.tail)}")

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in iter(self.process.stderr.readline, b""):
            self.stderr_bytes += len(line)
            self.tail.append(line.decode(errors="replace"))
            if record := LOG_RECORD.match(line):
                message = (record.group(1) + b" " + record.group(2)).decode(errors="replace")
                message = SUPPRESSED.sub("(N similar reports suppressed)", message)
                if message[:160] in self.problems or len(self.problems) < 20:
                    self.problems[message[:160]] += 1
            if not self.port and (found := READY.search(line)):
                self.port = int(found.group(2))
                self._ready.set()
        self._ready.set()

    @property
    def url(self) -> str:
        return f"ws://{TARGET}:{self.port}/ws"

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        """SIGTERM its process group (started in its own session), SIGKILL after 5 s."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


@contextlib.contextmanager
def running_bridge(
    version: Version, redis_url: str, extra_env: dict[str, str] | None = None,
    nofile: int | None = None,
) -> Iterator[BridgeProcess]:
    """A fresh bridge per attack, so no attack inherits another's memory or connections."""
    bridge = BridgeProcess(version, redis_url, extra_env or {}, nofile or ORIGINAL_NOFILE[0])
    try:
        yield bridge
    finally:
        bridge.stop()


class RssSampler:
    """The bridge's RSS every 10 ms in a thread, so a short peak is not missed."""

    def __init__(self, bridge: BridgeProcess) -> None:
        self.bridge = bridge
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), self.bridge.rss()))
            except psutil.Error:
                return
            time.sleep(SAMPLE_INTERVAL)

    def window(self, start: float, end: float) -> list[int]:
        return [rss for stamp, rss in list(self.samples) if start <= stamp <= end]

    def peak(self, start: float, end: float) -> int:
        return max(self.window(start, end), default=0)

    def median(self, start: float, end: float) -> int:
        values = self.window(start, end)
        return int(statistics.median(values)) if values else 0


# -- helpers ---------------------------------------------------------------------------


def mib(value: float) -> float:
    return round(value / 2**20, 1)


def seed(redis_url: str) -> None:
    """The big operation (1000 log lines, ~230 KB of history) and a private-looking one."""
    client = redis.Redis.from_url(redis_url)
    store = EventStore(client, prefix=PREFIX)
    for _ in range(BIG_EVENTS):
        store.append(Event("log", BIG_OPERATION, log_data("info", BIG_LINE)))
    store.append(Event("log", "payroll-export", log_data("info", "exported 4,812 salaries")))
    client.close()


@dataclass
class HttpReply:
    """What a raw HTTP exchange got back: status (None: nothing), headers, body, time."""

    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    seconds: float = 0.0
    failure: str | None = None

    def describe(self) -> str:
        return str(self.status) if self.status is not None else f"no response ({self.failure})"


def http_exchange(
    port: int, request: bytes, timeout: float = 5.0, source: str = TARGET
) -> HttpReply:
    """Send ``request`` as is and read until the server closes (its replies say close).

    A raw socket, not an HTTP library, because the point is to see exactly what
    the bridge sends: a body after HEAD, or nothing at all for a POST.
    """
    start = time.monotonic()
    data = b""
    try:
        with socket.create_connection((TARGET, port), timeout, (source, 0)) as sock:
            sock.sendall(request)
            while chunk := sock.recv(65536):
                data += chunk
    except OSError as exc:
        if not data:
            return HttpReply(None, seconds=time.monotonic() - start, failure=type(exc).__name__)
    elapsed = time.monotonic() - start
    if not data:
        return HttpReply(None, seconds=elapsed, failure="closed without a byte")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return HttpReply(int(lines[0].split(" ")[1]), headers, body, elapsed)


def http_get(
    port: int, method: str, path: str, extra: str = "", host: str | None = None
) -> bytes:
    """A request head; ``host`` replaces the bridge's own ``Host`` (a rebound name, say)."""
    host = host or f"{TARGET}:{port}"
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


async def open_client(url: str, **kwargs: Any) -> ClientConnection:
    """A websockets client with no size limit, no compression and no keepalive pings."""
    options: dict[str, Any] = {
        "max_size": None, "compression": None, "ping_interval": None, "open_timeout": 10,
    }
    options.update(kwargs)
    return await connect(url, **options)


async def subscribe_reply_time(url: str, deadline: float) -> float | None:
    """Seconds from connecting until a normal client's subscribe reply, None past ``deadline``.

    This is what a real user notices during an attack: does the page load.
    """
    start = time.monotonic()
    sockets: list[ClientConnection] = []

    async def attempt() -> float:
        ws = await open_client(url, open_timeout=deadline)
        sockets.append(ws)
        await ws.send(orjson.dumps({
            "command": "subscribe", "operation_id": BIG_OPERATION, "request_id": "probe",
        }).decode())
        while True:
            frame = orjson.loads(await ws.recv(decode=False))
            if frame.get("request_id") == "probe":
                return time.monotonic() - start

    try:
        return await asyncio.wait_for(attempt(), deadline)
    except (asyncio.TimeoutError, OSError, ConnectionClosed, InvalidStatus):
        return None
    finally:
        # No closing handshake: it would wait behind the replayed history we do not read.
        for ws in sockets:
            ws.transport.abort()


# -- 1. memory after disconnect --------------------------------------------------------


async def hostile_subscriber(url: str, variant: str) -> dict[str, Any]:
    """Write 3,000 subscribes (and a close) without reading anything, then vanish.

    ``abort``: reset the connection as soon as the bytes are handed to the socket.
    ``pause``: stop reading (the bridge's replies pile up in its buffers), keep the
    socket open a few seconds, then reset it. ``pause-noclose``: the same without
    the close frame, so the bridge cannot tell from the stream that nobody listens.
    """
    send_close, pause = MEMORY_VARIANTS[variant]
    ws = await open_client(url)
    protocol, transport = ws.protocol, ws.transport
    for _ in range(MEMORY_FRAMES):
        protocol.send_text(SUBSCRIBE_BIG)
    if send_close:
        protocol.send_close()
    transport.write(b"".join(protocol.data_to_send()))
    if pause:
        transport.pause_reading()
        await asyncio.sleep(MEMORY_PAUSE)
    unsent = transport.get_write_buffer_size()
    transport.abort()
    return {"unsent_bytes": unsent, "vanished": time.monotonic()}


async def normal_clients(url: str, stop: asyncio.Event) -> list[float | None]:
    """A normal client subscribing once a second until ``stop``: each reply time or None."""
    replies: list[float | None] = []
    while not stop.is_set():
        replies.append(await subscribe_reply_time(url, PROBE_DEADLINE))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    return replies


async def memory_attack(bridge: BridgeProcess, variant: str) -> dict[str, Any]:
    """Peak and lingering RSS of the bridge after 4 clients flood subscribes and vanish,
    and how long it keeps working for them once they are gone."""
    await subscribe_reply_time(bridge.url, PROBE_DEADLINE)  # warm the subscribe path
    with RssSampler(bridge) as sampler:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        baseline = sampler.median(now - 1.0, now)
        started = time.monotonic()
        attackers = [
            asyncio.ensure_future(hostile_subscriber(bridge.url, variant))
            for _ in range(MEMORY_CLIENTS)
        ]
        stop_probing = asyncio.Event()
        probe = asyncio.ensure_future(normal_clients(bridge.url, stop_probing))
        outcomes = await asyncio.gather(*attackers)
        vanished = max(outcome["vanished"] for outcome in outcomes)
        mark_time, mark_cpu = time.monotonic(), bridge.cpu_seconds()
        cpu_at_vanish = mark_cpu
        idle_after: float | None = None
        at_10s: tuple[float, int] | None = None  # (CPU seconds since vanishing, RSS)
        while True:
            await asyncio.sleep(0.5)
            now, cpu = time.monotonic(), bridge.cpu_seconds()
            if idle_after is None and cpu - mark_cpu < IDLE_CPU_SHARE * (now - mark_time):
                idle_after = mark_time - vanished
            mark_time, mark_cpu = now, cpu
            if at_10s is None and now >= vanished + MEMORY_AFTER:
                at_10s = (cpu - cpu_at_vanish, sampler.median(now - 0.2, now))
            if at_10s is not None and (idle_after is not None or now >= vanished + BUSY_LIMIT):
                break
        assert at_10s is not None
        ended = time.monotonic()
        peak = sampler.peak(started, ended)
        final = sampler.median(ended - 0.2, ended)
    stop_probing.set()
    replies = await probe
    answered = [reply for reply in replies if reply is not None]
    return {
        "rss_baseline_mib": mib(baseline),
        "rss_peak_mib": mib(peak),
        "rss_after_10s_mib": mib(at_10s[1]),
        "rss_growth_after_10s_mib": mib(at_10s[1] - baseline),
        "cpu_seconds_10s_after_vanish": round(at_10s[0], 2),
        "busy_seconds_after_vanish": (
            round(idle_after, 1) if idle_after is not None else f"> {BUSY_LIMIT:.0f}"
        ),
        "rss_at_end_mib": mib(final),
        "seconds_watched_after_vanish": round(ended - vanished, 1),
        "normal_client_replies": f"{len(answered)} / {len(replies)}",
        "normal_client_worst_reply_s": round(max(answered), 3) if answered else None,
        "attack_bytes_never_sent": sum(outcome["unsent_bytes"] for outcome in outcomes),
    }


# -- 2. connection flood ---------------------------------------------------------------


def handshake(port: int, path: str = "/ws", extra: str = "", host: str | None = None) -> bytes:
    """A WebSocket upgrade request by hand; ``extra`` header lines (``Origin: ...\\r\\n``)."""
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    return http_get(port, "GET", path, (
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}"
    ), host)


class HealthProbe:
    """GET /healthz every ``interval`` s from another loopback address, in a thread.

    A thread with blocking sockets, so the latency measured is the bridge's and
    not this process's event loop, which is busy opening connections.
    """

    def __init__(
        self, port: int, interval: float = 0.25, timeout: float = 2.0,
        source: str = PROBE_SOURCE,
    ) -> None:
        self.port = port
        self.interval = interval
        self.timeout = timeout
        self.source = source
        self.replies: list[HttpReply] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        request = http_get(self.port, "GET", "/healthz")
        while not self._stop.is_set():
            self.replies.append(http_exchange(self.port, request, self.timeout, self.source))
            self._stop.wait(self.interval)

    def summary(self) -> dict[str, Any]:
        good = [reply.seconds * 1000 for reply in self.replies if reply.status == 200]
        return {
            "healthz_ok": len(good),
            "healthz_probes": len(self.replies),
            "healthz_p50_ms": round(statistics.median(good), 1) if good else None,
            "healthz_max_ms": round(max(good), 1) if good else None,
            "healthz_failures": dict(Counter(
                reply.describe() for reply in self.replies if reply.status != 200
            )),
        }


async def open_idle(port: int, request: bytes) -> tuple[str, asyncio.StreamWriter | None]:
    """One WebSocket handshake by hand; the connection is kept (idle) when it succeeds."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(TARGET, port), FLOOD_TIMEOUT
        )
    except asyncio.TimeoutError:
        return "connect timeout", None
    except OSError as exc:
        return f"connect {type(exc).__name__}", None
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), FLOOD_TIMEOUT)
    except asyncio.TimeoutError:
        writer.transport.abort()
        return "handshake timeout", None
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        writer.transport.abort()
        return f"handshake {type(exc).__name__}", None
    status = head.split(b" ", 2)[1].decode()
    if status == "101":
        return "101", writer
    writer.transport.abort()
    return status, None


async def connection_flood(bridge: BridgeProcess, seconds: float) -> dict[str, Any]:
    """As many idle connections as one address can open in ``seconds``, up to 20,000."""
    cap = min(FLOOD_MAX, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - FD_HEADROOM)
    request = handshake(bridge.port)
    kept: list[asyncio.StreamWriter] = []
    outcomes: Counter[str] = Counter()
    attempts = in_flight = 0
    stderr_before = bridge.stderr_bytes

    async def worker(deadline: float) -> None:
        nonlocal attempts, in_flight
        while time.monotonic() < deadline and len(kept) + in_flight < cap:
            attempts += 1
            in_flight += 1
            outcome, writer = await open_idle(bridge.port, request)
            in_flight -= 1
            outcomes[outcome] += 1
            if writer is not None:
                kept.append(writer)
            if "EMFILE" in outcome or outcome == "connect OSError":
                return

    with RssSampler(bridge) as sampler, HealthProbe(bridge.port) as health:
        started = time.monotonic()
        deadline = started + seconds
        await asyncio.gather(*(worker(deadline) for _ in range(FLOOD_WORKERS)))
        flood_seconds = time.monotonic() - started
        await asyncio.sleep(FLOOD_HOLD)
        peak = sampler.peak(started, time.monotonic())
    for writer in kept:
        writer.transport.abort()
    await asyncio.sleep(1.0)
    return {
        "bridge_fd_limit": bridge.nofile,
        "attempts": attempts,
        "accepted": outcomes.pop("101", 0),
        "refused": {k: v for k, v in outcomes.items() if k.isdigit()},
        "failed": {k: v for k, v in outcomes.items() if not k.isdigit()},
        "flood_seconds": round(flood_seconds, 1),
        "client_cap": cap,
        "rss_peak_mib": mib(peak),
        "stderr_bytes": bridge.stderr_bytes - stderr_before,
        "stderr_problems": dict(bridge.problems.most_common(3)),
        **health.summary(),
    }


# -- 3. amplification ------------------------------------------------------------------


async def amplification(bridge: BridgeProcess, seconds: float) -> dict[str, Any]:
    """One connection sends subscribe for the big operation as fast as it may, reading all."""
    sent = received = frames = rate_limited = subscribed = 0
    close: str | None = None
    ws = await open_client(bridge.url)
    deadline = time.monotonic() + seconds
    command = SUBSCRIBE_BIG.decode()

    async def send() -> None:
        nonlocal sent
        while True:
            await ws.send(command)
            sent += 1

    async def receive() -> None:
        nonlocal received, frames, rate_limited, subscribed
        while True:
            frame = await ws.recv(decode=False)
            received += len(frame)
            frames += 1
            if b'"rate_limited"' in frame:
                rate_limited += 1
            elif b'"status":"subscribed"' in frame:
                subscribed += 1

    tasks = [asyncio.ensure_future(send()), asyncio.ensure_future(receive())]
    done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
    for task in tasks:
        task.cancel()
    for task in done:
        exc = task.exception()
        if isinstance(exc, ConnectionClosed):
            close = f"{exc.rcvd.code if exc.rcvd else 'no close frame'}"
    with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
        await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = seconds - max(0.0, deadline - time.monotonic())
    ws.transport.abort()
    return {
        "commands_sent": sent,
        "replies_subscribed": subscribed,
        "replies_rate_limited": rate_limited,
        "frames_received": frames,
        "mib_received": mib(received),
        "mib_per_second": round(received / 2**20 / elapsed, 1),
        "kib_per_subscribe_served": round(received / 1024 / subscribed) if subscribed else None,
        "closed_by_bridge": close,
        "seconds": round(elapsed, 1),
    }


# -- 4. unbounded events ---------------------------------------------------------------


def store_huge(redis_url: str, operation_id: str, through_producer: bool) -> int:
    """A 20 MB log line, through the current producer (capped) or a raw append (the old
    producer's path); returns the size of the event as stored."""
    event = Event("log", operation_id, log_data("info", "L" * HUGE_MESSAGE_BYTES))
    if through_producer:
        producer = Producer(load_settings({}, redis_url=redis_url, prefix=PREFIX))
        try:
            producer.emit(event)
        finally:
            producer.close()
    client = redis.Redis.from_url(redis_url)
    store = EventStore(client, prefix=PREFIX)
    try:
        if not through_producer:
            store.append(event)
        return max((len(raw) for _, raw in store.history(operation_id)), default=0)
    finally:
        client.close()


async def received_frame(url: str, operation_id: str) -> dict[str, Any]:
    """Subscribe to ``operation_id`` and measure the frame carrying its log event."""
    start = time.monotonic()
    ws = await open_client(url)
    try:
        await ws.send(orjson.dumps({"command": "subscribe", "operation_id": operation_id}).decode())
        while True:
            frame = await asyncio.wait_for(ws.recv(decode=False), 30)
            if b'"event_type":"log"' in frame[:200]:
                return {
                    "frame_bytes": len(frame),
                    "truncated": bool(orjson.loads(frame)["data"].get("truncated")),
                    "seconds": round(time.monotonic() - start, 2),
                }
    finally:
        ws.transport.abort()


async def huge_event(
    bridge: BridgeProcess, redis_url: str, operation_id: str, through_producer: bool
) -> dict[str, Any]:
    stored = await asyncio.to_thread(store_huge, redis_url, operation_id, through_producer)
    with RssSampler(bridge) as sampler:
        started = time.monotonic()
        frame = await received_frame(bridge.url, operation_id)
        peak = sampler.peak(started, time.monotonic())
    return {"stored_bytes": stored, "rss_peak_mib": mib(peak), **frame}


# -- 5. access control -----------------------------------------------------------------


def summarize_reply(frame: dict[str, Any]) -> str:
    """``status`` or ``error code``, plus how many operations a list revealed."""
    if frame.get("status") == "error":
        return f"error {frame.get('code')}"
    if "operations" in frame:
        return f"{len(frame['operations'])} operations"
    return str(frame.get("status"))


async def access_attack(bridge: BridgeProcess) -> dict[str, Any]:
    """A page on another origin, holding no token, asks for everything."""
    result: dict[str, Any] = {}
    try:
        ws = await open_client(bridge.url, origin=EVIL_ORIGIN)
    except InvalidStatus as exc:
        result["ws_handshake"] = exc.response.status_code
        ws = None
    if ws is not None:
        result["ws_handshake"] = 101
        commands = {
            "subscribe_all": {"command": "subscribe_all"},
            "list_operations": {"command": "list_operations"},
            "subscribe": {"command": "subscribe", "operation_id": "payroll-export"},
        }
        opened = time.monotonic()
        for request_id, body in commands.items():
            await ws.send(orjson.dumps({**body, "request_id": request_id}).decode())
        replies: dict[str, str] = {}
        received_events = 0
        close = "still open"
        try:
            while time.monotonic() - opened < ACCESS_CLOSE_WAIT:
                left = ACCESS_CLOSE_WAIT - (time.monotonic() - opened)
                frame = orjson.loads(await asyncio.wait_for(ws.recv(decode=False), left))
                if frame.get("request_id") in commands:
                    replies[frame["request_id"]] = summarize_reply(frame)
                elif "event_type" in frame and frame.get("operation_id") != "system":
                    received_events += 1
        except asyncio.TimeoutError:
            close = f"still open after {ACCESS_CLOSE_WAIT:.0f} s"
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else "none"
            close = f"closed {code} after {time.monotonic() - opened:.1f} s"
        ws.transport.abort()
        result.update({f"ws_{name}": replies.get(name, "no reply") for name in commands})
        result["ws_events_received"] = received_events
        result["ws_connection"] = close
    origin = f"Origin: {EVIL_ORIGIN}\r\n"
    listing = http_exchange(bridge.port, http_get(bridge.port, "GET", "/api/operations", origin))
    detail = http_exchange(
        bridge.port, http_get(bridge.port, "GET", "/api/operations/payroll-export", origin)
    )
    operations = None
    if listing.status == 200:
        operations = len(orjson.loads(listing.body).get("operations", []))
    result.update(
        http_operations=listing.describe(),
        http_operations_listed=operations,
        http_operation_detail=detail.describe(),
        http_allow_origin=listing.headers.get("access-control-allow-origin"),
    )
    return result


# -- 6. HTTP hygiene -------------------------------------------------------------------


def http_hygiene(port: int) -> dict[str, Any]:
    """HEAD's body, a POST with a body, and what the Server header tells a scanner."""
    head = http_exchange(port, http_get(port, "HEAD", "/healthz"))
    body = b'{"operation_id":"x"}'
    post = http_exchange(port, (
        f"POST /api/operations HTTP/1.1\r\nHost: {TARGET}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body)
    chunked = http_exchange(port, (
        f"POST /api/operations HTTP/1.1\r\nHost: {TARGET}:{port}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    ).encode())
    get = http_exchange(port, http_get(port, "GET", "/healthz"))
    return {
        "head_status": head.describe(),
        "head_body_bytes": len(head.body),
        "post_with_body": post.describe(),
        "post_chunked": chunked.describe(),
        "server_header": get.headers.get("server", "(none)"),
    }


# -- running ---------------------------------------------------------------------------

# -- 7. replies nobody reads; 8. unfinished request heads (issue 18) -------------------


REPLY_CLIENTS = 100
REPLY_PINGS = 20_000
REPLY_HOLD = 10.0  # seconds the clients stay connected, reading nothing
REPLY_AFTER = 8.0  # seconds after they left when RSS is read again
SMALL_RCVBUF = 4096
HEAD_SOURCES = [f"127.0.0.{n}" for n in range(3, 7)]
HEADS_PER_SOURCE = 600
HEADS_SECONDS = 20.0
HALF_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"


async def unread_replies(bridge: BridgeProcess) -> dict[str, Any]:
    """100 token-less connections each write 20,000 pings and read nothing (4 KiB buffers)."""
    ping = orjson.dumps({"command": "ping"})
    clients = []
    for _ in range(REPLY_CLIENTS):
        ws = await open_client(bridge.url)
        sock = ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RCVBUF)
        ws.transport.pause_reading()
        clients.append(ws)
    with RssSampler(bridge) as sampler, HealthProbe(bridge.port) as health:
        started = time.monotonic()
        baseline = bridge.rss()
        for ws in clients:
            for _ in range(REPLY_PINGS):
                ws.protocol.send_text(ping)
            ws.transport.write(b"".join(ws.protocol.data_to_send()))
        await asyncio.sleep(REPLY_HOLD)
        for ws in clients:
            ws.transport.abort()
        left = time.monotonic()
        await asyncio.sleep(REPLY_AFTER)
        peak = sampler.peak(started, time.monotonic())
        probes = health.summary()
    return {
        "rss_baseline_mib": mib(baseline),
        "rss_peak_mib": mib(peak),
        "rss_after_mib": mib(bridge.rss()),
        "cpu_seconds": round(bridge.cpu_seconds(), 1),
        "attack_seconds": round(left - started, 1),
        **probes,
    }


async def half_heads(bridge: BridgeProcess, sources: list[str], per_source: int) -> dict[str, Any]:
    """Sockets that send half a request head and stop, re-opened whenever the bridge drops
    one, from several loopback addresses, while /healthz is probed from another."""
    opened = dropped = 0
    deadline = time.monotonic() + HEADS_SECONDS

    async def hold(source: str) -> None:
        nonlocal opened, dropped
        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.open_connection(
                    TARGET, bridge.port, local_addr=(source, 0)
                )
            except OSError:
                await asyncio.sleep(0.05)
                continue
            opened += 1
            writer.write(HALF_HEAD)
            with contextlib.suppress(asyncio.TimeoutError, OSError):
                await asyncio.wait_for(reader.read(), deadline - time.monotonic())
                dropped += 1
            writer.transport.abort()

    with HealthProbe(bridge.port) as health:
        await asyncio.gather(*(hold(source) for source in sources for _ in range(per_source)))
        probes = health.summary()
    return {"sockets": len(sources) * per_source, "opened": opened, "dropped": dropped, **probes}


async def run_replies(version: Version, redis_url: str) -> dict[str, Any]:
    with running_bridge(version, redis_url) as bridge:
        return await unread_replies(bridge)


async def run_heads(version: Version, redis_url: str) -> dict[str, Any]:
    """Four addresses at the machine's fd limit; one address at the common 1024."""
    with running_bridge(version, redis_url) as bridge:
        four = await half_heads(bridge, HEAD_SOURCES, HEADS_PER_SOURCE)
    with running_bridge(version, redis_url, nofile=COMMON_FD_LIMIT) as bridge:
        one = await half_heads(bridge, HEAD_SOURCES[:1], 110)
    return {"four": four, "fd1024": one}


Attack = Callable[[Version, str], Awaitable[dict[str, Any]]]


async def run_memory(version: Version, redis_url: str) -> dict[str, Any]:
    results = {}
    for variant in MEMORY_VARIANTS:
        with running_bridge(version, redis_url) as bridge:
            results[variant] = await memory_attack(bridge, variant)
    worst = max(results, key=lambda name: results[name]["rss_peak_mib"])
    return {**results, "worst": worst}


async def run_flood(version: Version, redis_url: str) -> dict[str, Any]:
    """At the common 1024 descriptors and at this machine's hard limit."""
    results = {}
    for limit in sorted({COMMON_FD_LIMIT, ORIGINAL_NOFILE[1]}):
        with running_bridge(version, redis_url, nofile=limit) as bridge:
            results[f"fd{limit}"] = await connection_flood(bridge, FLOOD_SECONDS)
    return results


async def run_amplification(version: Version, redis_url: str) -> dict[str, Any]:
    with running_bridge(version, redis_url) as bridge:
        return await amplification(bridge, AMPLIFY_SECONDS)


async def run_events(version: Version, redis_url: str) -> dict[str, Any]:
    with running_bridge(version, redis_url) as bridge:
        if version.name == "before":
            return {"raw": await huge_event(bridge, redis_url, "huge-raw", False)}
        return {
            "producer": await huge_event(bridge, redis_url, "huge", True),
            "raw": await huge_event(bridge, redis_url, "huge-raw", False),
        }


async def run_access(version: Version, redis_url: str) -> dict[str, Any]:
    key = {"TASKCAST_AUTH_SECRET": secrets.token_hex(32)} if version.name == "after" else {}
    with running_bridge(version, redis_url, key) as bridge:
        return await access_attack(bridge)


async def run_http(version: Version, redis_url: str) -> dict[str, Any]:
    with running_bridge(version, redis_url) as bridge:
        return await asyncio.to_thread(http_hygiene, bridge.port)


ATTACKS: dict[str, tuple[Attack, float]] = {  # name -> (run, time limit in seconds)
    "memory": (run_memory, 180),
    "flood": (run_flood, 150),
    "amplification": (run_amplification, 60),
    "events": (run_events, 90),
    "access": (run_access, 60),
    "http": (run_http, 60),
    "replies": (run_replies, 120),
    "heads": (run_heads, 120),
}


async def run_version(version: Version, only: list[str], console: Console) -> dict[str, Any]:
    """Every attack on fresh bridges over one seeded private Redis; failures are recorded."""
    results: dict[str, Any] = {"commit": version.commit}
    with EmbeddedRedis() as server:
        seed(server.url)
        for name in only:
            run, limit = ATTACKS[name]
            console.log(f"{version.name}: {name}")
            started = time.monotonic()
            try:
                results[name] = await asyncio.wait_for(run(version, server.url), limit)
            except Exception as exc:  # one broken attack must not hide the others
                results[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            results[name]["wall_seconds"] = round(time.monotonic() - started, 1)
    return results


# -- report ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One line of the table: where the figure is in the results, and what it means."""

    attack: str
    figure: str
    path: tuple[str, ...]
    meaning: str


ROWS = [
    *(
        row
        for variant, how in (
            ("abort", "4 clients x 3,000 subscribes + close, then reset at once"),
            ("pause", "the same, but the clients stop reading for 3 s before the reset"),
            ("pause-noclose", "as pause, without the close frame"),
        )
        for row in (
            Row(f"1 memory ({variant})", "RSS baseline / peak / +10 s, MiB",
                ("memory", variant), how),
            Row(f"1 memory ({variant})", "normal clients answered within 5 s",
                ("memory", variant, "normal_client_replies"),
                "one subscribe a second from the attack until the bridge is idle"),
            Row(f"1 memory ({variant})", "normal client's slowest reply, s",
                ("memory", variant, "normal_client_worst_reply_s"), ""),
            Row(f"1 memory ({variant})", "bridge CPU in the 10 s after they left, s",
                ("memory", variant, "cpu_seconds_10s_after_vanish"),
                "work for clients that are gone"),
            Row(f"1 memory ({variant})", "busy after they left, s",
                ("memory", variant, "busy_seconds_after_vanish"),
                "until its CPU falls under 5% (watched 30 s at most)"),
            Row(f"1 memory ({variant})", "RSS when idle (or at 30 s), MiB",
                ("memory", variant, "rss_at_end_mib"), "what the attack leaves behind"),
        )
    ),
    Row("2 flood", "accepted connections", ("flood", "*", "accepted"),
        "idle WebSockets one address holds in 20 s (this side stops at its fd limit - 300)"),
    Row("2 flood", "refused handshakes", ("flood", "*", "refused"), "HTTP status: count"),
    Row("2 flood", "failed attempts", ("flood", "*", "failed"), "no HTTP answer at all"),
    Row("2 flood", "/healthz ok / probes", ("flood", "*"),
        "GET every 250 ms from 127.0.0.2, 2 s timeout"),
    Row("2 flood", "/healthz p50 / max, ms", ("flood", "*"), "of the answers that came"),
    Row("2 flood", "bridge stderr, bytes", ("flood", "*", "stderr_bytes"),
        "log volume the flood caused"),
    Row("2 flood", "what it logged", ("flood", "*", "stderr_problems"),
        "ERROR/WARNING records: count"),
    Row("2 flood", "bridge RSS peak, MiB", ("flood", "*", "rss_peak_mib"), ""),
    Row("3 amplification", "subscribes written", ("amplification", "commands_sent"),
        "one connection, 20 s, reading everything (most sit in socket buffers)"),
    Row("3 amplification", "replies subscribed / rate_limited", ("amplification",),
        "commands the bridge served vs refused"),
    Row("3 amplification", "received, MiB", ("amplification", "mib_received"),
        "history the bridge read from Redis and sent"),
    Row("3 amplification", "received, MiB/s", ("amplification", "mib_per_second"),
        "before: bounded by how fast this client reads"),
    Row("4 huge event", "stored event, bytes", ("events",),
        "a 20 MB log line: before raw append (the old producer), after the producer"),
    Row("4 huge event", "frame to a subscriber, bytes (time)", ("events",), ""),
    Row("4 huge event", "raw append (no producer): frame, bytes", ("events", "raw",
        "frame_bytes"), "a writer that bypasses the producer; the bridge does not cap"),
    Row("5 access", "WS handshake, Origin evil.example", ("access", "ws_handshake"),
        "no token; after: bridge keyed (TASKCAST_AUTH_SECRET)"),
    Row("5 access", "subscribe_all", ("access", "ws_subscribe_all"), ""),
    Row("5 access", "list_operations", ("access", "ws_list_operations"), ""),
    Row("5 access", "subscribe payroll-export", ("access", "ws_subscribe"), ""),
    Row("5 access", "the token-less socket", ("access", "ws_connection"), ""),
    Row("5 access", "GET /api/operations", ("access", "http_operations"), "no token"),
    Row("5 access", "GET /api/operations/payroll-export", ("access", "http_operation_detail"),
        "no token"),
    Row("6 http", "HEAD /healthz: status, body bytes", ("http",), "HEAD must have no body"),
    Row("6 http", "POST /api/operations with a body", ("http", "post_with_body"), ""),
    Row("6 http", "POST chunked", ("http", "post_chunked"), ""),
    Row("6 http", "Server header", ("http", "server_header"), "what a scanner learns"),
    Row("7 unread replies", "RSS baseline / peak / 8 s after, MiB", ("replies",),
        "100 token-less clients x 20,000 pings, reading nothing (4 KiB receive buffers)"),
    Row("7 unread replies", "/healthz ok / probes", ("replies",), "meanwhile"),
    Row("7 unread replies", "bridge CPU, s", ("replies", "cpu_seconds"), "whole run"),
    Row("8 half heads", "/healthz ok / probes", ("heads",),
        "four: 600 sockets from each of 4 addresses; fd1024: 110 from one, fd limit 1024"),
]


def lookup(results: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = results
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "none"
    return str(value)


def cell(row: Row, results: dict[str, Any] | None) -> str:
    """The figure of ``row`` for one version (special rows combine several values)."""
    if results is None:
        return "not run"
    if row.path[0] not in results:
        return "not run"
    top = results.get(row.path[0])
    if isinstance(top, dict) and "error" in top:
        return f"error: {top['error'][:60]}"
    if row.path[0] == "flood":
        return flood_cell(row, top or {})
    if row.attack.startswith("7") and row.figure.startswith("RSS"):
        m = top or {}
        figures = ("rss_baseline_mib", "rss_peak_mib", "rss_after_mib")
        return " / ".join(fmt(m.get(name)) for name in figures)
    if row.figure.startswith("RSS baseline"):
        m = lookup(results, row.path) or {}
        figures = ("rss_baseline_mib", "rss_peak_mib", "rss_after_10s_mib")
        return " / ".join(fmt(m.get(name)) for name in figures)
    if row.figure.startswith("replies subscribed"):
        a = lookup(results, row.path) or {}
        return f"{a.get('replies_subscribed')} / {a.get('replies_rate_limited')}"
    if row.figure.startswith("stored event"):
        events = top or {}
        return fmt(lookup(events, ("producer", "stored_bytes")) or
                   lookup(events, ("raw", "stored_bytes")))
    if row.figure.startswith("frame to a subscriber"):
        events = top or {}
        pick = events.get("producer") or events.get("raw") or {}
        return f"{fmt(pick.get('frame_bytes'))} ({pick.get('seconds')} s)"
    if row.figure.startswith("/healthz ok"):
        runs = {"": top} if row.attack.startswith("7") else (top or {})
        return "\n".join(
            f"{name + ': ' if name else ''}{run.get('healthz_ok')} / {run.get('healthz_probes')}"
            for name, run in runs.items()
            if isinstance(run, dict)
        )
    if row.figure.startswith("HEAD"):
        h = top or {}
        return f"{h.get('head_status')}, {h.get('head_body_bytes')}"
    return fmt(lookup(results, row.path))


def flood_cell(row: Row, floods: dict[str, Any]) -> str:
    """One line per fd limit the bridge ran with."""
    lines = []
    for limit, flood in floods.items():
        if not isinstance(flood, dict):
            continue
        if row.figure.startswith("/healthz ok"):
            value = f"{flood.get('healthz_ok')} / {flood.get('healthz_probes')}"
        elif row.figure.startswith("/healthz p50"):
            value = f"{flood.get('healthz_p50_ms')} / {flood.get('healthz_max_ms')}"
        else:
            value = fmt(flood.get(row.path[-1]))
        lines.append(f"{limit}: {value}")
    return "\n".join(lines) or "-"


def report(
    console: Console, machine: dict[str, Any], versions: dict[str, dict[str, Any]]
) -> list[dict[str, str]]:
    """Print the before/after table; returns its rows for the JSON."""
    table = Table(title="taskcast bridge under attack", show_lines=True)
    for column in ("attack", "figure", "before", "after", "meaning"):
        table.add_column(column, overflow="fold")
    rows = []
    for row in ROWS:
        before, after = cell(row, versions.get("before")), cell(row, versions.get("after"))
        if before == after == "not run":
            continue
        table.add_row(row.attack, row.figure, before, after, row.meaning)
        rows.append({"attack": row.attack, "figure": row.figure, "before": before,
                     "after": after, "meaning": row.meaning})
    console.print(table)
    console.print(
        f"machine: {machine['cpu']}, {machine['cores']} cores "
        f"({machine['physical_cores']} physical), {machine['memory_gib']} GiB, "
        f"load {machine['load_average_at_start']} at start, "
        f"{machine['load_average_at_end']} at end; Python {machine['python']}, "
        f"websockets {machine['websockets']}; {machine['date']}"
    )
    console.print("flood rows: 'fdN:' is the bridge's RLIMIT_NOFILE for that run")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.attacks", description=__doc__)
    parser.add_argument("--before", type=Path, help=f"worktree of {BEFORE_COMMIT}")
    parser.add_argument("--only", nargs="+", choices=list(ATTACKS), default=list(ATTACKS))
    parser.add_argument("--json", action="store_true", help=f"also write {RESULTS}")
    args = parser.parse_args(argv)
    resource.setrlimit(resource.RLIMIT_NOFILE, (ORIGINAL_NOFILE[1], ORIGINAL_NOFILE[1]))
    console = Console(width=max(150, Console().width))
    machine = machine_info()
    versions: dict[str, Version] = {}
    if args.before is not None:
        if not (args.before / "bridge" / "server.py").is_file():
            parser.error(f"{args.before} is not a taskcast worktree")
        versions["before"] = Version("before", git_head(args.before), args.before.resolve())
    versions["after"] = Version("after", git_head(ROOT), ROOT)
    results = {
        name: asyncio.run(run_version(version, args.only, console))
        for name, version in versions.items()
    }
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    rows = report(console, machine, results)
    if args.json:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        document = {"command": " ".join(["python3 -m bench.attacks", *(argv or sys.argv[1:])]),
                    "machine": machine, "results": results, "table": rows}
        RESULTS.write_text(json.dumps(document, indent=2, default=str) + "\n")
        console.print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
