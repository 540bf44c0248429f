"""The tests' own Celery app and the tasks only the tests need.

It is set up as a user's project would set up its app: built and configured
by this module (from the environment, with the Celery options taskcast
suggests), then ``taskcast.instrument(app)``. The in-process worker imports
it (conftest reconfigures it for the session's Redis); ``celery worker``
subprocesses run ``-A worker_tasks`` with ``tests/`` on ``PYTHONPATH`` (see
``helpers.WorkerProcess``). The demo's sample tasks (``@shared_task``) are
registered with it as well.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from celery import Celery

import taskcast
from taskcast import ProgressRecorder, ProgressTask
from taskcast.demo import samples
from taskcast.worker_config import celery_config, load_settings

app = Celery("taskcast_tests")
app.conf.update(celery_config(load_settings()))
taskcast.instrument(app)
__all__ = ["app", "samples"]  # the demo's shared tasks run on this app too


@app.task(name="test.plain_add")
def plain_add(a: int, b: int) -> int:
    """An uninstrumented task: lifecycle events only."""
    return a + b


@app.task(name="test.sign_in")
def sign_in(user: str, password: str) -> str:
    """A task given a secret: its arguments must not reach readers of its operation."""
    return user


@app.task(bind=True, base=ProgressTask, name="test.instrumented")
def instrumented(self: ProgressTask) -> dict[str, Any]:
    """One of each helper call, in a known order, with no coalescing in the way."""
    self.status("processing", "Warming up", {"phase": 1})
    self.progress(0.25, "A quarter", {"k": "v"})
    self.log("warning", "Something to note")
    self.progress(current=3, total=4, message="Three of four")
    return {"answer": 42}


@app.task(bind=True, base=ProgressTask, name="test.hammer_progress")
def hammer_progress(self: ProgressTask, calls: int = 100_000) -> int:
    """Report progress as fast as a loop can."""
    for i in range(1, calls + 1):
        self.progress(current=i, total=calls, message=f"item {i}")
    return calls


@app.task(bind=True, base=ProgressTask, name="test.celery_progress_style")
def celery_progress_style(self: ProgressTask, total: int = 4) -> str:
    """A task written for celery-progress: only ``update_state(state="PROGRESS")``."""
    for i in range(1, total + 1):
        self.update_state(
            state="PROGRESS",
            meta={"current": i, "total": total, "description": f"row {i}"},
        )
        time.sleep(0.06)
    return "done"


@app.task(bind=True, base=ProgressTask, name="test.threaded_logs")
def threaded_logs(self: ProgressTask, threads: int = 6, per_thread: int = 50) -> int:
    """Several threads of one task emitting for the same operation at once."""
    op = self.operation()

    def emit(n: int) -> None:
        for i in range(per_thread):
            op.log("info", f"thread {n} line {i}")
            op.progress(current=i, total=per_thread)

    workers = [threading.Thread(target=emit, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return threads * per_thread


@app.task(bind=True, base=ProgressTask, name="test.sleep")
def sleep(self: ProgressTask, seconds: float = 30.0, steps: int = 300) -> float:
    """Long enough to revoke; reports progress so there is something to watch."""
    for i in range(1, steps + 1):
        time.sleep(seconds / steps)
        self.progress(current=i, total=steps, message="sleeping")
    return seconds


@app.task(
    bind=True,
    base=ProgressTask,
    name="test.sleep_unacked",
    acks_late=False,
    reject_on_worker_lost=False,
)
def sleep_unacked(self: ProgressTask, seconds: float = 30.0) -> float:
    """Acked on receipt, so a killed pool child fails it (WorkerLostError) instead of
    handing it back to the queue."""
    self.status("processing", "about to sleep")
    time.sleep(seconds)
    return seconds


@app.task(bind=True, base=ProgressTask, name="test.numbered")
def numbered(self: ProgressTask, lines: int = 100, delay: float = 0.05) -> int:
    """Log lines "1" to ``lines``: a watcher can tell exactly which ones it missed."""
    for number in range(1, lines + 1):
        self.log("info", str(number))
        time.sleep(delay)
    return lines


def wait_for_file(path: str, timeout: float) -> None:
    """Return once the file at ``path`` exists (or ``timeout`` passed): a test's release."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)


@app.task(bind=True, base=ProgressTask, name="test.finish_when")
def finish_when(self: ProgressTask, path: str, timeout: float = 60.0) -> str:
    """Run until the file at ``path`` exists, so a test chooses the moment it finishes."""
    self.status("waiting", f"for {path}")
    wait_for_file(path, timeout)
    return path


@app.task(bind=True, name="test.recorder_until")
def recorder_until(self: Any, path: str, current: int = 2, total: int = 5) -> int:
    """A celery-progress task (plain ``bind=True``, its ``ProgressRecorder``) that stays at
    ``current`` of ``total`` until the file at ``path`` exists."""
    ProgressRecorder(self).set_progress(current, total, description=f"row {current}")
    wait_for_file(path, 60.0)
    return current


@app.task(name="test.unserializable")
def unserializable() -> str:
    """Returns a value the event needs as a truncated repr (Celery stores the str)."""
    return "x" * 200_000


@app.task(bind=True, base=ProgressTask, name="test.steps")
def steps(self: ProgressTask, count: int = 4, delay: float = 0.05, fail: bool = False) -> int:
    """A group member: ``count`` progress steps, then its count, or a ValueError."""
    for i in range(1, count + 1):
        time.sleep(delay)
        self.progress(current=i, total=count, message=f"step {i}")
    if fail:
        raise ValueError("asked to fail")
    return count


@app.task(name="test.total")
def total(counts: list[int]) -> int:
    """A chord's body: the sum of its header's results."""
    return sum(counts)


class OversizedError(Exception):
    """Its ``type(exc).__name__``, a failure's error type, is two million characters; Celery
    still pickles it, by its qualified name."""


OversizedError.__name__ = "E" * 2_000_000


@app.task(bind=True, base=ProgressTask, name="test.oversized_names")
def oversized_names(self: ProgressTask, size: int = 2_000_000) -> None:
    """Every name a task controls, ``size`` characters long, then an :class:`OversizedError`:
    what PROTOCOL.md 1.2 bounds besides the large fields."""
    self.status("S" * size, "a status name of the task's own")
    self.progress(0.5, "keys", {"K" * size: 1, "nested": [{"k" * size: "v"}]})
    # No helper takes an unknown level; a task may still emit one through the emitter.
    self.emitter.emit("log", self.request.id, {"level": "L" * size, "message": "a level"})
    raise OversizedError("a failure with a type name of its own")
