"""``tasks`` takes its configuration from the environment; bad values stop start-up."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import ROOT_DIR, worker_env

from taskcast.worker_config import Settings


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
