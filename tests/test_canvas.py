"""What the publishing process tells about a group, chord or chain (no broker, no worker:
Celery's in-memory transport, and the messages ``before_task_publish`` sees)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, chain, chord, group, signals

from taskcast.events import Parent
from taskcast.members import CHORD_TYPE, GROUP_TYPE
from taskcast.tasks import canvas
from taskcast.tasks.canvas import Held
from taskcast.tasks.lifecycle import parent_at_publish

app = Celery("canvas_probe", broker="memory://", backend="cache+memory://")


@app.task(name="probe.add")
def add(x: int = 0) -> int:
    return x


@pytest.fixture
def published() -> Iterator[tuple[Celery, list[tuple[str, Parent | None]]]]:
    seen: list[tuple[str, Parent | None]] = []

    def record(headers: dict[str, Any], body: Any, **_: Any) -> None:
        seen.append((headers["id"], parent_at_publish(headers, body)))

    signals.before_task_publish.connect(record, weak=False)
    yield app, seen
    signals.before_task_publish.disconnect(record)


def test_only_the_last_member_of_a_group_carries_its_size(published) -> None:
    app, seen = published
    add = app.tasks["probe.add"]
    result = group(add.s(n) for n in range(3)).apply_async()  # a generator: no len()
    assert [child.id for child in result.results] == [op for op, _ in seen]
    assert [parent for _, parent in seen] == [
        Parent(result.id, operation_type=GROUP_TYPE),
        Parent(result.id, operation_type=GROUP_TYPE),
        Parent(result.id, operation_type=GROUP_TYPE, size=3),
    ]


def test_nested_groups_are_one_group_of_all_their_tasks(published) -> None:
    app, seen = published
    add = app.tasks["probe.add"]
    result = group(add.s(1), group(add.s(2), add.s(3))).apply_async()
    assert [parent.size for _, parent in seen if parent] == [0, 0, 3]
    assert {parent.operation_id for _, parent in seen if parent} == {result.id}


def test_a_chord_header_names_its_body_as_the_last_member(published) -> None:
    app, seen = published
    add = app.tasks["probe.add"]
    result = chord([add.s(1), add.s(2)], add.si(9)).apply_async()
    assert [parent for _, parent in seen] == [
        Parent(result.parent.id, operation_type=CHORD_TYPE),
        Parent(result.parent.id, operation_type=CHORD_TYPE, size=3, body_id=result.id),
    ]


def test_chain_links_name_the_first_task_and_aggregate_nothing() -> None:
    first = {"id": "a", "root_id": "a", "parent_id": None}
    later = {"id": "c", "root_id": "a", "parent_id": "b"}
    assert parent_at_publish(first, ((), {}, {"chain": [{}]})) is None
    assert parent_at_publish(later, ((), {}, {})) == Parent("a", aggregates=False)


def test_a_plain_task_has_no_parent(published) -> None:
    app, seen = published
    app.tasks["probe.add"].apply_async((1,))
    chain(app.tasks["probe.add"].s(1), app.tasks["probe.add"].s()).apply_async()
    assert [parent for _, parent in seen] == [None, None]


def test_a_chord_body_and_a_chain_end_are_held_by_the_first_message_naming_them() -> None:
    """The ids ``chord(...)()`` and ``chain(...).apply_async()`` return, as recorded before
    any member or link can run (the rest of a chain is published by workers)."""
    held: list[list[Held]] = []

    def record(headers: dict[str, Any], body: Any, **_: Any) -> None:
        held.append(canvas.held_at_publish(headers, body[2], canvas.group_position()))

    signals.before_task_publish.connect(record, weak=False)
    try:
        add = app.tasks["probe.add"]
        chorded = chord([add.s(1), add.s(2)], add.si(9)).apply_async()
        chained = chain(add.s(1), add.s(), add.s()).apply_async()
    finally:
        signals.before_task_publish.disconnect(record)
    chord_id, first_link = chorded.parent.id, chained.parent.parent.id
    assert held == [
        [Held(chorded.id, "probe.add", "chord member", Parent(chord_id, aggregates=False))],
        [],
        [Held(chained.id, "probe.add", "chain link", Parent(first_link, aggregates=False))],
    ]
