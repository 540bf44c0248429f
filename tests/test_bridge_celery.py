"""End to end: a real Celery task on a real worker, streamed by the bridge to real clients."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import orjson
from bridge_helpers import WsClient
from celery import Celery

from taskcast.store import EventStore

OpenClient = Callable[..., Awaitable[WsClient]]


def is_terminal(op: str) -> Callable[[dict], bool]:
    return lambda f: f.get("operation_id") == op and f.get("event_type") in ("completed", "error")


async def test_a_celery_task_reaches_two_subscribers_identically(
    task_app: Celery, ws_client: OpenClient, store: EventStore
) -> None:
    op = str(uuid.uuid4())
    early, monitor = await ws_client(), await ws_client()
    reply = await early.request("subscribe", operation_id=op)
    assert reply["operation"] is None  # subscribing before submitting is allowed
    await monitor.request("subscribe_all", operation_type="demo.generate_code")

    task_app.send_task("demo.generate_code", kwargs={"lines": 5}, task_id=op)
    await early.wait_for(is_terminal(op), timeout=20)
    await monitor.wait_for(is_terminal(op), timeout=20)
    # A third client arriving after the end gets the same events from history.
    late = await ws_client()
    reply = await late.request("subscribe", operation_id=op)
    assert reply["operation"]["status"] == "completed" and reply["recovered"] is True

    events = early.events(op)
    assert monitor.events(op) == events
    assert await late.wait_events(op, len(events)) == events
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [orjson.loads(raw) for _, raw in store.history(op)] == events
    kinds = [(e["event_type"], e["data"].get("status")) for e in events]
    assert kinds[:2] == [("status", "queued"), ("status", "running")]
    assert ("status", "processing") in kinds and ("log", None) in kinds
    assert kinds[-2:] == [("result", None), ("completed", "completed")]
    assert events[-2]["data"]["result"]["validation_passed"] is True
    assert sum(1 for kind, _ in kinds if kind == "progress") >= 2
