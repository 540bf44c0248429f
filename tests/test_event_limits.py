"""PROTOCOL.md 1.2 "Limits": every field of an event is bounded, and no stored event is
larger than TASKCAST_MAX_EVENT_BYTES, whatever a task puts in it.

The capping function is searched for a counterexample with hypothesis; then real tasks
on a real worker send names millions of characters long, and a client left at
websockets' defaults (frames up to 1 MiB) must get every frame of them.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import orjson
import pytest
from bridge_helpers import frames_until_end
from celery import Celery
from helpers import wait_finished
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskcast.bridge import Bridge
from taskcast.events import (
    ERROR_TYPE_CHARS,
    KEY_CHARS,
    OPERATION_TYPE_CHARS,
    PROTOCOL_FIELDS,
    STATUS_CHARS,
    Event,
    EventTooLarge,
    capped,
    error_data,
    progress_data,
    status_data,
)
from taskcast.store import EventStore
from taskcast.tasks import Emitter
from taskcast.tasks.producer import Producer
from taskcast.worker_config import Settings

EVENT_TYPES = ("status", "progress", "log", "result", "completed", "error")
# The largest seq and an epoch as the store's script writes them into an event.
STORED_SEQ = b"18446744073709551615" + b',"epoch":"' + b"0" * 19 + b'"'

NAME_LIMITS = {"status": STATUS_CHARS, "level": STATUS_CHARS, "error_type": ERROR_TYPE_CHARS}
# Strings of any characters (control characters take 6 bytes of JSON), some very long.
texts = st.text() | st.builds(
    lambda text, times: text * times, st.text(min_size=1, max_size=4), st.integers(1, 3000)
)
leaves = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | texts
json_values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=20) | st.dictionaries(texts, inner, max_size=20),
    max_leaves=60,
)
hex_ids = st.text("0123456789abcdef", min_size=16, max_size=16)
events = st.builds(
    Event,
    event_type=st.sampled_from(EVENT_TYPES),
    operation_id=st.text(max_size=100),
    data=st.dictionaries(st.sampled_from(sorted(PROTOCOL_FIELDS)) | texts, json_values),
    timestamp=st.floats(),
    operation_type=st.none() | texts,
    metadata=st.none() | st.dictionaries(texts, json_values),
    reopens=st.booleans(),
    token=st.integers(0, 2**63),
    trace_id=st.none() | texts | st.builds(lambda a, b: a + b, hex_ids, hex_ids),
    span_id=st.none() | texts | hex_ids,
)


def keys_within(value: Any, limit: int) -> bool:
    """Whether every key of ``value``, at any depth, is at most ``limit`` characters."""
    if isinstance(value, dict):
        return all(len(k) <= limit and keys_within(v, limit) for k, v in value.items())
    if isinstance(value, list):
        return all(keys_within(item, limit) for item in value)
    return True


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=events, max_bytes=st.integers(1024, 1 << 14))
def test_no_capped_event_is_larger_than_the_limit(event: Event, max_bytes: int) -> None:
    out = capped(event, max_bytes)
    prefix, suffix = out.encode()
    frame = prefix + STORED_SEQ + suffix  # what clients receive, as the store joins it
    assert len(frame) + len(orjson.dumps(out.metadata or {})) <= max_bytes
    received = orjson.loads(frame)
    assert (received["event_type"], received["operation_id"]) == (
        event.event_type,
        event.operation_id,
    )
    assert (out.timestamp, out.token, out.kind) == (event.timestamp, event.token, event.kind)
    data = received["data"]
    for name, chars in NAME_LIMITS.items():
        assert not isinstance(data.get(name), str) or len(data[name]) <= chars
    assert len(out.operation_type or "") <= OPERATION_TYPE_CHARS
    assert keys_within(data, KEY_CHARS) and keys_within(out.metadata, KEY_CHARS)
    assert out.trace_id is None or len(out.trace_id) == 32
    if "truncated" not in data:  # nothing was cut: the event is the task's own
        assert data == orjson.loads(orjson.dumps(event.data))
        assert out.metadata == event.metadata and out.operation_type == event.operation_type


def test_each_name_is_cut_to_its_limit_and_flagged() -> None:
    huge = "S" * 2_000_000
    status = capped(Event("status", "op", status_data(huge, details={huge: {huge: 1}})), 65536)
    assert status.data["status"] == "S" * (STATUS_CHARS - 3) + "..."
    key = "S" * (KEY_CHARS - 3) + "..."
    assert status.data["details"] == {key: {key: 1}}
    assert status.data["truncated"] is True
    error = capped(Event("error", "op", error_data("boom", huge), operation_type=huge), 65536)
    assert error.data == {
        "error": "boom",
        "error_type": "S" * (ERROR_TYPE_CHARS - 3) + "...",
        "status": "failed",
        "truncated": True,
    }
    assert error.operation_type == "S" * (OPERATION_TYPE_CHARS - 3) + "..."
    small = Event("log", "op", {"level": "info", "message": "fits"}, trace_id="x", span_id="y")
    assert capped(small, 65536) == replace(small, trace_id=None, span_id=None)


def test_an_event_of_many_small_fields_keeps_only_the_protocols() -> None:
    data = {**status_data("processing", "working"), **{f"field{i}": i for i in range(50_000)}}
    out = capped(Event("status", "op", data, metadata={f"m{i}": i for i in range(50_000)}), 4096)
    assert out.data == {
        "status": "processing",
        "message": "working",
        "details": {},
        "truncated": True,
    }
    assert out.metadata is None and out.kind == b"n"


def test_deep_cyclic_shared_and_huge_data_is_stored_cut_not_lost() -> None:
    deep: list[Any] = []
    for _ in range(10_000):  # far past the nesting orjson refuses
        deep = [deep]
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    shared = [list(range(1000))] * 1000  # a million values, one list a thousand times
    details = {"deep": deep, "cyclic": cyclic, "shared": shared, "many": list(range(2_000_000))}
    out = capped(Event("progress", "op", progress_data(0.5, "big", details)), 65536)
    prefix, suffix = out.encode()
    assert len(prefix + STORED_SEQ + suffix) <= 65536
    assert out.data["truncated"] and out.data["progress"] == 0.5 and out.data["message"] == "big"


def test_only_an_id_longer_than_the_limit_allows_is_refused(
    producer: Producer, store: EventStore
) -> None:
    too_long = "i" * 100_000  # cutting it would file the event under another operation
    with pytest.raises(EventTooLarge, match="100000 characters"):
        capped(Event("completed", too_long, {"status": "completed"}), 65536)
    Emitter(producer).emit_completed(too_long)  # neither raises nor stores anything
    assert producer.stats()["invalid"] == 1 and store.snapshot(too_long) is None


async def test_a_task_with_names_of_megabytes_reaches_a_default_websockets_client(
    task_app: Celery, task_settings: Settings, bridge: Bridge, store: EventStore
) -> None:
    op = str(uuid.uuid4())
    task_app.send_task("test.oversized_names", task_id=op)
    frames = await frames_until_end(bridge.url, op)  # before: a 2,000,223-byte frame, 1009
    limit = task_settings.max_event_bytes
    assert max(len(frame.encode()) for frame in frames) <= limit
    events = [event for event in map(orjson.loads, frames) if "seq" in event]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    stored = [raw for _, raw in store.history(op)]
    assert max(len(raw) for raw in stored) <= limit
    assert [orjson.loads(raw) for raw in stored] == events
    status, progress, log, error = events[2], events[3], events[4], events[5]
    assert status["data"]["status"] == "S" * 61 + "..." and status["data"]["truncated"]
    assert set(progress["data"]["details"]) == {"K" * 125 + "...", "nested"}
    assert progress["data"]["details"]["nested"] == [{"k" * 125 + "...": "v"}]
    assert log["data"]["level"] == "L" * 61 + "..."
    assert error["data"]["error_type"] == "E" * 125 + "..." and error["data"]["status"] == "failed"
    snapshot = wait_finished(store, op)
    assert (snapshot["status"], snapshot["error_type"]) == ("failed", "E" * 125 + "...")


def test_a_status_of_two_megabytes_is_stored_within_the_limit(
    producer: Producer, store: EventStore
) -> None:
    emitter = Emitter(producer)
    op = emitter.create_operation("big.names")
    emitter.emit_status(op, "S" * 2_000_000)
    (queued, status) = [raw for _, raw in store.history(op)]
    assert len(status) <= producer.settings.max_event_bytes
    assert store.snapshot(op)["status"] == "S" * 61 + "..."
    assert "truncated" not in orjson.loads(queued)["data"]
