"""Cancel (PROTOCOL.md 1.1): a client revokes a running task, which ends ``revoked`` and stops.

Prefork workers kill the task when asked to terminate; every pool stops it
cooperatively at its next helper call. Both are checked with real workers:
the session's in-process threads-pool worker and a ``celery worker``
subprocess with the prefork pool.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from bridge_helpers import WsClient, running_bridge
from celery import Celery, group
from helpers import AUTH_SECRET, WorkerProcess, events_of, wait_finished, wait_for

from taskcast import mint_token
from taskcast.bridge import Bridge
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
