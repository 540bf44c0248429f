"""Server-Sent Events against a real bridge and Redis (PROTOCOL.md "Server-Sent Events"):
what ``curl -N`` and EventSource see, resume with Last-Event-ID, access control, limits."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
import time
import uuid
from typing import Any

import orjson
import pytest
from bridge_helpers import (
    RestartableBridge,
    eventually,
    produce_numbered,
    running_bridge,
)
from celery import Celery
from helpers import AUTH_SECRET, events_of
from sse_client import SseStream
from system_packages import require_binary
from test_bridge_auth import HOSTILE, expired

from taskcast import mint_token
from taskcast.bridge import Bridge
from taskcast.bridge.http import CLOSE_TIMEOUT
from taskcast.bridge.sse import (
    StreamRequestError,
    event_message,
    parse_stream_request,
    resume_point,
)
from taskcast.events import Event, log_data, status_data
from taskcast.store import EventStore


def http_base(bridge: Bridge) -> str:
    return f"http://127.0.0.1:{bridge.port}"


def finished_operation(store: EventStore, operation_id: str, lines: int = 3) -> None:
    store.append(Event("status", operation_id, status_data("queued")))
    store.append(Event("status", operation_id, status_data("running")))
    for number in range(lines):
        store.append(Event("log", operation_id, log_data("info", f"line {number}")))
    store.append(Event("completed", operation_id, {"status": "completed", "duration": 1.0}))


# -- the request, pure --------------------------------------------------------------------


def head(target: str, *headers: str) -> bytes:
    return "\r\n".join([f"GET {target} HTTP/1.1", "Host: localhost", *headers]).encode()


def test_only_gets_of_event_paths_are_streams() -> None:
    assert parse_stream_request(head("/api/operations/a/events")) is not None
    assert parse_stream_request(head("/api/events?operation_type=demo")) is not None
    assert parse_stream_request(head("/api/operations/a")) is None
    assert parse_stream_request(head("/ws")) is None
    upgrade = head("/api/events", "Upgrade: websocket", "Connection: Upgrade")
    assert parse_stream_request(upgrade) is None
    post = head("/api/events").replace(b"GET", b"POST", 1)
    assert parse_stream_request(post) is None


def test_last_event_id_wins_over_the_query_it_was_first_opened_with() -> None:
    request = parse_stream_request(
        head("/api/operations/op-1/events?since=2&epoch=e1", "Last-Event-ID: e2:9")
    )
    assert request is not None
    assert (request.operation_id, request.since, request.epoch) == ("op-1", 9, "e2")
    assert resume_point(None, {"since": ["4"], "epoch": ["e1"]}) == (4, "e1")
    assert resume_point(None, {}) == (0, None)
    assert resume_point(":3", {}) == (3, None)  # an event stored before epochs existed


@pytest.mark.parametrize("bad", ["Last-Event-ID: 12", "Last-Event-ID: e:x", "Last-Event-ID: e:-1"])
def test_a_malformed_resume_point_is_refused(bad: str) -> None:
    with pytest.raises(StreamRequestError):
        parse_stream_request(head("/api/operations/a/events", bad))


# -- streams from a real bridge -------------------------------------------------------------


async def test_curl_reads_a_task_to_its_end(
    bridge: Bridge, task_app: Celery, store: EventStore
) -> None:
    """The README's ``curl -N`` on a real task, started before the task exists: the
    subscribe reply, every event once with its ``<epoch>:<seq>`` id, and the stream
    ends by itself after ``completed``."""
    curl = require_binary("curl", "curl")
    task_id = str(uuid.uuid4())
    process = await asyncio.create_subprocess_exec(
        curl, "-N", "-s", "-i", f"{http_base(bridge)}/api/operations/{task_id}/events",
        stdout=asyncio.subprocess.PIPE,
    )
    await eventually(lambda: bridge.hub.subscription_count == 1)
    task_app.send_task("test.numbered", kwargs={"lines": 5, "delay": 0.02}, task_id=task_id)
    out, _ = await asyncio.wait_for(process.communicate(), 20)
    head_text, _, body = out.decode().partition("\r\n\r\n")
    assert head_text.startswith("HTTP/1.1 200")
    assert "content-type: text/event-stream" in head_text.lower()
    blocks = [block for block in body.split("\n\n") if block and not block.startswith("retry:")]
    assert blocks[0].startswith("event: subscribed\ndata: ")
    stored = events_of(store, task_id)
    assert [event["event_type"] for event in stored][-1] == "completed"
    assert len(blocks) == 1 + len(stored)
    epoch = store.snapshot(task_id)["epoch"]
    for block, event in zip(blocks[1:], stored, strict=True):
        id_line, event_line, data_line = block.split("\n")
        assert id_line == f"id: {epoch}:{event['seq']}"
        assert event_line == f"event: {event['event_type']}"
        assert orjson.loads(data_line.removeprefix("data: ")) == event
    assert process.returncode == 0


async def test_resume_with_last_event_id_after_a_dropped_connection(
    bridge: Bridge, store: EventStore
) -> None:
    for _ in range(5):
        store.append(Event("log", "op-r", log_data("info", "before")))
    first = await SseStream.open(f"{http_base(bridge)}/api/operations/op-r/events")
    await first.wait_for(lambda s: len(s.events()) == 5)
    await first.close()
    for _ in range(3):
        store.append(Event("log", "op-r", log_data("info", "while away")))
    second = await SseStream.open(
        f"{http_base(bridge)}/api/operations/op-r/events",
        {"Last-Event-ID": first.last_event_id or ""},
    )
    await second.wait_for(lambda s: len(s.events()) == 3)
    store.append(Event("completed", "op-r", {"status": "completed", "duration": 0.1}))
    await second.wait_ended()
    assert first.seqs() + second.seqs() == list(range(1, 10))
    reply = second.messages[0]
    assert reply.event == "subscribed"
    assert (reply.data["recovered"], reply.data["replayed"]) == (True, 3)
    # The query form resumes the same way (a client that held events before it used SSE).
    epoch = store.snapshot("op-r")["epoch"]
    third = await SseStream.open(
        f"{http_base(bridge)}/api/operations/op-r/events?since=7&epoch={epoch}"
    )
    await third.wait_ended()
    assert third.seqs() == [8, 9]


async def test_a_resume_point_of_a_lost_history_replays_the_new_one(
    bridge: Bridge, store: EventStore
) -> None:
    finished_operation(store, "op-e", lines=1)
    stream = await SseStream.open(
        f"{http_base(bridge)}/api/operations/op-e/events", {"Last-Event-ID": "0000000000000:3"}
    )
    await stream.wait_ended()
    assert stream.messages[0].data["recovered"] is False
    assert stream.seqs() == [1, 2, 3, 4]


async def test_an_ended_operation_already_seen_answers_204(
    bridge: Bridge, store: EventStore
) -> None:
    """EventSource reconnects after every end of stream, except after 204."""
    finished_operation(store, "op-done")
    first = await SseStream.open(f"{http_base(bridge)}/api/operations/op-done/events")
    await first.wait_ended()
    again = await SseStream.open(
        f"{http_base(bridge)}/api/operations/op-done/events",
        {"Last-Event-ID": first.last_event_id or ""},
    )
    await again.wait_ended()
    assert (first.status, again.status, again.messages) == (200, 204, [])


async def test_an_unknown_operation_waits_for_its_first_event(
    bridge: Bridge, store: EventStore
) -> None:
    stream = await SseStream.open(f"{http_base(bridge)}/api/operations/op-later/events")
    reply = await stream.wait_for(lambda s: s.messages and s.messages[0])
    assert reply.data["operation"] is None
    store.append(Event("status", "op-later", status_data("queued")))
    await stream.wait_for(lambda s: s.seqs() == [1])
    await stream.close()


async def test_keep_alive_comments(redis_url: str, prefix: str) -> None:
    async with running_bridge(redis_url, prefix, sse_keepalive=0.1) as bridge:
        stream = await SseStream.open(f"{http_base(bridge)}/api/operations/op-k/events")
        await stream.wait_for(lambda s: s.comments >= 2, timeout=5)
        await stream.close()


async def test_the_monitor_stream_sees_every_operation_of_its_type(
    bridge: Bridge, store: EventStore
) -> None:
    everything = await SseStream.open(f"{http_base(bridge)}/api/events")
    reports = await SseStream.open(f"{http_base(bridge)}/api/events?operation_type=report")
    await everything.wait_for(lambda s: s.messages)
    await reports.wait_for(lambda s: s.messages)
    store.append(Event("status", "m-1", status_data("queued"), operation_type="report"))
    store.append(Event("status", "m-2", status_data("queued"), operation_type="other"))
    store.append(Event("completed", "m-1", {"status": "completed", "duration": 0.1}))
    await everything.wait_for(lambda s: len(s.events()) == 3)
    await reports.wait_for(lambda s: len(s.events()) == 2)
    assert not everything.ended.is_set()  # a terminal event does not end a monitor stream
    assert {m.data["operation_id"] for m in reports.events()} == {"m-1"}
    await everything.close()
    await reports.close()


async def test_bad_requests_get_json_errors(bridge: Bridge) -> None:
    stream = await SseStream.open(
        f"{http_base(bridge)}/api/operations/op/events", {"Last-Event-ID": "nonsense"}
    )
    await stream.wait_ended()
    assert stream.status == 400
    assert orjson.loads(stream.body)["code"] == "bad_request"


async def test_closed_streams_leave_nothing_behind(bridge: Bridge, store: EventStore) -> None:
    streams = [
        await SseStream.open(f"{http_base(bridge)}/api/operations/op-{n}/events")
        for n in range(20)
    ]
    await eventually(lambda: bridge.hub.subscription_count == 20)
    for stream in streams:
        await stream.close()
    await eventually(lambda: not bridge.hub.connections and not bridge.streams.open)
    assert bridge.hub.subscription_count == 0
    assert bridge.caps.count == 0


async def test_a_stream_that_does_not_read_is_ended_at_its_budget(
    redis_url: str, prefix: str, store: EventStore
) -> None:
    """The WebSocket's send budget: a reader that stops is ended (it may resume), and the
    bridge holds no more than the budget for it meanwhile."""
    big = "x" * 4000
    async with running_bridge(redis_url, prefix, send_buffer_bytes=64 * 1024) as bridge:
        reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
        writer.transport.set_write_buffer_limits(0)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        writer.write(b"GET /api/operations/op-slow/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await eventually(lambda: bridge.hub.subscription_count == 1)
        for _ in range(400):
            store.append(Event("log", "op-slow", log_data("info", big)))
        await eventually(lambda: bridge.hub.stats.slow_consumer_disconnects == 1, timeout=10)
        await eventually(lambda: not bridge.streams.open)
        writer.close()


# -- access control -----------------------------------------------------------------------


async def test_streams_need_a_token_with_the_right_scope(
    redis_url: str, prefix: str, store: EventStore
) -> None:
    finished_operation(store, "op-a")
    async with running_bridge(
        redis_url, prefix, auth_secret=AUTH_SECRET, allowed_origins=("http://good.example",)
    ) as bridge:
        base = http_base(bridge)

        async def status(path: str, **headers: str) -> tuple[int, Any]:
            stream = await SseStream.open(base + path, headers)
            await stream.wait_ended()
            body = orjson.loads(stream.body) if stream.status != 200 else stream.seqs()
            return stream.status, body

        reader = mint_token(["op-a"], secret=AUTH_SECRET)
        monitor = mint_token(["*"], scopes=("read", "monitor"), secret=AUTH_SECRET)
        assert (await status("/api/operations/op-a/events"))[0] == 401
        for make in (*HOSTILE.values(), expired):
            assert (await status(f"/api/operations/op-a/events?token={make()}"))[0] == 401
        assert (await status(f"/api/operations/op-b/events?token={reader}"))[0] == 403
        assert (await status(f"/api/events?token={reader}"))[0] == 403
        refused = await SseStream.open(
            f"{base}/api/operations/op-a/events?token={reader}", {"Origin": "http://evil.example"}
        )
        await refused.wait_ended()
        assert refused.status == 403 and "access-control-allow-origin" not in refused.headers
        by_query = await status(f"/api/operations/op-a/events?token={reader}")
        by_header = await status(
            "/api/operations/op-a/events", Authorization=f"Bearer {reader}"
        )
        assert by_query == by_header == (200, [1, 2, 3, 4, 5, 6])
        stream = await SseStream.open(f"{base}/api/events?token={monitor}")
        assert stream.status == 200
        await stream.close()


async def test_a_stream_ends_when_its_token_expires(
    redis_url: str, prefix: str, store: EventStore
) -> None:
    async with running_bridge(redis_url, prefix, auth_secret=AUTH_SECRET) as bridge:
        token = mint_token(["op-t"], ttl=1, secret=AUTH_SECRET)
        path = f"/api/operations/op-t/events?token={token}"
        stream = await SseStream.open(http_base(bridge) + path)
        assert stream.status == 200
        await stream.wait_ended(timeout=5)


async def test_the_connection_caps_count_streams(
    redis_url: str, prefix: str, store: EventStore
) -> None:
    async with running_bridge(redis_url, prefix, max_connections_per_ip=2) as bridge:
        base = http_base(bridge)
        held = [await SseStream.open(f"{base}/api/operations/op/events") for _ in range(2)]
        third = await SseStream.open(f"{base}/api/operations/op/events")
        await third.wait_ended()
        assert third.status == 429
        for stream in held:
            await stream.close()


# -- a bridge restart ----------------------------------------------------------------------


async def follow_across_restarts(base: str, operation_id: str, stop: asyncio.Event) -> list[int]:
    """What EventSource does: reconnect after every end with Last-Event-ID, until the
    operation's terminal event (or a 204) was seen."""
    seqs: list[int] = []
    last: str | None = None
    while True:
        try:
            stream = await SseStream.open(
                f"{base}/api/operations/{operation_id}/events",
                {"Last-Event-ID": last} if last else None,
            )
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            await asyncio.sleep(0.05)
            continue
        await stream.ended.wait()
        seqs += stream.seqs()
        last = stream.last_event_id or last
        events = stream.events()
        if stream.status == 204 or (events and events[-1].data["event_type"] == "completed"):
            return seqs
        if stop.is_set():
            raise AssertionError(f"gave up after {seqs[-5:]}")


async def test_every_event_once_across_a_bridge_restart(
    restartable_bridge: RestartableBridge, store: EventStore
) -> None:
    go = threading.Event()
    producer = threading.Thread(
        target=produce_numbered, args=(store, ["op-restart"], go, 200, 0.01), daemon=True
    )
    producer.start()
    base = f"http://127.0.0.1:{restartable_bridge.port}"
    stop = asyncio.Event()
    follower = asyncio.ensure_future(follow_across_restarts(base, "op-restart", stop))
    await eventually(lambda: store.snapshot("op-restart") is not None)
    go.set()
    await eventually(lambda: store.snapshot("op-restart")["last_seq"] > 50, timeout=10)
    restartable_bridge.stop(signal.SIGKILL)
    restartable_bridge.start()
    await eventually(lambda: store.snapshot("op-restart")["last_seq"] > 120, timeout=10)
    restartable_bridge.stop(signal.SIGTERM)
    restartable_bridge.start()
    producer.join(30)
    started = time.monotonic()
    try:
        seqs = await asyncio.wait_for(follower, 30)
    finally:
        stop.set()
    assert seqs == list(range(1, store.snapshot("op-restart")["last_seq"] + 1)), (
        time.monotonic() - started
    )


# -- what a hostile or broken client can do --------------------------------------------------


def test_stored_data_cannot_write_sse_fields() -> None:
    """An event name (or id) with a line break would let stored data forge fields."""
    payload = orjson.dumps(
        {"event_type": "log\nid: fake:999\nevent: completed", "seq": 3, "epoch": "e\n1"}
    )
    data, terminal = event_message(payload)
    fields = data.decode().split("\n")
    assert fields[0] == "id: e_1:3" and fields[1].startswith("event: log_id:_fake:999")
    assert len(fields) == 5 and not terminal


@pytest.mark.parametrize(
    "bad",
    [
        "Last-Event-ID: e:99999999999999999999",
        "Last-Event-ID: " + "e" * 100 + ":1",
        "Origin: http://a.example\r\nOrigin: http://b.example",
    ],
)
def test_out_of_range_or_repeated_values_are_refused(bad: str) -> None:
    with pytest.raises(StreamRequestError):
        parse_stream_request(head("/api/operations/a/events", bad))


async def test_a_long_history_streams_to_the_end(bridge: Bridge, store: EventStore) -> None:
    """Far more than the transport takes at once: every event, then the end."""
    line = "y" * 1000
    store.append_many([Event("log", "op-long", log_data("info", line)) for _ in range(300)])
    stream = await SseStream.open(f"{http_base(bridge)}/api/operations/op-long/events")
    await stream.wait_for(lambda s: len(s.events()) == 300)
    for _ in range(200):  # and a live burst as large
        store.append(Event("log", "op-long", log_data("info", line)))
    store.append(Event("completed", "op-long", {"status": "completed", "duration": 0.1}))
    await stream.wait_ended()
    assert stream.seqs() == list(range(1, 502))


async def test_a_replay_nobody_reads_is_ended_and_its_socket_freed(
    redis_url: str, prefix: str, store: EventStore
) -> None:
    """Over its send budget with a replay it does not read, a stream gets the WebSocket's
    grace, is ended, and its connection is cut off rather than held open."""
    big = "x" * 8000  # 8 MB of history: more than the kernel's socket buffers take
    store.append_many([Event("log", "op-unread", log_data("info", big)) for _ in range(1000)])
    async with running_bridge(redis_url, prefix, send_buffer_bytes=64 * 1024) as bridge:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        sock.connect(("127.0.0.1", bridge.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"GET /api/operations/op-unread/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await eventually(lambda: bridge.hub.stats.slow_consumer_disconnects == 1, timeout=20)
        await eventually(lambda: bridge.caps.count == 0 and not bridge.streams.open)
        writer.close()


async def test_talking_after_the_request_ends_the_stream(bridge: Bridge) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
    writer.write(b"GET /api/operations/op-chatty/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await eventually(lambda: bridge.hub.subscription_count == 1)
    writer.write(b"GET /api/stats HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await eventually(lambda: not bridge.streams.open)
    writer.close()


async def test_connections_still_sending_their_head_are_capped_per_address(
    redis_url: str, prefix: str
) -> None:
    """A client that opens sockets and never finishes a request holds descriptors too; a
    newcomer from its address is served and the stalest of its heads makes room."""
    async with running_bridge(redis_url, prefix, max_connections_per_ip=3) as bridge:
        held = [await asyncio.open_connection("127.0.0.1", bridge.port) for _ in range(3)]
        for _, writer in held:
            writer.write(b"GET /api/ev")  # never finished
        await eventually(lambda: len(bridge.caps.heads) == 3)
        stream = await SseStream.open(f"{http_base(bridge)}/api/operations/op/events")
        assert stream.status == 200
        first_reader = held[0][0]
        assert await asyncio.wait_for(first_reader.read(), 5) == b""  # dropped for it
        await stream.close()
        for _, held_writer in held:
            held_writer.close()
        await eventually(lambda: len(bridge.caps.heads) == 0)


async def test_repeated_headers_and_oversized_heads_are_refused(bridge: Bridge) -> None:
    base = http_base(bridge)
    twice = await SseStream.open(
        f"{base}/api/operations/op/events", {"Origin": "http://a.example\r\nOrigin: http://b"}
    )
    await twice.wait_ended()
    assert twice.status == 400
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
    writer.write(b"GET /api/stats HTTP/1.1\r\nHost: localhost\r\nOrigin: a\r\nOrigin: b\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 400")
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
    padding = b"X-Pad: " + b"p" * 20_000 + b"\r\n"
    writer.write(b"GET /api/operations/op/events HTTP/1.1\r\nHost: x\r\n" + padding + b"\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
    writer.close()


async def test_a_stream_whose_client_left_leaves_no_timer_behind(
    bridge: Bridge, store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    """An ended stream is cut off after CLOSE_TIMEOUT only if its client still holds it;
    one whose client already closed must not be touched again (that logged errors)."""
    finished_operation(store, "op-left")
    stream = await SseStream.open(f"{http_base(bridge)}/api/operations/op-left/events")
    await stream.wait_ended()
    await stream.close()
    await eventually(lambda: not bridge.streams.open)
    await asyncio.sleep(CLOSE_TIMEOUT + 0.5)  # past the moment the cut-off would have run
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_live_stream_whose_client_resets_leaves_no_timer_behind(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    """The hostile-client harness found this: a stream still following an operation ends
    when its connection is lost, and ending asked for a cut-off of a closed socket."""
    _, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
    writer.write(b"GET /api/operations/never-ends/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await eventually(lambda: bridge.streams.open)
    writer.transport.abort()
    await eventually(lambda: not bridge.streams.open)
    await asyncio.sleep(CLOSE_TIMEOUT + 0.5)  # past the moment the cut-off would have run
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
