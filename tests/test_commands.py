"""Command parsing and reply frames, without sockets: every malformed input gets its error."""

from __future__ import annotations

import orjson
import pytest

from taskcast.bridge.commands import (
    BAD_REQUEST,
    MAX_ID_LENGTH,
    UNKNOWN_COMMAND,
    Command,
    CommandError,
    connected_frame,
    encode,
    error_frame,
    parse_command,
    subscribed_frame,
)


def parse(message: object) -> Command:
    return parse_command(orjson.dumps(message))


def error_of(raw: str | bytes) -> CommandError:
    with pytest.raises(CommandError) as caught:
        parse_command(raw)
    return caught.value


def test_every_command_parses_with_its_fields_and_defaults() -> None:
    assert parse({"command": "subscribe", "operation_id": "a"}) == Command("subscribe", None, "a")
    assert parse({"command": "subscribe", "operation_id": "a", "since": 7, "request_id": 3}) == (
        Command("subscribe", 3, "a", since=7)
    )
    assert parse({"command": "unsubscribe", "operation_id": "a"}).operation_id == "a"
    assert parse({"command": "subscribe_all"}).operation_type is None
    assert parse({"command": "subscribe_all", "operation_type": "demo.x"}).operation_type == (
        "demo.x"
    )
    assert parse({"command": "unsubscribe_all", "request_id": "r"}).request_id == "r"
    assert parse({"command": "get_operation", "operation_id": "a"}).name == "get_operation"
    listed = parse({"command": "list_operations"})
    assert (listed.status, listed.limit) == (None, 50)
    listed = parse({"command": "list_operations", "status": "active", "limit": 5})
    assert (listed.status, listed.limit, listed.offset) == ("active", 5, 0)
    assert parse({"command": "list_operations", "offset": 2000}).offset == 2000
    by_type = parse({"command": "list_operations", "operation_type": "reports.*", "limit": 5})
    assert (by_type.operation_type, by_type.limit) == ("reports.*", 5)
    assert parse({"command": "get_stats"}).name == "get_stats"
    assert parse({"command": "ping", "request_id": 1.5}).request_id == 1.5


def test_list_limit_is_capped_at_1000_and_null_fields_mean_absent() -> None:
    assert parse({"command": "list_operations", "limit": 5000}).limit == 1000
    assert parse({"command": "subscribe", "operation_id": "a", "since": None}).since == 0
    assert parse({"command": "list_operations", "status": None, "limit": None}).limit == 50


def test_unknown_fields_are_ignored_and_bytes_frames_are_accepted() -> None:
    assert parse_command(b'{"command":"ping","extra":[1,2]}') == Command("ping")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not json", "frame is not valid JSON"),
        ("", "frame is not valid JSON"),
        (b"\xff\xfe{}", "frame is not valid JSON"),
        ("[1, 2]", "frame must be a JSON object"),
        ('"ping"', "frame must be a JSON object"),
        ("null", "frame must be a JSON object"),
        ('{"command": "ping", "request_id": {"a": 1}}', "request_id must be a string or a number"),
        ('{"command": "ping", "request_id": true}', "request_id must be a string or a number"),
    ],
)
def test_unparseable_frames_are_bad_requests_without_request_id(
    raw: str | bytes, message: str
) -> None:
    error = error_of(raw)
    assert (error.code, error.message, error.request_id) == (BAD_REQUEST, message, None)


@pytest.mark.parametrize(
    ("message", "text"),
    [
        ({}, "command is required"),
        ({"command": 5}, "command must be a string"),
        ({"command": "subscribe"}, "operation_id is required"),
        ({"command": "subscribe", "operation_id": 12}, "operation_id must be a string"),
        ({"command": "subscribe", "operation_id": ""}, "operation_id must be 1 to 256"),
        ({"command": "subscribe", "operation_id": "x" * 257}, "operation_id must be 1 to 256"),
        ({"command": "subscribe", "operation_id": "a", "since": -1}, "since must be an integer"),
        ({"command": "subscribe", "operation_id": "a", "since": "3"}, "since must be an integer"),
        ({"command": "subscribe", "operation_id": "a", "since": 2.5}, "since must be an integer"),
        ({"command": "subscribe", "operation_id": "a", "since": True}, "since must be an integer"),
        ({"command": "unsubscribe"}, "operation_id is required"),
        ({"command": "get_operation", "operation_id": ["a"]}, "operation_id must be a string"),
        ({"command": "subscribe_all", "operation_type": 3}, "operation_type must be a string"),
        ({"command": "list_operations", "limit": 0}, "limit must be an integer >= 1"),
        ({"command": "list_operations", "limit": "10"}, "limit must be an integer >= 1"),
        ({"command": "list_operations", "status": 1}, "status must be a string"),
        ({"command": "list_operations", "offset": -1}, "offset must be an integer >= 0"),
        ({"command": "list_operations", "operation_type": 1}, "operation_type must be a string"),
        ({"command": "list_operations", "operation_type": ""}, "operation_type must be 1 to 256"),
    ],
)
def test_wrong_fields_are_bad_requests_that_echo_the_request_id(message: dict, text: str) -> None:
    error = error_of(orjson.dumps({**message, "request_id": "r1"}))
    assert error.code == BAD_REQUEST
    assert error.message.startswith(text)
    assert error.request_id == "r1"


def test_unknown_command_echoes_request_id_and_shortens_huge_names() -> None:
    error = error_of(orjson.dumps({"command": "launch", "request_id": 9}))
    assert (error.code, error.request_id) == (UNKNOWN_COMMAND, 9)
    assert "launch" in error.message
    error = error_of(orjson.dumps({"command": "x" * 10_000}))
    assert error.code == UNKNOWN_COMMAND and len(error.message) < 100


def test_oversized_request_id_is_refused() -> None:
    error = error_of(orjson.dumps({"command": "ping", "request_id": "r" * (MAX_ID_LENGTH + 1)}))
    assert error.code == BAD_REQUEST and error.request_id is None


def test_error_frame_matches_protocol_shape() -> None:
    assert orjson.loads(error_frame("bad_request", "operation_id is required", 3)) == {
        "status": "error",
        "code": "bad_request",
        "message": "operation_id is required",
        "request_id": 3,
    }
    assert "request_id" not in orjson.loads(CommandError("not_found", "gone").frame())


def test_encode_echoes_request_id_only_when_given() -> None:
    assert orjson.loads(encode({"status": "pong"}, "a")) == {"status": "pong", "request_id": "a"}
    assert orjson.loads(encode({"status": "pong"})) == {"status": "pong"}


def test_connected_frame_carries_client_id_protocol_and_iso_timestamp() -> None:
    frame = orjson.loads(connected_frame("c1", "taskcast/0.1.0", now=1735734000.5))
    assert frame["event_type"] == "connected" and frame["operation_id"] == "system"
    assert "seq" not in frame and frame["timestamp"] == 1735734000.5
    data = frame["data"]
    assert data["client_id"] == "c1" and data["protocol"] == 1
    assert data["server"] == "taskcast/0.1.0"
    assert data["timestamp"] == "2025-01-01T12:20:00.500000+00:00"
    assert data["message"]


def test_subscribed_frame_has_every_protocol_field() -> None:
    command = Command("subscribe", "q", "op", since=2)
    reply = orjson.loads(subscribed_frame(command, None, False, 0))
    assert reply == {
        "status": "subscribed",
        "operation_id": "op",
        "operation": None,
        "recovered": False,
        "replayed": 0,
        "request_id": "q",
    }
