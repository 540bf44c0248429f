"""``taskcast serve`` as a real process: start-up line, signals, restarts, bad configuration."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import orjson
import pytest
from bridge_helpers import BridgeProcess
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from taskcast.events import Event, progress_data, status_data
from taskcast.store import EventStore


def serve(redis_url: str, prefix: str) -> BridgeProcess:
    process = BridgeProcess("--port", "0", "--redis-url", redis_url, "--prefix", prefix)
    process.wait_listening()
    return process


def command(ws: ClientConnection, **message: object) -> dict:
    ws.send(orjson.dumps(message).decode())
    return orjson.loads(ws.recv(timeout=5))


def collect_events(ws: ClientConnection, count: int) -> list[dict]:
    frames = [orjson.loads(ws.recv(timeout=5)) for _ in range(count)]
    assert all("seq" in f for f in frames), frames
    return frames


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_closes_every_connection_with_1001_and_exits_0(
    redis_url: str, prefix: str, signum: int
) -> None:
    process = serve(redis_url, prefix)
    try:
        with contextlib.ExitStack() as stack:
            clients = [stack.enter_context(connect(process.url)) for _ in range(3)]
            for ws in clients:
                ws.recv(timeout=5)
            command(clients[0], command="subscribe", operation_id="x")
            started = time.monotonic()
            assert process.stop(signum) == 0
            assert time.monotonic() - started < 5
            for ws in clients:
                with pytest.raises(ConnectionClosed):
                    ws.recv(timeout=5)
                assert ws.close_code == 1001
    finally:
        process.kill()


def test_a_client_resumes_with_since_after_the_bridge_restarts(
    redis_url: str, prefix: str, store: EventStore
) -> None:
    first = serve(redis_url, prefix)
    try:
        with connect(first.url) as ws:
            ws.recv(timeout=5)
            command(ws, command="subscribe", operation_id="job")
            store.append(Event("status", "job", status_data("queued")))
            store.append(Event("progress", "job", progress_data(0.2)))
            last = collect_events(ws, 2)[-1]["seq"]
            assert first.stop() == 0
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
            assert ws.close_code == 1001
    finally:
        first.kill()

    # Work goes on while no bridge runs.
    store.append(Event("progress", "job", progress_data(0.4)))
    store.append(Event("progress", "job", progress_data(0.6)))

    second = serve(redis_url, prefix)
    try:
        with connect(second.url) as ws:
            ws.recv(timeout=5)
            reply = command(ws, command="subscribe", operation_id="job", since=last)
            assert reply["replayed"] == 2 and reply["recovered"] is True
            store.append(Event("progress", "job", progress_data(0.8)))
            assert [e["seq"] for e in collect_events(ws, 3)] == [3, 4, 5]
    finally:
        assert second.stop() == 0


def run_invalid(*args: str) -> BridgeProcess:
    """Run ``taskcast serve`` expecting it to refuse to start; never leave it running."""
    process = BridgeProcess(*args)
    try:
        process.process.wait(15)
    finally:
        process.kill()
    time.sleep(0.05)  # let the collector thread read the last line
    return process


@pytest.mark.parametrize(
    ("args", "setting"),
    [
        (("--port", "notaport"), "TASKCAST_PORT"),
        (("--port", "70000"), "TASKCAST_PORT"),
        (("--redis-url", "http://x"), "TASKCAST_REDIS_URL"),
        (("--prefix", "has space"), "TASKCAST_PREFIX"),
    ],
)
def test_bad_configuration_is_one_line_naming_the_setting_and_exit_2(
    args: tuple[str, ...], setting: str
) -> None:
    process = run_invalid(*args)
    assert process.process.returncode == 2
    assert len(process.lines) == 1 and setting in process.lines[0]
    assert "Traceback" not in process.lines[0]


def test_a_port_in_use_is_a_one_line_error(redis_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = run_invalid("--port", str(port), "--redis-url", redis_url)
    assert process.process.returncode == 2
    assert not any("Traceback" in line for line in process.lines)
    assert "TASKCAST_PORT" in process.lines[-1] and str(port) in process.lines[-1]


@pytest.mark.parametrize("command", [["serve"], ["stats"], ["watch", "some-id"], ["demo"]])
def test_a_bad_environment_variable_stops_every_command_in_one_line(command: list[str]) -> None:
    env = dict(os.environ, TASKCAST_HISTORY_MAXLEN="abc")
    run = subprocess.run(
        [sys.executable, "-m", "taskcast", *command], env=env, capture_output=True, text=True
    )
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        f"taskcast {command[0]}: TASKCAST_HISTORY_MAXLEN='abc' is invalid: "
        "must be a whole number >= 1"
    ]
