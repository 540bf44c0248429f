"""The bridge's two ways out for frames keep each connection's stream whole and in order.

Frames are written directly while a client's transport has room and by a
writer task that waits for the client once it has not; a client that stops
reading for a while crosses from one to the other and back.
"""

from __future__ import annotations

import asyncio

import orjson
import redis
from bridge_helpers import WsClient, eventually, running_bridge
from websockets.asyncio.client import ClientConnection, connect

from taskcast.bridge.server import Peer
from taskcast.events import Event, progress_data
from taskcast.store import EventStore

PAD = "x" * 16_000


def big_progress(store: EventStore, op: str, count: int) -> None:
    for _ in range(count):
        store.append(Event("progress", op, progress_data(0.5, PAD)))


async def read_seqs(ws: ClientConnection, count: int) -> list[int]:
    seqs = []
    for _ in range(count):
        seqs.append(orjson.loads(await asyncio.wait_for(ws.recv(), 10))["seq"])
    return seqs


async def test_a_client_that_pauses_reading_then_resumes_gets_every_event_once_in_order(
    redis_client: redis.Redis, redis_url: str, prefix: str
) -> None:
    store = EventStore(redis_client, prefix=prefix, history_maxlen=10_000)
    big_budget = 256 * 1024 * 1024  # pausing is not what this test is about: no 4008
    async with running_bridge(redis_url, prefix, send_buffer_bytes=big_budget) as bridge:
        watcher = await WsClient.open(bridge.url)
        await watcher.request("subscribe", operation_id="flood")
        # With a one-message queue the client library stops reading its socket
        # while this test does not call recv(), so the bridge's transport fills.
        paused = await connect(bridge.url, max_queue=1)
        client_id = orjson.loads(await paused.recv())["data"]["client_id"]
        peer = bridge.hub.connections[client_id]
        assert isinstance(peer, Peer)
        await paused.send('{"command": "subscribe", "operation_id": "flood"}')
        assert orjson.loads(await paused.recv())["status"] == "subscribed"

        sent = 0
        while peer.writer is None:
            assert sent < 3000, "the paused client's transport never backed up"
            await asyncio.to_thread(big_progress, store, "flood", 20)
            sent += 20
            await asyncio.sleep(0.01)
        # Events that arrive while the writer task owns the backlog.
        await asyncio.to_thread(big_progress, store, "flood", 20)
        sent += 20
        seqs = await read_seqs(paused, sent)
        await eventually(lambda: peer.writer is None)
        # And the direct path again once the backlog is gone.
        await asyncio.to_thread(big_progress, store, "flood", 5)
        sent += 5
        seqs += await read_seqs(paused, 5)

        assert seqs == list(range(1, sent + 1))
        assert (await watcher.wait_events("flood", sent, timeout=20))[-1]["seq"] == sent
        assert watcher.seqs("flood") == list(range(1, sent + 1))
        assert paused.close_code is None and bridge.hub.stats.slow_consumer_disconnects == 0
        await paused.close()
        await watcher.close()


VERIFIED_WEBSOCKETS_MAJORS = range(14, 18)  # pyproject.toml: websockets>=14.0,<18


def test_the_installed_websockets_is_one_the_direct_write_path_was_verified_on() -> None:
    """The direct path uses ``ServerConnection.protocol`` and ``.transport``, which websockets
    does not document as public: a new major version must be checked before it is allowed."""
    import websockets

    major = int(websockets.__version__.split(".")[0])
    assert major in VERIFIED_WEBSOCKETS_MAJORS, (
        f"websockets {websockets.__version__} is not verified: check Bridge._write_direct "
        "(connection.protocol.send_text/data_to_send, connection.transport) against it, "
        "then widen VERIFIED_WEBSOCKETS_MAJORS and the bound in pyproject.toml"
    )
