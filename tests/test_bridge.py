"""The bridge over real sockets and a real Redis: every command and reply of PROTOCOL.md."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

import pytest
import redis
from bridge_helpers import WsClient, eventually, running_bridge

from taskcast.bridge import Bridge
from taskcast.events import Event, log_data, progress_data, status_data
from taskcast.store import EventStore

OpenClient = Callable[..., Awaitable[WsClient]]


def emit_lifecycle(store: EventStore, op: str, steps: int = 3, optype: str = "demo.job") -> None:
    store.append(Event("status", op, status_data("queued"), operation_type=optype))
    store.append(Event("status", op, status_data("running", details={"worker": "w@h"})))
    for step in range(1, steps + 1):
        store.append(Event("progress", op, progress_data(current=step, total=steps)))
    store.append(Event("log", op, log_data("info", "done stepping")))
    store.append(Event("result", op, {"result": {"ok": True}}))
    store.append(Event("completed", op, {"status": "completed", "duration": 0.1}))


def progress(store: EventStore, op: str, count: int) -> None:
    for i in range(count):
        store.append(Event("progress", op, progress_data(i / count), operation_type="demo.job"))


async def test_connected_frame_comes_first(ws_client: OpenClient) -> None:
    client = await ws_client()
    first = client.frames[0]
    assert first["event_type"] == "connected" and first["operation_id"] == "system"
    assert "seq" not in first
    data = first["data"]
    assert data["protocol"] == 1 and data["server"].startswith("taskcast/")
    assert data["client_id"] and data["timestamp"][:4].isdigit() and data["message"]
    other = await ws_client()
    assert other.frames[0]["data"]["client_id"] != data["client_id"]


async def test_two_subscribers_receive_the_same_full_sequence(
    ws_client: OpenClient, store: EventStore
) -> None:
    a, b = await ws_client(), await ws_client()
    for client in (a, b):
        reply = await client.request("subscribe", operation_id="job")
        assert reply["status"] == "subscribed" and reply["operation_id"] == "job"
        assert reply["operation"] is None and reply["replayed"] == 0
        assert reply["recovered"] is True
    emit_lifecycle(store, "job")
    events_a = await a.wait_events("job", 8)
    events_b = await b.wait_events("job", 8)
    assert events_a == events_b
    assert [e["seq"] for e in events_a] == list(range(1, 9))
    assert [e["event_type"] for e in events_a] == [
        "status",
        "status",
        "progress",
        "progress",
        "progress",
        "log",
        "result",
        "completed",
    ]
    assert events_a[2]["data"]["current"] == 1 and events_a[2]["data"]["total"] == 3
    assert events_a[0]["timestamp"] > 0


async def test_subscribing_mid_operation_replays_the_history_then_streams(
    ws_client: OpenClient, store: EventStore
) -> None:
    progress(store, "op", 5)
    client = await ws_client()
    reply = await client.request("subscribe", operation_id="op")
    assert reply["replayed"] == 5 and reply["recovered"] is True
    assert reply["operation"]["last_seq"] == 5 and reply["operation"]["event_count"] == 5
    # The reply precedes the replayed events on the wire.
    position = client.frames.index(reply)
    await client.wait_events("op", 5)
    assert all("seq" in f for f in client.frames[position + 1 : position + 6])
    progress(store, "op", 2)
    assert [e["seq"] for e in await client.wait_events("op", 7)] == list(range(1, 8))


async def test_subscribing_with_since_gets_exactly_the_missing_events(
    ws_client: OpenClient, store: EventStore
) -> None:
    progress(store, "op", 6)
    client = await ws_client()
    reply = await client.request("subscribe", operation_id="op", since=4)
    assert reply["replayed"] == 2 and reply["recovered"] is True
    await client.wait_events("op", 2)
    progress(store, "op", 1)
    await client.wait_events("op", 3)
    assert client.seqs("op") == [5, 6, 7]
    caught_up = await ws_client()
    reply = await caught_up.request("subscribe", operation_id="op", since=7)
    assert reply["replayed"] == 0 and reply["recovered"] is True


async def test_subscribers_joining_while_events_pour_in_see_no_gap_and_no_duplicate(
    ws_client: OpenClient, redis_client: redis.Redis, prefix: str
) -> None:
    store = EventStore(redis_client, prefix=prefix, history_maxlen=5000)
    total = 400
    writer = threading.Thread(target=progress, args=(store, "hot", total))
    clients: list[WsClient] = []
    writer.start()
    try:
        for index in range(8):
            client = await ws_client()
            since = 0
            if index % 2 and store.snapshot("hot"):
                since = store.snapshot("hot")["last_seq"] // 2
            await client.request("subscribe", operation_id="hot", since=since)
            clients.append((client, since))
            await asyncio.sleep(0.01)
    finally:
        await asyncio.to_thread(writer.join)
    for client, since in clients:
        await client.wait_events("hot", total - since, timeout=10)
        assert client.seqs("hot") == list(range(since + 1, total + 1))


async def test_recovered_is_false_when_history_was_trimmed_or_the_operation_is_unknown(
    ws_client: OpenClient, redis_client: redis.Redis, prefix: str
) -> None:
    store = EventStore(redis_client, prefix=prefix, history_maxlen=5)
    progress(store, "short", 10)
    client = await ws_client()
    reply = await client.request("subscribe", operation_id="short", since=2)
    assert reply["recovered"] is False and reply["replayed"] == 5
    assert reply["operation"]["last_seq"] == 10
    assert [e["seq"] for e in await client.wait_events("short", 5)] == [6, 7, 8, 9, 10]
    reply = await client.request("subscribe", operation_id="never-seen", since=3)
    assert reply["recovered"] is False and reply["operation"] is None
    store.append(Event("status", "never-seen", status_data("queued")))
    assert [e["seq"] for e in await client.wait_events("never-seen", 1)] == [1]


async def test_unsubscribe_stops_the_stream(ws_client: OpenClient, store: EventStore) -> None:
    client = await ws_client()
    await client.request("subscribe", operation_id="op")
    progress(store, "op", 1)
    await client.wait_events("op", 1)
    reply = await client.request("unsubscribe", operation_id="op")
    assert reply == {
        "status": "unsubscribed",
        "operation_id": "op",
        "request_id": reply["request_id"],
    }
    progress(store, "op", 2)
    marker = await client.request("ping")
    assert marker["status"] == "pong" and isinstance(marker["timestamp"], float)
    await asyncio.sleep(0.1)
    assert client.seqs("op") == [1]


async def test_one_client_follows_many_operations(ws_client: OpenClient, store: EventStore) -> None:
    client = await ws_client()
    for op in ("a", "b", "c"):
        await client.request("subscribe", operation_id=op)
    for op in ("a", "b", "c", "a"):
        progress(store, op, 1)
    await client.wait_events(None, 4)
    assert client.seqs("a") == [1, 2] and client.seqs("b") == [1] and client.seqs("c") == [1]


async def test_monitor_mode_sees_every_operation_and_filters_by_type(
    ws_client: OpenClient, store: EventStore
) -> None:
    everything, only_b = await ws_client(), await ws_client()
    reply = await everything.request("subscribe_all")
    assert (reply["status"], reply["operation_id"]) == ("subscribed", "*")
    reply = await only_b.request("subscribe_all", operation_type="type.b")
    assert (reply["status"], reply["operation_id"]) == ("subscribed", "*")
    store.append(Event("status", "x1", status_data("queued"), operation_type="type.a"))
    store.append(Event("status", "x2", status_data("queued"), operation_type="type.b"))
    store.append(Event("progress", "x2", progress_data(0.5)))
    await everything.wait_events(None, 3)
    assert [(e["operation_id"], e["seq"]) for e in everything.events()] == [
        ("x1", 1),
        ("x2", 1),
        ("x2", 2),
    ]
    await only_b.wait_events(None, 2)
    assert {e["operation_id"] for e in only_b.events()} == {"x2"}
    reply = await only_b.request("unsubscribe_all")
    assert (reply["status"], reply["operation_id"]) == ("unsubscribed", "*")
    store.append(Event("progress", "x2", progress_data(0.9)))
    await everything.wait_events(None, 4)
    await only_b.request("ping")
    assert len(only_b.events()) == 2


async def test_get_operation_and_not_found(ws_client: OpenClient, store: EventStore) -> None:
    emit_lifecycle(store, "done")
    client = await ws_client()
    reply = await client.request("get_operation", operation_id="done")
    snapshot = reply["operation"]
    assert snapshot["status"] == "completed" and snapshot["result"] == {"ok": True}
    assert snapshot["event_count"] == 8 and snapshot["worker"] == "w@h"
    reply = await client.request("get_operation", operation_id="nope")
    assert reply["status"] == "error" and reply["code"] == "not_found"
    assert "nope" in reply["message"]


async def test_list_operations_filters_and_limits(ws_client: OpenClient, store: EventStore) -> None:
    emit_lifecycle(store, "finished1")
    progress(store, "active1", 1)
    progress(store, "active2", 1)
    client = await ws_client()
    listed = (await client.request("list_operations"))["operations"]
    assert [s["operation_id"] for s in listed] == ["active2", "active1", "finished1"]
    active = (await client.request("list_operations", status="active"))["operations"]
    assert {s["operation_id"] for s in active} == {"active1", "active2"}
    finished = (await client.request("list_operations", status="finished"))["operations"]
    assert [s["operation_id"] for s in finished] == ["finished1"]
    named = (await client.request("list_operations", status="completed"))["operations"]
    assert [s["operation_id"] for s in named] == ["finished1"]
    limited = (await client.request("list_operations", limit=1))["operations"]
    assert [s["operation_id"] for s in limited] == ["active2"]
    next_page = (await client.request("list_operations", limit=2, offset=1))["operations"]
    assert [s["operation_id"] for s in next_page] == ["active1", "finished1"]


async def test_list_operations_finds_operations_by_type(
    ws_client: OpenClient, store: EventStore
) -> None:
    for n, kind in enumerate(["reports.daily", "mail.send", "reports.weekly", "reports.daily"]):
        store.append(Event("status", f"op{n}", status_data("running"), operation_type=kind))
    store.append(Event("completed", "op0", {"status": "completed", "duration": 1.0}))
    client = await ws_client()

    async def listed(**filters: object) -> list[str]:
        reply = await client.request("list_operations", **filters)
        return [s["operation_id"] for s in reply["operations"]]

    assert await listed(operation_type="reports.daily") == ["op0", "op3"]
    assert await listed(operation_type="reports.*") == ["op0", "op3", "op2"]
    assert await listed(operation_type="reports.*", status="active", limit=1) == ["op3"]
    assert await listed(operation_type="reports.*", limit=1, offset=1) == ["op3"]
    assert await listed(operation_type="mail.send", status="finished") == []
    reply = await client.request("list_operations", operation_type="")
    assert reply["code"] == "bad_request" and "operation_type" in reply["message"]


async def test_get_stats_counts_clients_subscriptions_and_deliveries(
    ws_client: OpenClient, store: EventStore
) -> None:
    emit_lifecycle(store, "finished")
    progress(store, "running", 2)
    # Last updated longer ago than the history TTL: its keys have expired, while its
    # index entries linger until a later append trims them.
    stale = time.time() - store.history_ttl - 5
    store.append(Event("progress", "expired", progress_data(0.5), timestamp=stale))
    store.client.delete(store.keys.snapshot("expired"), store.keys.history("expired"))
    watcher, other = await ws_client(), await ws_client()
    await watcher.request("subscribe", operation_id="running")
    await other.request("subscribe", operation_id="running")
    await other.request("subscribe", operation_id="finished")
    await watcher.wait_events("running", 2)
    stats = (await watcher.request("get_stats"))["stats"]
    assert stats["connected_clients"] == 2 and stats["subscriptions"] == 3
    assert stats["active_operations"] == 1 and stats["total_operations"] == 2
    assert stats["events_delivered"] >= 2 and stats["uptime"] >= 0


async def test_a_client_that_disconnects_is_forgotten_at_once(
    bridge: Bridge, ws_client: OpenClient
) -> None:
    watcher, leaving = await ws_client(), await ws_client()
    await leaving.request("subscribe", operation_id="op")
    await leaving.request("subscribe_all")
    stats = (await watcher.request("get_stats"))["stats"]
    assert (stats["connected_clients"], stats["subscriptions"], stats["monitors"]) == (2, 1, 1)
    await leaving.close()
    await eventually(lambda: bridge.hub.snapshot_stats()["connected_clients"] == 1)
    stats = (await watcher.request("get_stats"))["stats"]
    assert (stats["connected_clients"], stats["subscriptions"], stats["monitors"]) == (1, 0, 0)


@pytest.mark.parametrize(
    ("frame", "code", "echo"),
    [
        ("{not json", "bad_request", False),
        ("[1,2,3]", "bad_request", False),
        ('{"command": "subscribe", "request_id": 5}', "bad_request", True),
        ('{"command": "subscribe", "operation_id": 7, "request_id": 5}', "bad_request", True),
        (
            '{"command": "subscribe", "operation_id": "a", "since": "x", "request_id": 5}',
            "bad_request",
            True,
        ),
        ('{"command": "list_operations", "limit": -3, "request_id": 5}', "bad_request", True),
        ('{"command": "fly", "request_id": 5}', "unknown_command", True),
        ('{"request_id": 5}', "bad_request", True),
        (
            '{"command": "get_operation", "operation_id": "' + "x" * 5000 + '", "request_id": 5}',
            "bad_request",
            True,
        ),
        (
            '{"command": "get_operation", "operation_id": "ghost", "request_id": 5}',
            "not_found",
            True,
        ),
    ],
)
async def test_errors_get_protocol_replies_and_the_connection_stays_usable(
    ws_client: OpenClient, frame: str, code: str, echo: bool
) -> None:
    client = await ws_client()
    await client.send(frame)
    error = await client.wait_for(lambda f: f.get("status") == "error")
    assert error["code"] == code and error["message"]
    assert error.get("request_id") == (5 if echo else None)
    assert (await client.request("ping"))["status"] == "pong"


async def test_too_many_subscriptions(redis_url: str, prefix: str) -> None:
    async with running_bridge(redis_url, prefix, max_subscriptions=2) as running:
        client = await WsClient.open(running.url)
        await client.request("subscribe", operation_id="a")
        await client.request("subscribe", operation_id="b")
        reply = await client.request("subscribe", operation_id="c")
        assert reply["status"] == "error" and reply["code"] == "too_many_subscriptions"
        again = await client.request("subscribe", operation_id="a")
        assert again["status"] == "subscribed"
        await client.request("unsubscribe", operation_id="b")
        assert (await client.request("subscribe", operation_id="c"))["status"] == "subscribed"
        await client.close()


async def test_oversized_frame_closes_with_1009_and_others_are_unaffected(
    ws_client: OpenClient,
) -> None:
    big, bystander = await ws_client(), await ws_client()
    await big.send('{"command": "ping", "pad": "' + "x" * 70_000 + '"}')
    assert await big.wait_closed() == 1009
    assert (await bystander.request("ping"))["status"] == "pong"
