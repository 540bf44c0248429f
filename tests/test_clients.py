"""The Python client, the terminal commands and the example client against a real bridge,
a real Celery worker and a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
from bridge_helpers import RestartableBridge, eventually, running_bridge
from celery import Celery
from helpers import AUTH_SECRET, ROOT_DIR, events_of, one_line, taskcast, wait_finished

import taskcast.client as client_module
from taskcast import mint_token
from taskcast.bridge import Bridge
from taskcast.client import BridgeUnavailable, CommandError, SyncClient, TaskcastClient
from taskcast.embedded_redis import EmbeddedRedis, free_port
from taskcast.events import Event, log_data, status_data
from taskcast.store import EventStore


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [event["seq"] for event in events]


async def test_watch_yields_every_event_once_and_ends_after_the_terminal_one(
    task_app: Celery, store: EventStore, restartable_bridge: RestartableBridge
) -> None:
    bridge = restartable_bridge
    result = task_app.send_task("demo.web_search", kwargs={"queries": 4, "delay": 0.05})
    async with TaskcastClient(bridge.url) as client:
        events = [event async for event in client.watch(result.id)]
        assert (await client.get_operation(result.id))["status"] == "completed"
        with pytest.raises(CommandError) as missing:
            await client.get_operation("no-such-operation")
        assert missing.value.code == "not_found"
    assert events == events_of(store, result.id)
    assert seqs(events) == list(range(1, len(events) + 1))
    assert events[-1]["event_type"] == "completed"


async def test_list_operations_by_type_from_the_client(store: EventStore, bridge: Bridge) -> None:
    for n, kind in enumerate(["reports.daily", "mail.send", "reports.weekly"]):
        store.append(Event("status", f"op{n}", status_data("queued"), operation_type=kind))
    async with TaskcastClient(bridge.url) as client:
        reports = await client.list_operations(operation_type="reports.*")
        assert [op["operation_id"] for op in reports] == ["op2", "op0"]
        page = await client.list_operations("active", 1, 1, operation_type="reports.*")
        assert [op["operation_id"] for op in page] == ["op0"]
        assert await client.list_operations(operation_type="reports.monthly") == []


async def test_watch_resumes_across_a_bridge_restart_without_gap_or_duplicate(
    task_app: Celery, store: EventStore, restartable_bridge: RestartableBridge
) -> None:
    first = restartable_bridge
    result = task_app.send_task("demo.orchestrate", kwargs={"steps": 6, "delay": 0.3})
    received: list[dict[str, Any]] = []
    async with TaskcastClient(first.url) as client:
        watch = client.watch(result.id)
        async for event in watch:
            received.append(event)
            if event["event_type"] == "progress":
                break
        await asyncio.to_thread(first.stop)
        await asyncio.to_thread(first.start)
        received.extend(
            [event async for event in client.watch(result.id, since=received[-1]["seq"])]
        )
    wait_finished(store, result.id)
    assert seqs(received) == list(range(1, len(events_of(store, result.id)) + 1))
    assert received[-1]["event_type"] == "completed"


async def test_close_while_waiting_to_reconnect_returns_and_leaves_no_connection(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "backoff_delay", lambda attempt: 0.3)
    client = await TaskcastClient(bridge.url).connect()
    peer = next(iter(bridge.hub.connections.values()))
    await peer.ws.close(1012, "service restart")
    await asyncio.sleep(0.1)  # the client now waits 0.3 s before reconnecting
    await asyncio.wait_for(client.close(), timeout=3)
    await asyncio.sleep(0.5)  # past the moment it would have reconnected
    assert bridge.hub.connections == {}


ENDING_PROGRAM = """
import asyncio, sys
from websockets.exceptions import ConnectionClosed
from taskcast.client import BridgeUnavailable, TaskcastClient

async def main() -> None:
    client = await TaskcastClient(sys.argv[1]).connect()
    watch = asyncio.ensure_future(anext(client.watch("never-ends")))
    await client.request("ping")  # answered after the watch's subscribe
    print("watching", flush=True)
    sys.stdin.readline()  # the bridge is gone
    while True:  # until the client knows it: a request then waits for a new connection
        try:
            await asyncio.wait_for(client.request("ping"), 0.5)
        except asyncio.TimeoutError:
            return
        except (BridgeUnavailable, ConnectionClosed):
            pass

asyncio.run(main())
print("exited", flush=True)
"""


def test_a_program_that_ends_while_its_watch_waits_for_the_bridge_exits(
    restartable_bridge: RestartableBridge,
) -> None:
    """``asyncio.run`` cancels every task when ``main`` returns (or on Ctrl-C), the
    client's own among them: a watch waiting for a bridge that has gone must not keep
    the program from exiting."""
    program = subprocess.Popen(
        [sys.executable, "-c", ENDING_PROGRAM, restartable_bridge.url],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert program.stdout is not None and program.stdin is not None
        assert program.stdout.readline() == "watching\n"
        restartable_bridge.stop(signal.SIGKILL)
        program.stdin.write("end\n")
        program.stdin.flush()
        out, err = program.communicate(timeout=20)
    finally:
        program.kill()
    assert (program.returncode, out) == (0, "exited\n"), err


async def test_watch_of_a_finished_operation_from_its_last_seq_ends_at_once(
    bridge: Bridge, store: EventStore
) -> None:
    store.append(Event("status", "done", status_data("running")))
    store.append(Event("completed", "done", {"status": "completed", "duration": 0.1}))
    async with TaskcastClient(bridge.url) as client:
        watched = client.watch("done", since=2)
        assert await asyncio.wait_for(anext(watched, None), timeout=3) is None


@contextlib.asynccontextmanager
async def on_own_redis(
    prefix: str,
) -> AsyncIterator[tuple[EmbeddedRedis, EventStore, Bridge, TaskcastClient]]:
    """A bridge on a Redis of the test's own (to stop and start), and a client of it."""
    with EmbeddedRedis() as server:
        store = EventStore(redis.Redis.from_url(server.url), prefix=prefix)
        async with (
            running_bridge(server.url, prefix) as bridge,
            TaskcastClient(bridge.url) as client,
        ):
            yield server, store, bridge, client


async def test_watch_resubscribes_once_the_store_is_back_when_a_resume_found_it_down(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "backoff_delay", lambda attempt: 0.1)
    async with on_own_redis(prefix) as (server, store, bridge, client):
        first = asyncio.ensure_future(anext(client.watch("op")))
        await eventually(lambda: bridge.hub.subscription_count == 1)
        server.stop()
        old = next(iter(bridge.hub.connections.values()))
        await old.ws.close(1012, "service restart")
        # The client reconnects at once; its resubscribe is refused as unavailable.
        await eventually(lambda: bridge.hub.connections.keys() - {old.client_id})
        await asyncio.sleep(0.3)
        server.start()
        await asyncio.to_thread(store.append, Event("status", "op", status_data("queued")))
        assert (await asyncio.wait_for(first, timeout=10))["seq"] == 1


async def test_a_watch_begun_while_the_store_is_down_waits_for_it(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bridge answers ``unavailable`` while its Redis is down: a new watch waits for
    the store, as it waits for a bridge that restarts, instead of raising into the
    application."""
    monkeypatch.setattr(client_module, "backoff_delay", lambda attempt: 0.1)
    async with on_own_redis(prefix) as (server, store, _, client):
        server.stop()
        first = asyncio.ensure_future(anext(client.watch("op")))
        await asyncio.sleep(0)  # the watch's first step sends its subscribe
        # The bridge answers in order: once this is refused, so was the subscribe.
        with pytest.raises(CommandError, match="unavailable"):
            await client.get_operation("op")
        assert not first.done()
        server.start()
        await asyncio.to_thread(store.append, Event("status", "op", status_data("queued")))
        assert (await asyncio.wait_for(first, timeout=10))["seq"] == 1


async def test_watch_follows_a_history_into_a_new_epoch_when_redis_restarts_empty(
    prefix: str,
) -> None:
    """Seqs start again at 1 after Redis lost the history: the watch takes them as new."""
    with EmbeddedRedis() as server:
        store = EventStore(redis.Redis.from_url(server.url), prefix=prefix)
        store.append(Event("status", "op", status_data("running")))
        async with (
            running_bridge(server.url, prefix) as bridge,
            TaskcastClient(bridge.url) as client,
        ):
            watch = client.watch("op")
            received = [await anext(watch)]
            for number in range(1, 4):
                await asyncio.to_thread(
                    store.append, Event("log", "op", log_data("info", str(number)))
                )
                received.append(await asyncio.wait_for(anext(watch), 5))
            await asyncio.to_thread(server.stop)
            await asyncio.to_thread(server.start)  # empty
            for number in range(4, 7):
                await asyncio.to_thread(
                    store.append, Event("log", "op", log_data("info", str(number)))
                )
            await asyncio.to_thread(store.append, Event("completed", "op", {"status": "completed"}))
            received += [event async for event in watch]
    lines = [event["data"]["message"] for event in received if event["event_type"] == "log"]
    assert lines == ["1", "2", "3", "4", "5", "6"] and received[-1]["event_type"] == "completed"
    epochs = [event["epoch"] for event in received]
    assert len(set(epochs)) == 2 and epochs == sorted(epochs)
    assert [event["seq"] for event in received] == [1, 2, 3, 4, 1, 2, 3, 4]


def test_sync_client_for_scripts(
    run_task: Callable[..., Any], restartable_bridge: RestartableBridge
) -> None:
    done = run_task("demo.generate_code", {"lines": 3})
    failed = run_task("demo.flaky", {"steps": 4, "fail_at": 0.5})
    with SyncClient(restartable_bridge.url) as client:
        assert [e["seq"] for e in client.watch(done.id)] == seqs(done.events)
        assert client.get_operation(failed.id)["status"] == "failed"
        finished = {op["operation_id"] for op in client.list_operations("finished")}
        assert {done.id, failed.id} <= finished
        _, second = client.list_operations(limit=2)
        assert client.list_operations(limit=1, offset=1) == [second]
        assert client.get_stats()["connected_clients"] >= 1


def test_clients_report_an_absent_bridge_in_one_line() -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"
    with pytest.raises(BridgeUnavailable):
        SyncClient(url)
    for command in (
        ["watch", "some-id"],
        ["stats"],
        ["monitor", "--duration", "1"],
        ["cancel", "x"],
    ):
        run = taskcast(*command, "--url", url, env=dict(os.environ))
        assert run.returncode == 3, run.stderr
        line = one_line(run)
        assert line.startswith(f"taskcast {command[0]}: cannot reach the taskcast bridge at")
        assert "--url" in line


def test_watch_command_exit_codes(
    run_task: Callable[..., Any],
    restartable_bridge: RestartableBridge,
) -> None:
    url = restartable_bridge.url
    done = run_task("demo.web_search", {"queries": 2})
    failed = run_task("demo.flaky", {"steps": 4, "fail_at": 0.5})
    ok = taskcast("watch", done.id, "--url", url, env=restartable_bridge.env)
    assert ok.returncode == 0, ok.stderr
    assert "completed" in ok.stdout and "Query 2: 3 results" in ok.stdout
    bad = taskcast("watch", failed.id, "--url", url, env=restartable_bridge.env)
    assert bad.returncode == 1
    assert "failed" in bad.stdout and "CodeValidationError" in bad.stdout


def test_watch_of_a_completed_task_no_longer_says_it_waits_for_a_worker(
    run_task: Callable[..., Any], restartable_bridge: RestartableBridge
) -> None:
    """Its queued status said "Waiting for a worker"; running (no message) replaced it."""
    done = run_task("test.plain_add", {"a": 1, "b": 2})
    assert done.events[0]["data"]["message"] == "Waiting for a worker"
    shown = taskcast("watch", done.id, "--url", restartable_bridge.url, env=restartable_bridge.env)
    assert shown.returncode == 0, shown.stderr
    assert "completed" in shown.stdout and "Waiting for a worker" not in shown.stdout


def test_submit_with_watch_follows_the_task_to_completion(
    task_app: Celery,
    store: EventStore,
    restartable_bridge: RestartableBridge,
) -> None:
    url = restartable_bridge.url
    run = taskcast(
        "submit",
        "demo.generate_code",
        "--arg",
        "lines=4",
        "--arg",
        "request=a parser",
        "--watch",
        "--url",
        url,
        env=restartable_bridge.env,
    )
    assert run.returncode == 0, run.stderr
    operation_id = run.stdout.strip().splitlines()[0]
    assert store.snapshot(operation_id)["status"] == "completed"
    assert "completed" in run.stderr
    queued = events_of(store, operation_id)[0]
    assert queued["data"]["status"] == "queued"
    bad = taskcast("submit", "demo.generate_code", "--arg", "novalue", env=restartable_bridge.env)
    assert bad.returncode == 2 and "key=value" in bad.stderr


def test_monitor_and_stats_commands(
    task_app: Celery,
    store: EventStore,
    restartable_bridge: RestartableBridge,
) -> None:
    url = restartable_bridge.url
    monitor = subprocess.Popen(
        [sys.executable, "-m", "taskcast", "monitor", "--url", url, "--duration", "6"],
        env=restartable_bridge.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert monitor.stdout is not None
    result = None
    lines: list[str] = []
    for line in monitor.stdout:
        lines.append(line)
        if result is None:
            result = task_app.send_task("demo.generate_code", kwargs={"lines": 3, "delay": 0.3})
        if result.id in line and " completed " in line:
            break
    monitor.kill()
    monitor.wait()
    assert any(result.id in line and "100.0%" in line for line in lines)
    stats = taskcast("stats", "--json", "--url", url, env=restartable_bridge.env)
    assert stats.returncode == 0 and '"connected_clients"' in stats.stdout


def test_example_python_client_modes(
    run_task: Callable[..., Any],
    restartable_bridge: RestartableBridge,
) -> None:
    env = dict(
        restartable_bridge.env, TASKCAST_URL=restartable_bridge.url, PYTHONPATH=str(ROOT_DIR)
    )
    example = [sys.executable, str(ROOT_DIR / "examples" / "websocket_client_python.py")]
    done = run_task("demo.generate_code", {"lines": 2})
    streamed = subprocess.run([*example, done.id], env=env, capture_output=True, text=True)
    assert streamed.returncode == 0, streamed.stderr
    assert f"#{len(done.events):<4} completed in" in streamed.stdout
    stats = subprocess.run([*example, "stats"], env=env, capture_output=True, text=True)
    assert '"connected_clients"' in stats.stdout
    session = subprocess.run(
        [*example, "interactive"],
        input=f'ping\n{{"command": "get_operation", "operation_id": "{done.id}"}}\n[1]\n\n',
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert '"pong"' in session.stdout and '"completed"' in session.stdout
    assert "not a command" in session.stdout


async def test_watch_raises_when_the_bridge_does_not_come_back(
    task_app: Celery, restartable_bridge: RestartableBridge
) -> None:
    result = task_app.send_task("demo.orchestrate", kwargs={"steps": 4, "delay": 0.3})
    client = TaskcastClient(restartable_bridge.url, max_reconnect_time=1.0)
    async with client:
        received = []
        with pytest.raises(BridgeUnavailable, match="did not come back within 1s"):
            async for event in client.watch(result.id):
                received.append(event)
                if len(received) == 2:
                    await asyncio.to_thread(restartable_bridge.stop)
    seqs_seen = [e["seq"] for e in received]  # frames already sent may still arrive
    assert seqs_seen == list(range(1, len(received) + 1)) and len(received) >= 2
    assert received[-1]["event_type"] != "completed"


def test_cli_says_what_is_wrong_instead_of_hanging(
    task_app: Celery, restartable_bridge: RestartableBridge
) -> None:
    env, url = restartable_bridge.env, restartable_bridge.url
    unknown_task = taskcast("submit", "no.such.task", env=env)
    assert unknown_task.returncode == 4
    assert "has the task 'no.such.task' registered" in one_line(unknown_task)
    assert unknown_task.stdout == ""  # nothing was sent, so no id to follow

    started = time.monotonic()
    unknown_id = taskcast("watch", "never-submitted", "--wait", "1", "--url", url, env=env)
    assert unknown_id.returncode == 4 and time.monotonic() - started < 20
    assert "no operation never-submitted in the event store" in one_line(unknown_id)

    http_url = url.replace("ws://", "http://")
    wrong_scheme = taskcast("watch", "anything", "--url", http_url, env=env)
    assert wrong_scheme.returncode == 2
    assert "ws://HOST:PORT/ws" in one_line(wrong_scheme)


async def test_several_watches_and_monitors_on_one_client_each_get_every_event_once(
    bridge: Bridge, store: EventStore
) -> None:
    def emit(count: int, terminal: bool = False) -> None:
        for i in range(count):
            store.append(Event("status", "shared", status_data("processing", f"step {i}")))
        if terminal:
            store.append(Event("completed", "shared", {"status": "completed"}))

    async def collect(iterator: AsyncIterator[dict], until: int) -> list[int]:
        seqs = []
        async for event in iterator:
            seqs.append(event["seq"])
            if event["seq"] == until:
                break
        return seqs

    store.append(Event("status", "shared", status_data("queued")))
    async with TaskcastClient(bridge.url) as client:
        first_monitor = await client.monitor()
        second_monitor = await client.monitor()
        with pytest.raises(ValueError, match="operation_type"):
            await client.monitor("other.type")
        early = asyncio.create_task(collect(client.watch("shared"), 12))
        await eventually(lambda: client.snapshot("shared") is not None)
        emit(5)
        later = asyncio.create_task(collect(client.watch("shared", since=3), 12))
        from_start = asyncio.create_task(collect(client.watch("shared"), 12))
        await eventually(lambda: len(client._subs["shared"].watchers) == 3)
        emit(5, terminal=True)
        monitors = [
            asyncio.create_task(collect(monitor, 12)) for monitor in (first_monitor, second_monitor)
        ]
        assert await early == list(range(1, 13))
        assert await later == list(range(4, 13))
        assert await from_start == list(range(1, 13))
        # Live events, plus seq 1 from a watch's replay on the same connection: once each.
        assert await monitors[0] == await monitors[1] == list(range(1, 13))


def test_watch_says_when_the_bridge_wants_a_token(
    secured_bridge: RestartableBridge, store: EventStore
) -> None:
    store.append(Event("status", "op-guarded", status_data("queued")))
    env = {**secured_bridge.env, "TASKCAST_TOKEN": ""}
    without = taskcast("watch", "op-guarded", "--url", secured_bridge.url, env=env)
    other = mint_token("op-other", secret=AUTH_SECRET)
    wrong = taskcast("watch", "op-guarded", "--url", secured_bridge.url, "--token", other, env=env)
    for run in (without, wrong):
        assert run.returncode == 5, run.stderr
        assert "read scope" in one_line(run) and "--token" in run.stderr


async def test_requests_over_the_rate_limit_fail_instead_of_waiting_for_ever(
    redis_url: str, prefix: str
) -> None:
    """The bridge answers one refusal a second and drops the rest: the client must still
    settle every request (replies keep the commands' order)."""
    async with (
        running_bridge(redis_url, prefix, command_rate=20, command_burst=20) as bridge,
        TaskcastClient(bridge.url) as client,
    ):
        results = await asyncio.wait_for(
            asyncio.gather(*(client.get_stats() for _ in range(200)), return_exceptions=True),
            timeout=10,
        )
        refused = [r for r in results if isinstance(r, CommandError)]
        answered = [r for r in results if isinstance(r, dict)]
        assert len(refused) + len(answered) == 200
        assert {error.code for error in refused} == {"rate_limited"}
        assert 20 <= len(answered) < 200

        async def served() -> bool:
            try:
                return (await client.get_stats())["connected_clients"] == 1
            except CommandError as exc:  # still within the refusals' second
                assert exc.code == "rate_limited"
                return False

        await eventually(served, timeout=5)  # the connection lives and serves again
