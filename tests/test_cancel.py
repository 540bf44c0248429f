"""Cancel (PROTOCOL.md 1.1): a client revokes a running task, which ends ``revoked`` and stops.

Prefork workers kill the task when asked to terminate; every pool stops it
cooperatively at its next helper call. Both are checked with real workers:
the session's in-process threads-pool worker and a ``celery worker``
subprocess with the prefork pool. Cancels come over WebSocket and HTTP, from
the Python clients and from ``taskcast cancel``.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest
from bridge_helpers import WsClient, running_bridge
from celery import Celery, group
from helpers import (
    AUTH_SECRET,
    WorkerProcess,
    events_of,
    one_line,
    taskcast,
    wait_finished,
    wait_for,
    worker_env,
)

from taskcast import mint_token
from taskcast.bridge import Bridge
from taskcast.client import CommandError, SyncClient, TaskcastClient
from taskcast.store import EventStore
from taskcast.worker_config import Settings


@pytest.fixture
async def bridge_for_workers(
    task_settings: Settings, prefix: str, task_app: Celery
) -> AsyncIterator[Bridge]:
    """A bridge on the workers' broker, so its revokes reach them; tokens required."""
    async with running_bridge(
        task_settings.redis_url,
        prefix,
        broker_url=task_settings.broker_url,
        auth_secret=AUTH_SECRET,
    ) as bridge:
        yield bridge


def wait_running(store: EventStore, operation_id: str) -> None:
    def progressing() -> bool:
        snapshot = store.snapshot(operation_id)
        return bool(snapshot and snapshot["status"] == "running" and snapshot["progress"] > 0)

    wait_for(progressing, timeout=15)


async def cancel_over_websocket(bridge: Bridge, operation_id: str, terminate: bool) -> dict:
    token = mint_token([operation_id], scopes=["read", "cancel"], secret=AUTH_SECRET)
    client = await WsClient.open(f"{bridge.url}?token={token}")
    reply = await client.request("cancel", operation_id=operation_id, terminate=terminate)
    again = await client.request("cancel", operation_id=operation_id)
    await client.close()
    assert again["code"] == "bad_request" and "already ended" in again["message"]
    return reply


async def test_cancel_stops_a_task_on_the_threads_pool_at_its_next_helper_call(
    bridge_for_workers: Bridge, task_app: Celery, store: EventStore
) -> None:
    result = task_app.send_task("test.sleep", kwargs={"seconds": 60, "steps": 600})
    await asyncio.to_thread(wait_running, store, result.id)
    started = time.monotonic()
    reply = await cancel_over_websocket(bridge_for_workers, result.id, terminate=False)
    assert (reply["status"], reply["operation_id"]) == ("cancelling", result.id)
    snapshot = wait_finished(store, result.id)
    assert (snapshot["status"], snapshot["error_type"]) == ("revoked", "TaskRevokedError")
    await asyncio.to_thread(result.get, timeout=15, propagate=False)
    assert result.state == "REVOKED"  # as Celery's own revoke reports it, not a failure
    assert time.monotonic() - started < 10  # not the 60 s the task would have slept
    assert [e["event_type"] for e in events_of(store, result.id)][-1] == "error"


async def test_cancelling_a_group_member_fails_its_group(
    bridge_for_workers: Bridge, task_app: Celery, store: EventStore
) -> None:
    sleeper = task_app.signature("test.sleep", kwargs={"seconds": 60, "steps": 600})
    result = group(sleeper, sleeper.clone()).apply_async()
    first, second = (member.id for member in result.results)
    await asyncio.to_thread(wait_running, store, first)
    await cancel_over_websocket(bridge_for_workers, first, terminate=False)
    snapshot = await asyncio.to_thread(wait_finished, store, result.id)
    assert snapshot["status"] == "failed" and snapshot["error_type"] == "TaskRevokedError"
    await cancel_over_websocket(bridge_for_workers, second, terminate=False)
    await asyncio.to_thread(wait_finished, store, second)


async def test_cancel_with_terminate_kills_a_task_on_the_prefork_pool(
    bridge_for_workers: Bridge,
    task_app: Celery,
    store: EventStore,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    worker = worker_process(pool="prefork")
    children = {child.pid for child in worker.pool_children()}
    result = task_app.send_task("test.sleep_unacked", kwargs={"seconds": 60}, queue=worker.queue)
    wait_for(lambda: (store.snapshot(result.id) or {}).get("status") == "processing", 15)
    reply = await cancel_over_websocket(bridge_for_workers, result.id, terminate=True)
    assert reply["status"] == "cancelling"
    assert wait_finished(store, result.id)["status"] == "revoked"
    await asyncio.to_thread(result.get, timeout=15, propagate=False)
    assert result.state == "REVOKED"  # killed by the pool, not finished by itself
    wait_for(lambda: {c.pid for c in worker.pool_children()} != children, timeout=15)


async def test_http_cancel_needs_the_cancel_scope(
    bridge_for_workers: Bridge, task_app: Celery, store: EventStore
) -> None:
    import http.client

    result = task_app.send_task("test.sleep", kwargs={"seconds": 60, "steps": 600})
    await asyncio.to_thread(wait_running, store, result.id)

    def post(token: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", bridge_for_workers.port, timeout=5)
        try:
            path = f"/api/operations/{result.id}/cancel"
            conn.request("POST", path, headers={"Authorization": f"Bearer {token}"})
            return conn.getresponse().status
        finally:
            conn.close()

    read_only = mint_token([result.id], secret=AUTH_SECRET)
    assert await asyncio.to_thread(post, read_only) == 403
    allowed = mint_token([result.id], scopes=["cancel"], secret=AUTH_SECRET)
    assert await asyncio.to_thread(post, allowed) == 202
    assert wait_finished(store, result.id)["status"] == "revoked"
    assert await asyncio.to_thread(post, allowed) == 409  # already ended


async def test_the_python_client_cancels_a_running_task_and_raises_on_refusals(
    bridge_for_workers: Bridge, task_app: Celery, store: EventStore
) -> None:
    result = task_app.send_task("test.sleep", kwargs={"seconds": 60, "steps": 600})
    await asyncio.to_thread(wait_running, store, result.id)
    token = mint_token(
        [result.id, "never-submitted"], scopes=["read", "cancel"], secret=AUTH_SECRET
    )
    async with TaskcastClient(bridge_for_workers.url, token=token) as client:
        reply = await client.cancel(result.id)
        assert (reply["status"], reply["operation_id"]) == ("cancelling", result.id)
        ending = [event async for event in client.watch(result.id)][-1]
        with pytest.raises(CommandError) as again:
            await client.cancel(result.id)
        with pytest.raises(CommandError) as unknown:
            await client.cancel("never-submitted")
    assert (ending["event_type"], ending["data"]["status"]) == ("error", "revoked")
    assert again.value.code == "bad_request" and "already ended" in again.value.message
    assert unknown.value.code == "not_found"
    await asyncio.to_thread(result.get, timeout=15, propagate=False)
    assert result.state == "REVOKED"


async def test_the_sync_client_cancels_a_queued_task(
    bridge_for_workers: Bridge, task_app: Celery, store: EventStore, prefix: str
) -> None:
    """Sent to a queue no worker reads, the task stays queued until it is cancelled."""
    result = task_app.send_task("test.sleep", queue=f"{prefix}nobody")
    assert store.snapshot(result.id)["status"] == "queued"
    token = mint_token([result.id], scopes=["cancel"], secret=AUTH_SECRET)

    def cancel() -> dict:
        with SyncClient(bridge_for_workers.url, token=token) as client:
            return client.cancel(result.id)

    assert (await asyncio.to_thread(cancel))["status"] == "cancelling"
    assert (await asyncio.to_thread(wait_finished, store, result.id))["status"] == "revoked"


async def test_the_cancel_command_ends_queued_and_running_tasks_revoked(
    bridge_for_workers: Bridge,
    task_app: Celery,
    store: EventStore,
    worker_process: Callable[..., WorkerProcess],
    task_settings: Settings,
    prefix: str,
) -> None:
    """One prefork process: one task runs, the next waits in the queue; both are cancelled
    from the command line, the running one with --terminate, and the queued one never runs."""
    worker = worker_process(pool="prefork", concurrency=1)
    running, queued = (
        task_app.send_task("test.sleep_unacked", kwargs={"seconds": 60}, queue=worker.queue)
        for _ in range(2)
    )
    await asyncio.to_thread(
        wait_for, lambda: (store.snapshot(running.id) or {}).get("status") == "processing", 15
    )
    ops = [running.id, queued.id, "never-submitted"]
    allowed = mint_token(ops, scopes=["read", "cancel"], secret=AUTH_SECRET)
    env = worker_env(replace(task_settings, prefix=prefix))

    def cancel(*args: str, token: str = allowed) -> subprocess.CompletedProcess:
        return taskcast("cancel", *args, "--url", bridge_for_workers.url, "--token", token, env=env)

    first = await asyncio.to_thread(cancel, queued.id)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"cancelling {queued.id}")
    killed = await asyncio.to_thread(cancel, running.id, "--terminate")
    assert killed.returncode == 0, killed.stderr
    for result in (running, queued):
        assert (await asyncio.to_thread(wait_finished, store, result.id))["status"] == "revoked"
        await asyncio.to_thread(result.get, timeout=15, propagate=False)
        assert result.state == "REVOKED"
    assert "running" not in [e["data"].get("status") for e in events_of(store, queued.id)]

    again = await asyncio.to_thread(cancel, queued.id)
    assert again.returncode == 1
    assert "cannot cancel" in one_line(again) and "already ended (revoked)" in again.stderr
    unknown = await asyncio.to_thread(cancel, "never-submitted")
    assert unknown.returncode == 4 and "not_found" in one_line(unknown)
    read_only = mint_token(ops, secret=AUTH_SECRET)
    refused = await asyncio.to_thread(cancel, queued.id, token=read_only)
    assert refused.returncode == 5 and "a token with the cancel scope" in one_line(refused)
