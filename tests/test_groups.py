"""Groups and chords from a real ``celery worker``, read through a real bridge subscriber
(and ``taskcast watch``'s view of one).

The publisher is this process (the tests' instrumented app), the members run
in a worker subprocess, and a chord's body is published by that worker.
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from typing import Any

from bridge_helpers import WsClient
from celery import Celery, chain, chord, group
from celery.canvas import Signature
from helpers import events_of, gap_free, summary, wait_finished
from rich.console import Console
from rich.progress import Progress

from taskcast.bridge import Bridge
from taskcast.client import TaskcastClient
from taskcast.events import Event, error_data, status_data
from taskcast.store import EventStore
from taskcast.terminal import Watched
from taskcast.terminal import follow as follow_in_terminal

OpenClient = Callable[..., Awaitable[WsClient]]


def steps(app: Celery, queue: str, **kwargs: Any) -> Signature:
    return app.signature("test.steps", kwargs=kwargs, queue=queue)


async def follow(ws_client: OpenClient, operation_id: str) -> list[dict[str, Any]]:
    """The operation's events as a subscriber gets them, up to the terminal one."""
    client = await ws_client()
    await client.request("subscribe", operation_id=operation_id)
    await client.wait_for(
        lambda f: (
            f.get("operation_id") == operation_id and f.get("event_type") in ("completed", "error")
        ),
        timeout=60,
    )
    return client.events(operation_id)


def progress_of(events: list[dict[str, Any]]) -> list[float]:
    return [e["data"]["progress"] for e in events if e["event_type"] == "progress"]


def assert_members(store: EventStore, parent: str, members: list[str]) -> None:
    assert store.snapshot(parent)["children"] == members
    for member in members:
        assert store.snapshot(member)["parent_id"] == parent


async def test_a_group_of_five_rises_to_completed(
    worker_process, task_app: Celery, store: EventStore, ws_client: OpenClient
) -> None:
    worker = worker_process(concurrency=3)
    result = group(steps(task_app, worker.queue, count=4) for _ in range(5)).apply_async()
    events = await follow(ws_client, result.id)

    assert events == events_of(store, result.id) and gap_free(events)
    values = progress_of(events)
    assert values == sorted(values) and values[-1] == 1.0 and len(set(values)) > 5
    assert events[0]["data"]["status"] == "queued"
    assert [e["data"]["status"] for e in events if e["event_type"] == "status"][1] == "running"
    assert events[-1]["event_type"] == "completed"
    assert events[-2]["data"]["details"] == {"completed": 5, "failed": 0, "total": 5}
    snapshot = store.snapshot(result.id)
    assert snapshot["operation_type"] == "celery.group" and snapshot["status"] == "completed"
    assert_members(store, result.id, [child.id for child in result.results])


async def test_a_group_with_a_failing_member_fails(
    worker_process, task_app: Celery, store: EventStore, ws_client: OpenClient
) -> None:
    worker = worker_process(concurrency=2)
    members = [steps(task_app, worker.queue, count=2, fail=(n == 2)) for n in range(5)]
    result = group(members).apply_async()
    events = await follow(ws_client, result.id)

    last = events[-1]
    assert last["event_type"] == "error" and last["data"]["status"] == "failed"
    assert last["data"]["error_type"] == "ValueError"
    assert result.results[2].id in last["data"]["error"]
    assert store.snapshot(result.id)["status"] == "failed"
    values = progress_of(events)
    assert values == sorted(values) and values[-1] < 1.0
    assert_members(store, result.id, [child.id for child in result.results])


async def test_a_chord_counts_its_body_as_its_last_member(
    worker_process, task_app: Celery, store: EventStore, ws_client: OpenClient
) -> None:
    worker = worker_process(concurrency=3)
    header = [steps(task_app, worker.queue, count=3) for _ in range(3)]
    body = task_app.signature("test.total", queue=worker.queue)
    result = chord(header, body).apply_async()
    chord_id = result.parent.id
    events = await follow(ws_client, chord_id)

    assert result.get(timeout=30) == 9
    assert events[-1]["event_type"] == "completed" and gap_free(events)
    values = progress_of(events)
    assert values == sorted(values) and values[-1] == 1.0
    assert events[-2]["data"]["details"] == {"completed": 4, "failed": 0, "total": 4}
    snapshot = store.snapshot(chord_id)
    assert snapshot["operation_type"] == "celery.chord"
    assert_members(store, chord_id, [child.id for child in result.parent.results] + [result.id])
    assert store.snapshot(result.id)["status"] == "completed"
    body = summary(events_of(store, result.id))
    assert body[0] == "status:queued" and body.count("status:queued") == 1


async def watch(bridge: Bridge, operation_id: str) -> tuple[int, str]:
    """``taskcast watch``'s exit code and what it printed."""
    output = io.StringIO()
    console = Console(file=output, width=200, force_terminal=False)
    async with TaskcastClient(bridge.url) as client:
        code = await follow_in_terminal(client, operation_id, console)
    return code, output.getvalue()


def assert_ended_once(store: EventStore, operation_id: str, last: str) -> dict[str, Any]:
    """The operation's history starts with its one ``queued`` and ends with its one terminal
    event ``last``; that event's data."""
    events = events_of(store, operation_id)
    kinds = summary(events)
    assert kinds[0] == "status:queued" and kinds.count("status:queued") == 1, kinds
    assert kinds[-1] == last and kinds.count("completed") + kinds.count("error") == 1, kinds
    assert gap_free(events)
    return events[-1]["data"]


async def test_the_id_a_chord_returns_fails_with_its_failing_member(
    worker_process, task_app: Celery, store: EventStore, bridge: Bridge
) -> None:
    """Celery never runs the body of a chord whose member failed: the id the caller holds
    is watchable all the same, and ends with that member's error."""
    worker = worker_process(concurrency=3)
    header = [steps(task_app, worker.queue, count=2, fail=(n == 1)) for n in range(3)]
    result = chord(header, task_app.signature("test.total", queue=worker.queue)).apply_async()
    code, text = await watch(bridge, result.id)

    failing = result.parent.results[1].id
    assert code == 1 and "asked to fail" in text and failing[:8] in text
    data = assert_ended_once(store, result.id, "error")
    assert data["status"] == "failed" and data["error_type"] == "ValueError"
    assert data["error"] == f"chord member {failing} failed: asked to fail"
    snapshot = store.snapshot(result.id)
    assert snapshot["parent_id"] == result.parent.id and snapshot["operation_type"] == "test.total"


async def test_the_id_a_chain_returns_fails_when_its_first_link_fails(
    worker_process, task_app: Celery, store: EventStore, bridge: Bridge
) -> None:
    worker = worker_process()
    links = [steps(task_app, worker.queue, count=1, fail=(n == 0)).set(immutable=True)
             for n in range(3)]
    result = chain(*links).apply_async()
    code, text = await watch(bridge, result.id)

    first = result.parent.parent.id
    assert code == 1 and "asked to fail" in text
    data = assert_ended_once(store, result.id, "error")
    assert data["error"] == f"chain link {first} failed: asked to fail"
    assert store.snapshot(result.id)["parent_id"] == first
    assert store.snapshot(result.parent.id) is None  # the middle link was never published


def test_the_id_a_chain_returns_completes_after_its_links(
    worker_process, task_app: Celery, store: EventStore
) -> None:
    worker = worker_process()
    links = [steps(task_app, worker.queue, count=1).set(immutable=True) for _ in range(3)]
    result = chain(*links).apply_async()
    wait_finished(store, result.id, timeout=30)

    assert result.get(timeout=10) == 1
    assert_ended_once(store, result.id, "completed")
    assert store.snapshot(result.id)["worker"] is not None


async def test_watch_shows_the_combined_bar_and_a_line_per_member(
    worker_process, task_app: Celery, store: EventStore, bridge: Bridge
) -> None:
    worker = worker_process(concurrency=2)
    result = group(steps(task_app, worker.queue, count=3) for _ in range(3)).apply_async()
    output = io.StringIO()
    console = Console(file=output, width=160, force_terminal=False)
    async with TaskcastClient(bridge.url) as client:
        assert await follow_in_terminal(client, result.id, console) == 0
    text = output.getvalue()
    assert "completed" in text and "3 of 3 done" in text
    for child in result.results:
        assert f"{child.id[:8]} step 3" in text



async def test_a_members_line_ends_as_stored_when_the_group_ended_first(
    store: EventStore, bridge: Bridge
) -> None:
    """A group ends as soon as one member fails, which can be before that member's own
    watch delivered anything: when the watch ends, each member's line shows the store's
    state, not the "waiting" it started with."""
    store.append(Event("status", "member-1", status_data("queued")))
    store.append(Event("status", "member-1", status_data("running")))
    store.append(Event("error", "member-1", error_data("boom", "ValueError")))
    bar = Progress(console=Console(file=io.StringIO()))
    async with TaskcastClient(bridge.url) as client:
        watched = Watched(client, bar)
        watched.add("member-1", "  member-1 ")
        await watched.finish()  # before the member's watch had a turn
    (line,) = bar.tasks
    assert line.fields["status"] == "failed"
