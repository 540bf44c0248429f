"""Test helpers for running real Celery tasks and reading the events they stored.

Used through the fixtures in conftest.py (``task_app``, ``run_task``,
``worker_process``); importable directly by any test that needs them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import psutil

from taskcast.events import FINISHED_STATUSES
from taskcast.store import EventStore
from taskcast.worker_config import Settings, to_environment

T = TypeVar("T")
# The key of the tests' secured bridges; tokens for them are minted with it.
AUTH_SECRET = "taskcast-test-secret-" + "s" * 32
TESTS_DIR = Path(__file__).resolve().parent
ROOT_DIR = TESTS_DIR.parent


class ManualClock:
    """A monotonic clock that moves only when a test sets ``now``."""

    now = 0.0

    def __call__(self) -> float:
        return self.now


def wait_for(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.02) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {check}")
        time.sleep(interval)


def taskcast(*args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess:
    """Run the ``taskcast`` command as a user would, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "taskcast", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line(run: subprocess.CompletedProcess) -> str:
    """The single line a failed ``taskcast`` command printed on stderr (no traceback)."""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    return lines[0]


def events_of(store: EventStore, operation_id: str, since: int = 0) -> list[dict[str, Any]]:
    """The stored history of one operation, decoded, oldest first."""
    return [orjson.loads(raw) for _, raw in store.history(operation_id, since)]


def wait_finished(store: EventStore, operation_id: str, timeout: float = 15.0) -> dict:
    """Wait until the operation's snapshot has a finished status; return the snapshot."""

    def finished() -> dict | None:
        snapshot = store.snapshot(operation_id)
        return snapshot if snapshot and snapshot["status"] in FINISHED_STATUSES else None

    return wait_for(finished, timeout)


# What ``test.instrumented`` (tests/worker_tasks.py) streams, in order.
INSTRUMENTED_SUMMARY = [
    "status:queued",
    "status:running",
    "status:processing",
    "progress",
    "log",
    "progress",
    "result",
    "completed",
]


def gap_free(events: list[dict[str, Any]]) -> bool:
    """Whether the events' seqs are exactly 1, 2, 3, ... (none skipped, none twice)."""
    return [e["seq"] for e in events] == list(range(1, len(events) + 1))


def summary(events: list[dict[str, Any]]) -> list[str]:
    """``event_type`` or ``status:<name>`` per event: compact orders to assert on."""
    return [
        f"status:{e['data']['status']}" if e["event_type"] == "status" else e["event_type"]
        for e in events
    ]


@dataclass
class TaskRun:
    """A finished task: Celery's result object, its stored events and final snapshot."""

    result: Any
    events: list[dict[str, Any]]
    snapshot: dict[str, Any]

    @property
    def id(self) -> str:
        return self.result.id


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a ``celery -A worker_tasks worker`` that uses ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKCAST_", "CELERY_"))}
    env.update(to_environment(settings))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


class WorkerProcess:
    """A ``celery -A worker_tasks worker`` subprocess consuming its own queue.

    Its own queue, so the session's in-process worker never takes its tasks.
    Output goes to ``log_path``; :meth:`stop` kills the whole process group.
    ``app`` and ``cwd`` run another project's app instead (``celery -A proj``).
    """

    def __init__(
        self,
        env: dict[str, str],
        queue: str,
        log_path: Path,
        pool: str = "prefork",
        concurrency: int = 1,
        name: str | None = None,
        app: str = "worker_tasks",
        cwd: Path = ROOT_DIR,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.queue = queue
        self.name = name or f"{queue}@%h"
        self.log_path = log_path
        self.cwd = cwd
        self.argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-Q",
            queue,
            "-n",
            self.name,
            "--loglevel=INFO",
            "--without-mingle",
            "--without-gossip",
            *extra_args,
        ]
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> WorkerProcess:
        """Wait for Celery's ``ready.`` line; fail early if the worker exits."""

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.log()}")
            return " ready." in self.log()

        wait_for(ready, timeout, interval=0.1)
        return self

    def pool_children(self) -> list[psutil.Process]:
        """The prefork pool's child processes (where tasks run)."""
        assert self.process is not None
        return psutil.Process(self.process.pid).children()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the worker's process group (warm shutdown), SIGKILL if it lingers."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # pool children left behind
