"""``tasks`` takes its configuration from the environment; bad values stop start-up."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import ROOT_DIR, worker_env

from taskcast.store import EventStore
from taskcast.worker_config import Settings, load_settings


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env, cwd=ROOT_DIR, capture_output=True, text=True, timeout=60, check=False
    )


def test_environment_configures_the_app_and_the_producer(task_settings: Settings) -> None:
    env = worker_env(
        task_settings,
        TASKCAST_PREFIX="envtest:",
        TASKCAST_HISTORY_MAXLEN="7",
        TASKCAST_PROGRESS_INTERVAL="0.2",
        TASKCAST_RESULT_MAX_BYTES="128",
    )
    code = (
        "import worker_tasks; from taskcast import tasks; app = worker_tasks.app;"
        "s = tasks.get_settings(); p = tasks.get_producer();"
        "print(app.conf.broker_url, app.conf.result_backend, s.prefix,"
        " p.store.history_maxlen, p.coalescer.interval, s.result_max_bytes,"
        " app.conf.task_acks_late, app.conf.worker_prefetch_multiplier)"
    )
    out = run([sys.executable, "-c", code], env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        task_settings.broker_url,
        task_settings.result_backend,
        "envtest:",
        "7",
        "0.2",
        "128",
        "True",
        "1",
    ]


@pytest.mark.parametrize(
    ("variable", "value"),
    [("TASKCAST_HISTORY_MAXLEN", "abc"), ("TASKCAST_PROGRESS_INTERVAL", "-1")],
)
def test_worker_with_a_bad_value_exits_naming_the_variable(
    task_settings: Settings, variable: str, value: str
) -> None:
    env = worker_env(task_settings, **{variable: value})
    argv = [sys.executable, "-m", "celery", "-A", "worker_tasks", "worker", "--loglevel=INFO"]
    out = run(argv, env)
    assert out.returncode != 0
    assert f"{variable}={value!r} is invalid" in out.stdout + out.stderr
    assert " ready." not in out.stdout + out.stderr


USER_APP = """
from celery import Celery
import taskcast

app = Celery("proj", broker={broker!r}, backend={backend!r})
app.conf.broker_transport_options = {transport!r}
taskcast.instrument(app)


@app.task
def add(a, b):
    return a + b
"""


def user_project(
    tmp_path: Path, broker: str, backend: str, transport: dict[str, str] | None = None
) -> Path:
    """A user's project whose app sets its broker and backend in code (Celery's tutorial)."""
    (tmp_path / "proj.py").write_text(
        USER_APP.format(broker=broker, backend=backend, transport=transport or {})
    )
    return tmp_path


@pytest.mark.parametrize(
    "variables",
    [
        {"CELERY_BROKER_URL": "sqs://", "CELERY_RESULT_BACKEND": "django-db"},
        {"CELERY_BROKER_URL": "redis+socket:///tmp/redis.sock"},
        {"CELERY_RESULT_BACKEND": "db+postgresql://scott:tiger@localhost/mydb"},
        {"CELERY_RESULT_BACKEND": "mongodb://localhost:27017/"},
        {"CELERY_RESULT_BACKEND": "s3://bucket/results"},
        {"CELERY_BROKER_URL": "not a url at all"},
    ],
)
def test_taskcast_never_judges_celerys_own_settings(variables: dict[str, str]) -> None:
    """Celery decides what its variables may hold (a backend taskcast never heard of, a
    broker of a transport it does not know); taskcast's settings load whatever they say."""
    settings = load_settings(variables)
    assert settings.broker_url == variables.get("CELERY_BROKER_URL", settings.redis_url)


def test_a_publish_with_celery_settings_taskcast_does_not_know_is_recorded(
    task_settings: Settings, prefix: str, tmp_path: Path, store: EventStore
) -> None:
    """Celery's filesystem broker and file backend, from Celery's own variables (which win
    over the app's code in Celery): the task is published, and taskcast records it."""
    folder, results = tmp_path / "broker", tmp_path / "results"
    folder.mkdir()
    results.mkdir()
    env = worker_env(
        replace(task_settings, prefix=prefix),
        CELERY_BROKER_URL="filesystem://",
        CELERY_RESULT_BACKEND=f"file://{results}",
    )
    transport = {"data_folder_in": str(folder), "data_folder_out": str(folder)}
    project = user_project(tmp_path, "memory://", "rpc://", transport)
    out = subprocess.run(
        [sys.executable, "-c", "import proj; print(proj.add.delay(1, 2).id)"],
        env=env, cwd=project, capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 0, out.stderr
    snapshot = store.snapshot(out.stdout.strip())
    assert snapshot is not None and snapshot["status"] == "queued"
    assert len(list(folder.iterdir())) == 1  # the message went to the user's broker


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("TASKCAST_HISTORY_MAXLEN", "abc", "must be a whole number >= 1"),
        ("TASKCAST_PROGRESS_INTERVAL", "soon", "must be a number >= 0.0"),
    ],
)
@pytest.mark.parametrize("start", ["worker", "import"])
def test_a_bad_value_stops_a_users_app_at_start_in_one_line(
    task_settings: Settings, tmp_path: Path, variable: str, value: str, expected: str,
    start: str,
) -> None:
    env = worker_env(task_settings, **{variable: value})
    project = user_project(tmp_path, task_settings.broker_url, task_settings.result_backend)
    argv = (
        [sys.executable, "-m", "celery", "-A", "proj", "worker", "--pool", "solo"]
        if start == "worker"
        else [sys.executable, "-c", "import proj"]
    )
    out = subprocess.run(
        argv, env=env, cwd=project,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode != 0
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert lines == [f"taskcast: {variable}={value!r} is invalid: {expected}"]
