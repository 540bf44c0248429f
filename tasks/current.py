"""``progress``/``status``/``log`` for the task running now, and celery-progress's recorder.

They let any task of an instrumented app report without a base class: the
operation is the current task's (Celery's ``current_task``). Outside a task,
or in a task whose lifecycle taskcast does not record, they do nothing, and
the latter says so once in the log, since progress without ``queued`` ...
``completed`` around it would be an operation half-recorded.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from celery import Task, current_task

from taskcast.tasks.cancel import stop_if_ended
from taskcast.tasks.emitter import Emitter
from taskcast.tasks.lifecycle import records_lifecycle
from taskcast.tasks.task import PROGRESS_STATE

logger = logging.getLogger("taskcast")
_emitter = Emitter()
_warned: set[str] = set()


def operation_id_of(task: Any) -> str | None:
    """The operation id events of ``task`` go to, or None when they are not recorded."""
    if not task or not getattr(task.request, "id", None):
        return None
    if not records_lifecycle(task):
        if task.name not in _warned:
            _warned.add(task.name)
            logger.warning(
                "taskcast: %s reports progress but its app is not instrumented; "
                "call taskcast.instrument(app) in the module that creates the Celery app",
                task.name,
            )
        return None
    return str(task.request.id)


def progress(
    progress: float | None = None,
    message: str = "",
    details: dict[str, Any] | None = None,
    *,
    current: float | None = None,
    total: float | None = None,
) -> None:
    """Report the current task's progress as a 0.0-1.0 fraction or ``current`` of ``total``."""
    operation_id = operation_id_of(current_task)
    if operation_id:
        outcome = _emitter.emit_progress(
            operation_id, progress, message, details, current=current, total=total
        )
        stop_if_ended(operation_id, outcome)


def status(status: str, message: str = "", details: dict[str, Any] | None = None) -> None:
    """Set a task-defined status (e.g. ``processing``) of the current task."""
    operation_id = operation_id_of(current_task)
    if operation_id:
        stop_if_ended(operation_id, _emitter.emit_status(operation_id, status, message, details))


def log(level: str, message: str) -> None:
    """Stream a log line (debug, info, warning, error) of the current task to watchers."""
    operation_id = operation_id_of(current_task)
    if operation_id:
        stop_if_ended(operation_id, _emitter.emit_log(operation_id, level, message))


class ProgressRecorder:
    """celery-progress's ``ProgressRecorder``: the same calls, streamed as they happen.

    ``set_progress`` still stores the ``PROGRESS`` state in the result backend
    (existing polling views keep working) and also emits a progress event with
    ``current``/``total``.
    """

    def __init__(self, task: Task) -> None:
        self.task = task

    def set_progress(
        self, current: float, total: float, description: str = ""
    ) -> tuple[str, dict[str, Any]]:
        percent = 0.0
        if total > 0:
            percent = float(round(Decimal(current) / Decimal(total) * 100, 2))
        meta = {
            "pending": False,
            "current": current,
            "total": total,
            "percent": percent,
            "description": description,
        }
        # A ProgressTask's update_state streams this itself; any other task's does not.
        self.task.update_state(state=PROGRESS_STATE, meta=meta)
        if not getattr(self.task, "taskcast_lifecycle", False):
            operation_id = operation_id_of(self.task)
            if operation_id:
                outcome = _emitter.emit_progress(
                    operation_id, None, description, current=current, total=total
                )
                stop_if_ended(operation_id, outcome)
        return PROGRESS_STATE, meta
