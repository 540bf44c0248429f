"""Which operation a Celery task belongs to: its group or chord, or its chain's first task.

**How a group's size is known.** A member's message names its group (the
``group`` and ``group_index`` headers), and a chord header member carries the
chord's body (with the body's task id) in the message's ``chord`` field; no
message says how many members there are (Celery 5.7 keeps a chord's size only
in its result backend, ``set_chord_size``), and ``group_index`` restarts in
each nested group that Celery flattens. The process publishing a group does
know, though: ``group._apply_tasks`` publishes the members in one loop that
looks one member ahead, exactly so that it can tell the last member without
exhausting a generator of members (that look-ahead is where Celery itself
sets a chord's size). :func:`group_position` reads that loop's counter and
look-ahead from the publishing frame while ``before_task_publish`` runs for a
member. So the last member's ``queued`` event carries the group's size, and
it is stored before that member's message exists: no member, however fast,
can complete a group whose size the store does not know yet, and none that
the publisher is still sending can be missing from it. Where the loop cannot
be found (a member sent by hand with ``group_id=``, a Celery without that
loop) no size is ever given: the group shows its members and their progress
but never ends, rather than end too early.

**Chains.** Each link is an operation of its own; Celery gives every link
after the first the ``root_id`` of the chain's first task, so a link's
``parent_id`` is that root (for a chain started inside a task, the root of
that task's workflow). It only links them: a chain link does not aggregate.

**Ids no message names yet.** ``chord(header)(body)`` returns the body's result,
and ``chain(...).apply_async()`` the last task's: ids a user holds and watches
while the messages that carry them do not exist yet (Celery publishes a body
once its header completed, a link once the previous one returned), and never
will when a member or an earlier link fails. :func:`held_at_publish` names
them from the first message that carries them (the header's first member,
every link but the last), so the publisher records them ``queued`` before any
member can run; their own publication later adds no second ``queued`` (the
store ignores a ``queued`` for an operation still queued). When the task that
holds one fails, is revoked or is lost, :func:`left` names it so that the
same handler ends it too, as Celery's ``backend.mark_as_failure`` fails a
chord's body and the rest of a chain.

**Workers.** A member's later events (running, progress, completed, error)
come from the process that runs it, which knows its group from the request
(``request.group``); :func:`joined` keeps it, and what the task holds, per task
id while the task runs.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Mapping
from types import FrameType
from typing import Any, NamedTuple

from taskcast.events import Parent
from taskcast.members import CHORD_TYPE, GROUP_TYPE

# Tasks known to this process (task id -> its group id and the ids it holds), bounded:
# a worker's main process learns of every task it receives but never sees most end.
MEMBERS_LIMIT = 10_000
_members: OrderedDict[str, tuple[str | None, tuple[Held, ...]]] = OrderedDict()
_lock = threading.Lock()


class Held(NamedTuple):
    """An id a user holds that no message names yet (see the module docstring)."""

    operation_id: str
    # The task name, the operation's type.
    name: str
    # What the task holding it is to it: "chord member" or "chain link".
    role: str
    parent: Parent


def _plain_task(signature: Any) -> tuple[str, str] | None:
    """``(task id, name)`` of a serialized signature of one task (not a group, chord or
    chain, whose id is no task's), else None."""
    if not isinstance(signature, Mapping) or signature.get("subtask_type"):
        return None
    task_id = (signature.get("options") or {}).get("task_id")
    name = signature.get("task")
    return (str(task_id), str(name)) if task_id and name else None


def held_ids(group_id: str | None, root_id: str, chord: Any, chain: Any) -> list[Held]:
    """What a task holds: its chord's body (``chord``, a member's) and its chain's last
    task (``chain``: the links still to run, the last first, as Celery sends them)."""
    held = []
    body = _plain_task(chord)
    if group_id and body is not None:
        held.append(Held(*body, "chord member", Parent(group_id, aggregates=False)))
    last = _plain_task(chain[0]) if isinstance(chain, list) and chain else None
    if last is not None:
        held.append(Held(*last, "chain link", Parent(root_id, aggregates=False)))
    return held


def held_at_publish(
    headers: Mapping[str, Any], embedded: Mapping[str, Any], position: tuple[int, bool] | None
) -> list[Held]:
    """The ids to record ``queued`` with a message: a chord's body with its first member
    (later ones could be published after a member failed, and would reopen it), a
    chain's last task with every earlier link (each announcement but the first stores
    nothing)."""
    first = position is not None and position[0] == 0
    root_id = str(headers.get("root_id") or headers.get("id"))
    held = held_ids(headers.get("group"), root_id, embedded.get("chord"), embedded.get("chain"))
    return [each for each in held if each.role != "chord member" or first]


def group_position() -> tuple[int, bool] | None:
    """``(members published before this one, whether it is the last)`` when called under
    Celery's group publishing loop, else None (see the module docstring)."""
    from celery.canvas import group

    loop = group._apply_tasks.__code__
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code is loop:
            names = frame.f_locals
            index = names.get("task_index")
            if not isinstance(index, int) or "next_task" not in names:
                return None  # a Celery whose loop keeps other names: no size, never a crash
            return index, names["next_task"] is None
        frame = frame.f_back
    return None


def parent_at_publish(
    headers: Mapping[str, Any], embedded: Mapping[str, Any], position: tuple[int, bool] | None
) -> Parent | None:
    """The parent a message's ``queued`` event names: its group or chord, with the type, and
    the size once ``position`` says it is the last member; else the chain root, if any."""
    group_id = headers.get("group")
    if group_id:
        if headers.get("group_index") is None:
            return Parent(group_id)  # a chord's body: its chord recorded it already
        chord = embedded.get("chord") or {}
        body_id = str((chord.get("options") or {}).get("task_id") or "")
        size = 0
        if position is not None and position[1]:
            size = position[0] + 1 + (1 if body_id else 0)
        return Parent(
            group_id,
            operation_type=CHORD_TYPE if chord else GROUP_TYPE,
            size=size,
            body_id=body_id if size else "",
        )
    root_id = headers.get("root_id")
    if headers.get("parent_id") and root_id and root_id != headers.get("id"):
        return Parent(root_id, aggregates=False)
    return None


def joined(task_id: str, request: Any) -> None:
    """Remember the group of ``task_id`` and the ids it holds, from its ``request`` (a
    worker's ``Request`` or a task's context: each has ``group``; ``chord`` and ``chain``
    where Celery gives them)."""
    group_id = getattr(request, "group", None)
    root_id = getattr(request, "root_id", None) or task_id
    chord, chain = getattr(request, "chord", None), getattr(request, "chain", None)
    held = tuple(held_ids(group_id, root_id, chord, chain))
    if not group_id and not held:
        return
    with _lock:
        _members[task_id] = (group_id, held)
        _members.move_to_end(task_id)
        if len(_members) > MEMBERS_LIMIT:
            _members.popitem(last=False)


def left(task_id: str) -> list[Held]:
    """Forget a task once its terminal event was emitted; the ids it held."""
    with _lock:
        _, held = _members.pop(task_id, (None, ()))
    return list(held)


def parent_of(task_id: str) -> Parent | None:
    """The group this process knows ``task_id`` belongs to."""
    group_id, _ = _members.get(task_id, (None, ()))
    return None if group_id is None else Parent(group_id)
