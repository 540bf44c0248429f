"""The step tracker of the original design: ``tracker.step("message")`` per step.

One class serves Celery tasks, the sync emitter and the asyncio emitter: it
only counts and calls ``report``; whatever ``report`` returns is handed back,
so with an asyncio emitter ``await tracker.step(...)`` works unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class ProgressTracker:
    """Counts steps of a multi-step job and reports ``current``/``total`` progress.

    ``report(current=, total=, message=, details=)`` emits one progress event;
    ``finish(result)`` is what :meth:`complete` does at the end (for a Celery
    task: report 100 %, since the task's return value is recorded by the
    lifecycle signals; for a plain operation: emit the result and completion).
    """

    def __init__(
        self,
        report: Callable[..., Any],
        total_steps: int,
        finish: Callable[[Any], Any] | None = None,
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = total_steps
        self.current_step = 0
        self._report = report
        self._finish = finish

    def step(self, message: str = "", details: dict[str, Any] | None = None) -> Any:
        """Advance by one step (never past the last) and report it."""
        self.current_step = min(self.total_steps, self.current_step + 1)
        details = {"step": self.current_step, **(details or {})}
        return self._report(
            current=self.current_step, total=self.total_steps, message=message, details=details
        )

    def complete(self, result: Any = None) -> Any:
        """Mark every step done and hand ``result`` to ``finish``."""
        self.current_step = self.total_steps
        if self._finish is None:
            return result
        return self._finish(result)
