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

**Workers.** A member's later events (running, progress, completed, error)
come from the process that runs it, which knows its group from the request
(``request.group``); :func:`joined` keeps it per task id while the task runs.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Mapping
from types import FrameType
from typing import Any

from taskcast.events import Parent
from taskcast.members import CHORD_TYPE, GROUP_TYPE

# Members known to this process (task id -> group id), bounded: a worker's main
# process learns of every task it receives but never sees most of them end.
MEMBERS_LIMIT = 10_000
_members: OrderedDict[str, str] = OrderedDict()
_lock = threading.Lock()


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


def joined(task_id: str, group_id: str | None) -> None:
    """Remember that ``task_id`` is a member of ``group_id`` (if any) in this process."""
    if not group_id:
        return
    with _lock:
        _members[task_id] = group_id
        _members.move_to_end(task_id)
        if len(_members) > MEMBERS_LIMIT:
            _members.popitem(last=False)


def left(task_id: str) -> None:
    """Forget a member once its terminal event was emitted."""
    with _lock:
        _members.pop(task_id, None)


def parent_of(task_id: str) -> Parent | None:
    """The group this process knows ``task_id`` belongs to."""
    group_id = _members.get(task_id)
    return None if group_id is None else Parent(group_id)
