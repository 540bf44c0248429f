"""The embedded bridge (start_background) and what random input does to it: nothing harmful."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from taskcast import bridge
from taskcast.bridge.commands import COMMANDS
from taskcast.events import Event, progress_data
from taskcast.store import EventStore
from taskcast.worker_config.settings import load_settings


@pytest.fixture
def embedded(redis_url: str, prefix: str) -> Iterator[bridge.Bridge]:
    running = bridge.start_background(
        port=0, settings=load_settings({}, redis_url=redis_url, prefix=prefix)
    )
    yield running
    bridge.stop_background()


def test_start_and_stop_background(redis_url: str, prefix: str, store: EventStore) -> None:
    assert not bridge.is_running()
    running = bridge.start_background(
        "127.0.0.1", 0, settings=load_settings({}, redis_url=redis_url, prefix=prefix)
    )
    try:
        assert bridge.is_running() and running.port
        with pytest.raises(RuntimeError, match="already running"):
            bridge.start_background(port=0)
        with connect(running.url) as ws:
            assert orjson.loads(ws.recv(timeout=5))["event_type"] == "connected"
            ws.send('{"command": "subscribe", "operation_id": "bg"}')
            assert orjson.loads(ws.recv(timeout=5))["status"] == "subscribed"
            store.append(Event("progress", "bg", progress_data(0.3)))
            assert orjson.loads(ws.recv(timeout=5))["seq"] == 1
            bridge.stop_background()
            assert not bridge.is_running()
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
            assert ws.close_code == 1001
    finally:
        bridge.stop_background()


def test_start_background_raises_the_start_up_error(redis_url: str, prefix: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = load_settings({}, redis_url=redis_url, prefix=prefix)
        with pytest.raises(OSError):
            bridge.start_background(port=taken.getsockname()[1], settings=settings)
    assert not bridge.is_running()


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=8,
)
COMMAND = st.fixed_dictionaries(
    {"command": st.sampled_from([*COMMANDS, "bogus", ""]) | JSON},
    optional={
        "operation_id": st.text(max_size=300) | JSON,
        "since": st.integers(min_value=-5, max_value=2**40) | JSON,
        "limit": st.integers(min_value=-5, max_value=5000) | JSON,
        "status": st.sampled_from(["active", "finished", "running"]) | JSON,
        "operation_type": st.text(max_size=20) | JSON,
        "request_id": st.integers(min_value=-(2**63), max_value=2**63 - 1)
        | st.text(max_size=300)
        | JSON,
    },
)
FRAME = (
    COMMAND.map(lambda message: orjson.dumps(message).decode())
    | JSON.map(lambda value: orjson.dumps(value).decode())
    | st.text(max_size=200)
    | st.binary(max_size=200)
)


def test_random_frames_get_one_reply_each_and_the_bridge_keeps_serving(
    embedded: bridge.Bridge, store: EventStore
) -> None:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(frames=st.lists(FRAME, min_size=1, max_size=12))
    def one_connection(frames: list[str | bytes]) -> None:
        with connect(embedded.url) as ws:
            ws.recv(timeout=5)
            for frame in frames:
                ws.send(frame)
                reply = orjson.loads(ws.recv(timeout=5))
                assert isinstance(reply, dict)
                if reply.get("status") == "error":
                    assert reply["code"] in {"bad_request", "unknown_command", "not_found"}
                    assert reply["message"]
                else:
                    assert reply.keys() & {"status", "operation", "operations", "stats"}
            ws.send('{"command": "ping", "request_id": "last"}')
            reply = orjson.loads(ws.recv(timeout=5))
            assert (reply["status"], reply["request_id"]) == ("pong", "last")

    one_connection()
    # Afterwards a well-behaved client is served as usual.
    with connect(embedded.url) as ws:
        ws.recv(timeout=5)
        ws.send('{"command": "subscribe", "operation_id": "after"}')
        assert orjson.loads(ws.recv(timeout=5))["status"] == "subscribed"
        store.append(Event("progress", "after", progress_data(1.0)))
        assert orjson.loads(ws.recv(timeout=5))["seq"] == 1
