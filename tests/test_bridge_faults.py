"""What goes wrong around the bridge: slow consumers, Redis outages."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.error
import urllib.request

import redis
from bridge_helpers import WsClient, eventually, http_get, running_bridge
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from taskcast.embedded_redis import EmbeddedRedis
from taskcast.events import Event, progress_data, status_data
from taskcast.store import EventStore

PAD = "x" * 16_000


def big_progress(store: EventStore, op: str, count: int) -> None:
    for i in range(count):
        store.append(Event("progress", op, progress_data(0.5, PAD, details={"i": i})))


async def test_a_client_that_stops_reading_is_closed_with_4008_and_others_get_everything(
    redis_client: redis.Redis, redis_url: str, prefix: str
) -> None:
    store = EventStore(redis_client, prefix=prefix, history_maxlen=100)
    async with running_bridge(redis_url, prefix, send_buffer_bytes=512 * 1024) as bridge:
        fast = await WsClient.open(bridge.url)
        await fast.request("subscribe", operation_id="flood")
        # A tiny queue: the slow client's library stops reading its socket after
        # two frames, so once the kernel buffers fill the bridge's outbox grows.
        slow = await connect(bridge.url, max_queue=2)
        await slow.recv()  # connected
        await slow.send('{"command": "subscribe", "operation_id": "flood"}')
        await slow.recv()  # subscribed
        sent = 0
        while bridge.hub.stats.slow_consumer_disconnects == 0:
            assert sent < 3000, "the slow client was never cut off"
            await asyncio.to_thread(big_progress, store, "flood", 50)
            sent += 50
            await asyncio.sleep(0.01)
        try:
            while True:
                await slow.recv()
        except ConnectionClosed:
            pass
        assert slow.close_code == 4008
        assert fast.close_code is None
        assert [e["seq"] for e in await fast.wait_events("flood", sent, timeout=20)] == list(
            range(1, sent + 1)
        )
        stats = (await fast.request("get_stats"))["stats"]
        assert stats["slow_consumer_disconnects"] == 1 and stats["connected_clients"] == 1
        await fast.close()


async def test_redis_outage_keeps_clients_connected_and_the_tail_resumes(prefix: str) -> None:
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        store = EventStore(client, prefix=prefix)
        async with running_bridge(server.url, prefix) as bridge:
            base = f"http://127.0.0.1:{bridge.port}"
            watcher = await WsClient.open(bridge.url)
            await watcher.request("subscribe", operation_id="op")
            await watcher.request("subscribe", operation_id="later")
            store.append(Event("status", "op", status_data("queued")))
            await watcher.wait_events("op", 1)

            server.stop()
            status, _, _ = await asyncio.to_thread(http_get, f"{base}/readyz")
            assert status == 503
            reply = await watcher.request("get_operation", operation_id="op")
            assert (reply["status"], reply["code"]) == ("error", "unavailable")
            reply = await watcher.request("subscribe", operation_id="other")
            assert reply["code"] == "unavailable"
            stats = (await watcher.request("get_stats"))["stats"]
            assert stats["total_operations"] is None and stats["connected_clients"] == 1
            await eventually(lambda: not bridge.tail.healthy)

            # Redis comes back (empty: the test server keeps no data). Events
            # written before the tail's next retry must still be delivered.
            server.start()
            client.close()
            store.append(Event("status", "later", status_data("queued")))
            store.append(Event("status", "later", status_data("running")))
            events = await watcher.wait_events("later", 2, timeout=10)
            assert [e["data"]["status"] for e in events] == ["queued", "running"]
            assert [e["seq"] for e in events] == [1, 2]
            status, _, _ = await asyncio.to_thread(http_get, f"{base}/readyz")
            assert status == 200
            assert (await watcher.request("subscribe", operation_id="other"))["status"] == (
                "subscribed"
            )
            await watcher.close()
        client.close()


def answered_within(url: str, seconds: float) -> int:
    """The status of a GET that a client giving up after ``seconds`` got (an orchestrator's
    probe with ``timeoutSeconds: 1``); raises if it got none."""
    try:
        with urllib.request.urlopen(url, timeout=seconds) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


async def test_probes_and_metrics_answer_within_a_second_while_redis_is_frozen(
    prefix: str,
) -> None:
    """A Redis that stops answering without closing its sockets (SIGSTOP, a dead link):
    /readyz says 503 and /metrics still serves the bridge's own figures, in time for a
    probe or a scrape; both recover when Redis does."""
    with EmbeddedRedis() as server:
        async with running_bridge(server.url, prefix) as bridge:
            base = f"http://127.0.0.1:{bridge.port}"
            assert await asyncio.to_thread(answered_within, f"{base}/readyz", 1.0) == 200
            assert server.process is not None
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                for _ in range(3):
                    for path, status in (("/readyz", 503), ("/metrics", 200), ("/healthz", 200)):
                        got = await asyncio.to_thread(answered_within, base + path, 1.0)
                        assert got == status, path
            finally:
                os.kill(server.process.pid, signal.SIGCONT)

            async def ready() -> bool:
                return await asyncio.to_thread(answered_within, f"{base}/readyz", 1.0) == 200

            await eventually(ready, timeout=10)
