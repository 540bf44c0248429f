"""``ProgressTask``: the base class that gives a Celery task its progress helper.

Declare ``@app.task(bind=True, base=ProgressTask)`` or
``@shared_task(bind=True, base=ProgressTask)`` in any app and call
``self.progress``, ``self.status``, ``self.log`` or ``self.tracker`` inside;
the operation id is the task id. Lifecycle events (queued, running, result,
completed, error) are not emitted here but by the signal handlers of
:mod:`taskcast.tasks.lifecycle`, which a ``ProgressTask`` switches on for
itself when it is declared, so its operations are complete even in an app
nobody instrumented.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from taskcast.tasks.cancel import stop_if_ended
from taskcast.tasks.emitter import Emitter, Operation
from taskcast.tasks.lifecycle import record_lifecycle_of
from taskcast.tasks.tracker import ProgressTracker

PROGRESS_STATE = "PROGRESS"


class ProgressTask(Task):
    """A Celery task with ``progress``/``status``/``log``/``tracker`` helpers.

    Outside a worker (the task function called directly) there is no task id
    and the helpers do nothing, so the same code runs in unit tests.
    """

    emitter = Emitter()
    taskcast_lifecycle = True  # the signal handlers record this task whatever its app

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Runs when a task is declared with this base (Celery makes a subclass per task)."""
        super().__init_subclass__(**kwargs)
        record_lifecycle_of(getattr(cls, "name", None))

    @property
    def operation_id(self) -> str | None:
        return self.request.id

    def progress(
        self,
        progress: float | None = None,
        message: str = "",
        details: dict[str, Any] | None = None,
        *,
        current: float | None = None,
        total: float | None = None,
    ) -> None:
        """Report progress as a 0.0-1.0 fraction or as ``current`` of ``total``.

        Calls may be as frequent as the loop likes: they are coalesced to one
        stored event per ``TASKCAST_PROGRESS_INTERVAL`` and the last one is kept.
        """
        if self.operation_id:
            outcome = self.emitter.emit_progress(
                self.operation_id, progress, message, details, current=current, total=total
            )
            stop_if_ended(self.operation_id, outcome)

    def status(self, status: str, message: str = "", details: dict[str, Any] | None = None) -> None:
        """Set a task-defined status (e.g. ``processing``) shown in the snapshot."""
        if self.operation_id:
            outcome = self.emitter.emit_status(self.operation_id, status, message, details)
            stop_if_ended(self.operation_id, outcome)

    def log(self, level: str, message: str) -> None:
        """Stream a log line (debug, info, warning, error) to watchers."""
        if self.operation_id:
            stop_if_ended(
                self.operation_id, self.emitter.emit_log(self.operation_id, level, message)
            )

    def operation(self) -> Operation:
        """A handle bound to this run's id, for threads the task starts.

        Celery keeps ``self.request`` per thread, so the helpers above do
        nothing in another thread; ``op = self.operation()`` taken in the task
        thread works anywhere (``op.progress``, ``op.status``, ``op.log``).
        Completion stays with the lifecycle signals.
        """
        return TaskOperation(self.emitter, self.name, operation_id=self.operation_id)

    def tracker(self, total_steps: int) -> ProgressTracker:
        """A step tracker; ``return tracker.complete(result)`` reports 100 % and returns it."""
        return ProgressTracker(self.progress, total_steps, finish=self._finish_steps)

    def _finish_steps(self, result: Any) -> Any:
        self.progress(1.0, "Completed")
        return result

    def update_state(
        self,
        task_id: str | None = None,
        state: str | None = None,
        meta: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Celery's ``update_state``, also streaming the celery-progress ``PROGRESS`` convention.

        ``meta={"current": .., "total": .., "description": ..}`` becomes a
        progress event; the state still goes to Celery's result backend.
        """
        super().update_state(task_id, state, meta, **kwargs)
        operation_id = task_id or self.operation_id
        if state == PROGRESS_STATE and operation_id and isinstance(meta, dict):
            outcome = self.emitter.emit_progress(operation_id, **progress_from_meta(meta))
            stop_if_ended(operation_id, outcome)


class TaskOperation(Operation):
    """The handle a task's threads use: its helpers stop the thread once the operation ended."""

    def progress(self, *args: Any, **kwargs: Any) -> int:
        outcome: int = super().progress(*args, **kwargs)
        stop_if_ended(self.id, outcome)
        return outcome

    def status(self, *args: Any, **kwargs: Any) -> int:
        outcome: int = super().status(*args, **kwargs)
        stop_if_ended(self.id, outcome)
        return outcome

    def log(self, *args: Any, **kwargs: Any) -> int:
        outcome: int = super().log(*args, **kwargs)
        stop_if_ended(self.id, outcome)
        return outcome


def progress_from_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """``emit_progress`` arguments from a celery-progress ``PROGRESS`` meta dict.

    ``current``/``total`` win; a bare ``percent`` (0-100) is used otherwise.
    """
    current, total, percent = meta.get("current"), meta.get("total"), meta.get("percent")
    counts = isinstance(current, (int, float)) and isinstance(total, (int, float))
    progress = None
    if not counts and isinstance(percent, (int, float)):
        progress = percent / 100
    return {
        "progress": progress,
        "message": str(meta.get("description") or ""),
        "current": current if counts else None,
        "total": total if counts else None,
    }
