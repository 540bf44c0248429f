"""Hostile clients against a real ``taskcast serve`` process: they can get themselves closed,
never grow the bridge or starve other clients."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import orjson
import psutil
import pytest
from bridge_helpers import BridgeProcess, WsClient, eventually, http_get, running_bridge
from helpers import worker_env
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from taskcast.events import Event, log_data
from taskcast.store import EventStore
from taskcast.worker_config import Settings

MB = 1 << 20


@pytest.fixture
def bridge_process(task_settings: Settings, prefix: str) -> Iterator[BridgeProcess]:
    bridge = BridgeProcess("--port", "0", env=worker_env(replace(task_settings, prefix=prefix)))
    bridge.wait_listening()
    yield bridge
    bridge.kill()


class PeakRss:
    """Samples a process's resident memory in a thread; ``peak`` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def now(self) -> int:
        return self.process.memory_info().rss

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def full_history(store: EventStore, operation_id: str, events: int = 1000) -> None:
    for i in range(events):
        store.append(Event("log", operation_id, log_data("info", f"line {i} " + "x" * 200)))


async def subscribe_flood_then_vanish(url: str, operation_id: str, commands: int) -> None:
    """Write ``commands`` subscribes for a big history and a close frame into the socket at
    once (no waiting on the bridge), read nothing, and drop the connection."""
    ws = await connect(url, max_size=None)
    frame = orjson.dumps({"command": "subscribe", "operation_id": operation_id})
    for _ in range(commands):
        ws.protocol.send_text(frame)
    ws.protocol.send_close()
    ws.transport.pause_reading()
    ws.transport.write(b"".join(ws.protocol.data_to_send()))
    await asyncio.sleep(3)
    ws.transport.abort()


async def test_a_client_that_floods_subscribes_and_vanishes_leaves_nothing_behind(
    bridge_process: BridgeProcess, store: EventStore
) -> None:
    full_history(store, "big")  # ~230 KB of history per subscribe
    pid = bridge_process.process.pid
    with PeakRss(pid) as rss:
        baseline = rss.now()
        await asyncio.gather(
            *(subscribe_flood_then_vanish(bridge_process.url, "big", 3000) for _ in range(4))
        )
        # The bridge must still serve a normal client promptly, then settle.
        client = await WsClient.open(bridge_process.url)
        reply = await client.request("subscribe", operation_id="big", timeout=10)
        assert reply["status"] == "subscribed"
        await client.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and rss.now() - baseline > 20 * MB:
            await asyncio.sleep(0.1)
    grown, kept = rss.peak - baseline, rss.now() - baseline
    assert grown < 50 * MB, f"peak RSS grew by {grown / MB:.0f} MB"
    assert kept < 20 * MB, f"RSS kept {kept / MB:.0f} MB after the clients left"
    status, _, _ = http_get(f"http://127.0.0.1:{bridge_process.port}/healthz")
    assert status == 200


async def test_commands_beyond_the_rate_get_one_refusal_a_second_and_the_connection_lives(
    redis_url: str, prefix: str
) -> None:
    async with running_bridge(redis_url, prefix, command_rate=5, command_burst=10) as bridge:
        client = await WsClient.open(bridge.url)
        for n in range(30):
            await client.send({"command": "ping", "request_id": f"flood-{n:02}"})
        await client.wait_for(lambda f: f.get("code") == "rate_limited")

        async def pong_again() -> bool:
            try:  # a ping refused within a second of the last refusal gets no reply
                reply = await client.request("ping", timeout=0.3)
            except AssertionError:
                return False
            return reply.get("status") == "pong"

        await eventually(pong_again, timeout=5)
        replies = [f for f in client.frames if str(f.get("request_id")).startswith("flood-")]
        statuses = [reply.get("code", reply.get("status")) for reply in replies]
        assert statuses[:10] == ["pong"] * 10  # the burst
        assert statuses[10:] == ["rate_limited"]  # the first refused; the others dropped
        ids = [reply["request_id"] for reply in replies]
        assert ids == sorted(ids), "replies keep the commands' order: it shows what was dropped"
        await client.close()


async def test_a_client_flooding_past_the_rate_without_reading_is_closed_and_costs_little(
    redis_url: str, prefix: str
) -> None:
    """Finding 1 of issue 18: unread pings (no token needed) grew the bridge by 2 GB."""
    async with running_bridge(redis_url, prefix, send_buffer_bytes=64 * 1024) as bridge:
        flooders = [await connect(bridge.url) for _ in range(20)]
        ping = orjson.dumps({"command": "ping", "request_id": 1}).decode()
        for ws in flooders:
            ws.transport.pause_reading()
        peak = 0
        for _ in range(20):
            for ws in flooders:
                for _ in range(100):
                    ws.protocol.send_text(ping.encode())
                ws.transport.write(b"".join(ws.protocol.data_to_send()))
            await asyncio.sleep(0)
            peak = max(peak, bridge.hub.buffered_bytes)
        await eventually(lambda: not bridge.hub.connections, timeout=15)
        assert peak <= 20 * (64 * 1024 + 4096), f"the bridge held {peak} bytes for them"
        assert bridge.hub.buffered_bytes == 0
        for ws in flooders:
            ws.transport.resume_reading()
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 1008
        status, _, _ = await asyncio.to_thread(http_get, f"http://127.0.0.1:{bridge.port}/healthz")
        assert status == 200


async def open_from(url: str, source: str) -> ClientConnection:
    return await connect(url, local_addr=(source, 0))


async def test_connection_caps_refuse_politely_and_health_still_answers(
    redis_url: str, prefix: str
) -> None:
    async with running_bridge(
        redis_url, prefix, max_connections=6, max_connections_per_ip=4
    ) as bridge:
        held = [await open_from(bridge.url, "127.0.0.1") for _ in range(4)]
        with pytest.raises(InvalidStatus) as per_address:
            await open_from(bridge.url, "127.0.0.1")
        assert per_address.value.response.status_code == 429
        held += [await open_from(bridge.url, "127.0.0.2") for _ in range(2)]
        with pytest.raises(InvalidStatus) as total:
            await open_from(bridge.url, "127.0.0.3")
        assert total.value.response.status_code == 503
        status, _, _ = await asyncio.to_thread(http_get, f"http://127.0.0.1:{bridge.port}/healthz")
        assert status == 200
        await held.pop().close()

        async def admitted() -> bool:
            try:
                held.append(await open_from(bridge.url, "127.0.0.3"))
            except InvalidStatus:
                return False
            return True

        await eventually(admitted, timeout=5)
        for ws in held:
            await ws.close()


async def test_a_client_that_never_reads_its_replies_is_closed_as_a_slow_consumer(
    redis_url: str, prefix: str, store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("taskcast.bridge.server.SLOW_READER_GRACE", 1.0)
    full_history(store, "big")
    async with running_bridge(redis_url, prefix) as bridge:
        ws = await connect(bridge.url, max_size=None)
        ws.transport.pause_reading()
        frame = orjson.dumps({"command": "subscribe", "operation_id": "big"}).decode()
        for _ in range(100):  # 23 MB owed: more than the socket buffers and the budget
            await ws.send(frame)
        await eventually(lambda: not bridge.hub.connections, timeout=15)
        assert bridge.hub.stats.slow_consumer_disconnects == 1
        ws.transport.resume_reading()  # reading again, the client learns why it was dropped
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 4008


async def http_status(port: int, source: str, path: str = "/healthz") -> int | None:
    """One HTTP request from ``source``; its status, or None without an answer in 1 s."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 1
        )
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), 1)
        writer.close()
    except (OSError, asyncio.TimeoutError):
        return None
    return int(line.split()[1]) if line else None


async def half_head(port: int, source: str) -> asyncio.StreamWriter:
    _, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and nothing more
    return writer


async def test_half_open_request_heads_never_lock_out_health_probes(
    redis_url: str, prefix: str
) -> None:
    """Finding 2 of issue 18: unfinished heads from four addresses under the per-address
    cap took the global head cap, and newcomers (the liveness probe) were refused."""
    async with running_bridge(redis_url, prefix, max_connections=160) as bridge:
        heads = bridge.caps.heads
        attackers = [f"127.0.0.{n}" for n in range(2, 6)]
        held = [await half_head(bridge.port, source) for source in attackers for _ in range(40)]
        await eventually(lambda: len(heads) == heads.total)  # 20: the attack holds them all
        assert max(heads.by_address.values()) <= heads.per_address
        statuses = [
            await http_status(bridge.port, source)
            for _ in range(10)
            for source in ("127.0.0.9", attackers[0])
        ]
        assert statuses == [200] * 20
        assert len(heads) <= heads.total
        for writer in held:
            writer.close()


async def test_an_idle_head_is_dropped_long_before_a_slow_one(redis_url: str, prefix: str) -> None:
    async with running_bridge(redis_url, prefix) as bridge:
        idle_reader, idle = await asyncio.open_connection("127.0.0.1", bridge.port)
        slow_reader, slow = await asyncio.open_connection("127.0.0.1", bridge.port)
        idle.write(b"GET /healthz HTTP/1.1\r\n")
        slow.write(b"GET /healthz HTTP/1.1\r\n")

        async def trickle() -> None:  # a byte every 0.4 s: slow, never idle
            for byte in b"Host: x\r\n\r\n":
                await asyncio.sleep(0.4)
                slow.write(bytes([byte]))

        sending = asyncio.create_task(trickle())
        started = time.monotonic()
        assert await asyncio.wait_for(idle_reader.read(), 5) == b""
        assert time.monotonic() - started < 4  # IDLE_HEAD_TIMEOUT, not the 10 s deadline
        await sending
        assert (await asyncio.wait_for(slow_reader.readline(), 5)).startswith(b"HTTP/1.1 200")
        idle.close()
        slow.close()


async def test_a_pipelined_request_is_refused_with_a_status(redis_url: str, prefix: str) -> None:
    async with running_bridge(redis_url, prefix) as bridge:
        reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
        request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        writer.write(request + request)
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 400") and b"pipelined" in answer
        writer.close()


async def test_http_bodies_count_against_the_bridge_wide_budget(
    redis_url: str, prefix: str, store: EventStore
) -> None:
    """Listings sent to clients that do not read are held until the handshake timeout:
    they are counted, and past the budget a request gets 503 while /healthz answers."""
    for n in range(200):
        store.append(Event("log", f"op-{n}", log_data("info", "x" * 300)))
    async with running_bridge(redis_url, prefix, max_buffered_bytes=256 * 1024) as bridge:
        request = b"GET /api/operations?limit=1000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        readers = []
        statuses = []
        for _ in range(20):
            reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
            writer.transport.pause_reading()  # type: ignore[attr-defined]
            writer.write(request)
            readers.append((reader, writer))
        await eventually(lambda: bridge.hub.buffered_bytes > 128 * 1024)
        for reader, writer in readers:
            writer.transport.resume_reading()  # type: ignore[attr-defined]
            statuses.append(int((await asyncio.wait_for(reader.readline(), 5)).split()[1]))
            writer.close()
        assert 200 in statuses and 503 in statuses
        assert await http_status(bridge.port, "127.0.0.1") == 200
        await eventually(lambda: bridge.hub.buffered_bytes == 0)
