"""taskcast inside a user's own Celery project, laid out as Celery's documentation lays it out.

``proj/celery.py`` builds the app from its own configuration module, tasks are
``@shared_task``s found by ``autodiscover_tasks``, the worker is ``celery -A
proj worker`` and a separate process publishes. taskcast is one line there
(``taskcast.instrument(app)``), and the tasks use each of its progress APIs.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from celery import Celery, current_app
from helpers import WorkerProcess, events_of, summary, wait_finished, wait_for, worker_env

import taskcast
from taskcast.embedded_redis import EmbeddedRedis
from taskcast.store import EventStore
from taskcast.worker_config import Settings

INSTRUMENT = "taskcast.instrument(app)"

CELERY_MODULE = """
    from celery import Celery

    import taskcast

    app = Celery("proj")
    app.config_from_object("proj.celeryconfig")
    {instrument}
    app.autodiscover_tasks(["proj"])
"""

CONFIG_MODULE = """
    broker_url = "{broker}"
    result_backend = "{backend}"
    task_default_queue = "{queue}"
    timezone = "Europe/Berlin"
    task_acks_late = False
    worker_prefetch_multiplier = 4
"""

TASKS_MODULE = """
    from celery import shared_task

    import taskcast
    from taskcast import ProgressRecorder, ProgressTask


    @shared_task(bind=True, base=ProgressTask)
    def crunch(self, n):
        for i in range(n):
            self.progress(current=i + 1, total=n, message=f"step {i + 1}")
        return n


    @shared_task
    def add(x, y):
        return x + y


    @shared_task
    def with_helpers(n):
        taskcast.status("processing", "helpers at work")
        for i in range(n):
            taskcast.progress(current=i + 1, total=n)
        taskcast.log("info", "helpers done")
        return n


    @shared_task(bind=True)
    def recorded(self, n):
        recorder = ProgressRecorder(self)
        for i in range(n):
            recorder.set_progress(i + 1, n, description=f"row {i + 1}")
        return n


    @shared_task
    def boom():
        raise ValueError("boom")
"""

PUBLISHER = """
import sys
from proj.celery import app
from proj import tasks

calls = {"crunch": (4,), "add": (2, 3), "with_helpers": (3,), "recorded": (3,), "boom": ()}
print(app.conf.broker_url)
for name, args in calls.items():
    result = getattr(tasks, name).delay(*args)
    try:
        value = result.get(timeout=60)
    except ValueError as exc:
        value = f"raised {exc}"
    print(name, result.id, value)
"""


def write_project(root: Path, instrument: str, broker: str, backend: str, queue: str) -> Path:
    """``proj/`` under ``root``; ``instrument`` is the source (any lines) that calls taskcast."""
    package = root / "proj"
    package.mkdir(parents=True)
    sources = {
        "__init__.py": "from .celery import app as celery_app\n\n__all__ = ('celery_app',)\n",
        "celery.py": textwrap.dedent(CELERY_MODULE).format(instrument=instrument),
        "celeryconfig.py": textwrap.dedent(CONFIG_MODULE).format(
            broker=broker, backend=backend, queue=queue
        ),
        "tasks.py": textwrap.dedent(TASKS_MODULE),
    }
    for name, source in sources.items():
        (package / name).write_text(source)
    (root / "publish.py").write_text(PUBLISHER)
    return root


RunProject = Callable[..., dict[str, tuple[str, str]]]


@pytest.fixture
def run_project(task_settings: Settings, prefix: str, tmp_path: Path) -> Iterator[RunProject]:
    """``run_project(instrument=INSTRUMENT, environment=None)``: write the project (with
    ``instrument``, the taskcast source of its celery.py; "" for none), start ``celery -A
    proj worker``, publish each task from another process; returns ``{name: (task id,
    printed value)}`` and the broker the publisher used under ``"broker"``. Both processes
    get the ``TASKCAST_*`` variables of ``environment`` (default: this test's store)."""
    base = task_settings.redis_url.rsplit("/", 1)[0]
    started: list[WorkerProcess] = []

    def run(
        instrument: str = INSTRUMENT, environment: Settings | None = None
    ) -> dict[str, tuple[str, str]]:
        queue = f"{prefix.rstrip(':')}-proj"
        broker = f"{base}/8"
        root = write_project(tmp_path / "site", instrument, broker, f"{base}/9", queue)
        # The project's own configuration names its broker; CELERY_BROKER_URL in the
        # environment would override it (Celery reads that variable itself).
        settings = environment or replace(task_settings, prefix=prefix)
        env = {
            name: value
            for name, value in worker_env(settings).items()
            if not name.startswith("CELERY_")
        }
        worker = WorkerProcess(env, queue, tmp_path / "proj.log", app="proj", cwd=root)
        started.append(worker)
        worker.start().wait_ready()
        published = subprocess.run(
            [sys.executable, "publish.py"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert published.returncode == 0, published.stderr + worker.log()
        first, *rows = published.stdout.splitlines()
        assert first == broker, "the task went to a broker that is not the project's"
        runs = {"broker": (first, "")}
        for row in rows:
            name, task_id, value = row.split(" ", 2)
            runs[name] = (task_id, value)
        return runs

    yield run
    for worker in started:
        worker.stop()


LIFECYCLE = {"status:queued", "status:running", "result", "completed", "error"}


def assert_every_task_streamed(runs: dict[str, tuple[str, str]], store: EventStore) -> None:
    """Each task of the project returned, and ``store`` holds its lifecycle, each event once."""
    assert {name: value for name, (_, value) in runs.items() if name != "broker"} == {
        "crunch": "4",
        "add": "5",
        "with_helpers": "3",
        "recorded": "3",
        "boom": "raised boom",
    }
    for name in ("crunch", "add", "with_helpers", "recorded", "boom"):
        task_id = runs[name][0]
        snapshot = wait_finished(store, task_id)
        events = events_of(store, task_id)
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), name
        steps = summary(events)
        ending = ["error"] if name == "boom" else ["result", "completed"]
        lifecycle = [step for step in steps if step in LIFECYCLE]
        assert lifecycle == ["status:queued", "status:running", *ending], (name, steps)
        assert steps[:2] == ["status:queued", "status:running"] and steps[-1] == ending[-1]
        if name == "boom":
            assert snapshot["status"] == "failed" and snapshot["error_type"] == "ValueError"
        else:
            assert snapshot["status"] == "completed"


def test_instrumented_project_streams_every_task_and_its_progress(
    run_project: RunProject, store: EventStore
) -> None:
    runs = run_project()
    assert_every_task_streamed(runs, store)
    counts = {
        name: [(e["data"].get("current"), e["data"].get("total")) for e in
               events_of(store, runs[name][0]) if e["event_type"] == "progress"]
        for name in ("crunch", "with_helpers", "recorded")
    }
    assert counts["crunch"][-1] == (4, 4)
    assert counts["with_helpers"][-1] == (3, 3)
    assert counts["recorded"][-1] == (3, 3)
    helper_events = summary(events_of(store, runs["with_helpers"][0]))
    assert "status:processing" in helper_events and "log" in helper_events
    recorded = [e for e in events_of(store, runs["recorded"][0]) if e["event_type"] == "progress"]
    assert recorded[-1]["data"]["message"] == "row 3"


def test_without_instrument_only_progress_tasks_are_recorded(
    run_project: RunProject, store: EventStore
) -> None:
    runs = run_project("")
    crunch = wait_finished(store, runs["crunch"][0])
    assert crunch["status"] == "completed"
    assert summary(events_of(store, runs["crunch"][0]))[:2] == ["status:queued", "status:running"]
    for name in ("add", "with_helpers", "recorded", "boom"):
        assert store.snapshot(runs[name][0]) is None, f"{name} of an app nobody instrumented"


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server that only ``instrument``'s keyword arguments name."""
    with EmbeddedRedis() as server:
        yield server


def test_instrument_keyword_settings_choose_the_store_and_calling_it_twice_doubles_nothing(
    own_redis: EmbeddedRedis,
    run_project: RunProject,
    task_settings: Settings,
    prefix: str,
    redis_client: redis.Redis,
) -> None:
    elsewhere = f"elsewhere-{prefix}"  # where the TASKCAST_* environment points
    runs = run_project(
        f"taskcast.instrument(app, redis_url={own_redis.url!r}, prefix={prefix!r})\n"
        "taskcast.instrument(app)  # a second call, as a second module might make",
        replace(task_settings, prefix=elsewhere),
    )
    own = redis.Redis.from_url(own_redis.url)
    try:
        assert_every_task_streamed(runs, EventStore(own, prefix=prefix))
    finally:
        own.close()
    assert redis_client.keys(f"{elsewhere}*") == [], "events went where the environment points"


def progress_of(store: EventStore, operation_id: str) -> list[dict]:
    return [e["data"] for e in events_of(store, operation_id) if e["event_type"] == "progress"]


def test_progress_recorder_still_stores_celerys_progress_state_for_polling_views(
    task_app: Celery, store: EventStore, tmp_path: Path
) -> None:
    """celery-progress's views poll ``AsyncResult``: the state must stay there while it runs."""
    release = tmp_path / "release"
    result = task_app.send_task("test.recorder_until", kwargs={"path": str(release)})
    try:
        wait_for(lambda: result.state == "PROGRESS", timeout=15)
        assert result.info == {
            "pending": False,
            "current": 2,
            "total": 5,
            "percent": 40.0,
            "description": "row 2",
        }
        streamed = wait_for(lambda: progress_of(store, result.id))
        assert [(p["current"], p["total"], p["message"]) for p in streamed] == [(2, 5, "row 2")]
        assert store.snapshot(result.id)["status"] == "running"
    finally:
        release.touch()
    assert result.get(timeout=15) == 2 and result.state == "SUCCESS"
    assert wait_finished(store, result.id)["status"] == "completed"


class UserConfig:
    broker_url = "memory://"
    result_backend = "cache+memory://"
    timezone = "Europe/Berlin"
    task_acks_late = False
    worker_prefetch_multiplier = 4
    task_serializer = "pickle"


def test_instrument_changes_nothing_in_the_apps_configuration() -> None:
    app = Celery("users")
    app.config_from_object(UserConfig)
    before = {key: repr(app.conf[key]) for key in app.conf}
    current = current_app._get_current_object()
    assert taskcast.instrument(app) is app
    taskcast.instrument(app)  # twice is harmless
    assert {key: repr(app.conf[key]) for key in app.conf} == before
    assert current_app._get_current_object() is current


def test_tasks_published_by_an_app_nobody_instrumented_get_no_queued(
    task_app: Celery, store: EventStore, task_settings: Settings
) -> None:
    base = task_settings.redis_url.rsplit("/", 1)[0]
    other = Celery("other", broker=f"{base}/10")
    result = other.send_task("other.job", queue="nobody-consumes-this")
    assert store.snapshot(result.id) is None
    mine = task_app.send_task("test.plain_add", kwargs={"a": 1, "b": 2})
    assert wait_finished(store, mine.id)["status"] == "completed"
