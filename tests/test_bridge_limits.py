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


async def test_commands_beyond_the_rate_are_refused_and_the_connection_lives(
    redis_url: str, prefix: str
) -> None:
    async with running_bridge(redis_url, prefix, command_rate=5, command_burst=10) as bridge:
        client = await WsClient.open(bridge.url)
        for n in range(30):
            await client.send({"command": "ping", "request_id": n})
        replies = [
            await client.wait_for(lambda f, n=n: f.get("request_id") == n) for n in range(30)
        ]
        statuses = [reply.get("code", reply.get("status")) for reply in replies]
        pongs = statuses.count("pong")
        assert 10 <= pongs <= 20  # the burst, plus what refilled while they arrived (5/s)
        assert statuses.count("rate_limited") == 30 - pongs

        async def pong_again() -> bool:
            reply = await client.request("ping")
            return reply.get("status") == "pong"

        await eventually(pong_again, timeout=5)
        await client.close()


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
