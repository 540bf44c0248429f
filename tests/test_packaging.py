"""taskcast as a user installs it: a wheel in a fresh virtual environment, beside their own code.

The wheel is built from this checkout and installed with its dependencies from
the package index into a new venv, so a missing dependency, a module left out
of the wheel or a generic top-level name (a user's ``tasks.py`` is Celery's
tutorial layout) fails here rather than in a user's project.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from bridge_helpers import BridgeProcess
from helpers import ROOT_DIR, events_of, wait_finished

from taskcast.embedded_redis import EmbeddedRedis
from taskcast.store import EventStore

pytestmark = pytest.mark.timeout(600)


@dataclass(frozen=True)
class Venv:
    path: Path

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")

    def run(
        self, *argv: str, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.python, *argv],
            cwd=cwd,
            env=env or clean_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would point Python at this checkout."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "VIRTUAL_ENV"} and not k.startswith(("TASKCAST_", "CELERY_"))
    }
    env.update(extra)
    return env


def make_venv(path: Path, system_site_packages: bool = False) -> Venv:
    venv.EnvBuilder(with_pip=True, system_site_packages=system_site_packages).create(path)
    return Venv(path)


def pip_install(env: Venv, *args: str) -> None:
    out = env.run("-m", "pip", "install", "-q", "--disable-pip-version-check", *args)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from the checkout, as ``pip wheel .`` builds it for an index."""
    out_dir = tmp_path_factory.mktemp("wheel")
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out_dir)]
    built = subprocess.run(
        [*argv, str(ROOT_DIR)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (found,) = out_dir.glob("taskcast-*.whl")
    return found


@pytest.fixture(scope="module")
def user_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A fresh venv with the wheel and its declared dependencies, nothing else."""
    env = make_venv(tmp_path_factory.mktemp("venv") / "env")
    pip_install(env, str(wheel))
    return env


def site_packages_top_level(record: str) -> set[str]:
    """Top-level entries a RECORD installs into site-packages (scripts live elsewhere)."""
    names = set()
    for row in csv.reader(record.splitlines()):
        if row and not row[0].startswith(".."):
            names.add(row[0].split("/", 1)[0])
    return names


def test_the_wheel_installs_only_the_taskcast_namespace(user_venv: Venv, tmp_path: Path) -> None:
    out = user_venv.run(
        "-c",
        "import importlib.metadata as m, sys; d = m.distribution('taskcast');"
        "sys.stdout.write(d.read_text('RECORD'))",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    top = site_packages_top_level(out.stdout)
    assert top == {"taskcast", "taskcast-0.1.0.dist-info"}
    recorded = out.stdout
    assert "taskcast/py.typed" in recorded
    assert "taskcast/bridge/static/taskcast.js" in recorded
    assert "bench/" not in recorded and "tests/" not in recorded


PUBLIC_NAMES = {
    "taskcast": [
        "instrument", "ProgressTask", "progress", "status", "log", "ProgressRecorder",
        "Emitter", "AsyncEmitter", "mint_token",
    ],
    "taskcast.client": ["TaskcastClient", "SyncClient"],
}


def test_a_strict_type_checker_sees_every_public_name_typed(
    user_venv: Venv, tmp_path: Path
) -> None:
    """A user's ``mypy --strict`` knows what each public name is: none is ``Any`` (a lazy
    export the checker cannot see would be, and would hide every mistake in its use)."""
    lines = [f"import {module}" for module in PUBLIC_NAMES]
    lines += [
        f"reveal_type({module}.{name})" for module, names in PUBLIC_NAMES.items() for name in names
    ]
    user_code = tmp_path / "user_code.py"
    user_code.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
         "--python-executable", user_venv.python, str(user_code)],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=300,
    )
    revealed = [line for line in out.stdout.splitlines() if "Revealed type" in line]
    assert len(revealed) == sum(map(len, PUBLIC_NAMES.values())), out.stdout + out.stderr
    assert not [line for line in revealed if line.endswith('"Any"')], out.stdout
    assert ": error:" not in out.stdout, out.stdout


def test_the_wheel_declares_the_pythons_it_supports(user_venv: Venv, tmp_path: Path) -> None:
    out = user_venv.run(
        "-c",
        "import importlib.metadata as m, json; d = m.metadata('taskcast');"
        "print(json.dumps([d['Requires-Python'], d.get_all('Classifier')]))",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    requires, classifiers = json.loads(out.stdout)
    assert requires == ">=3.10"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f"Programming Language :: Python :: {version}" in classifiers
    assert "Typing :: Typed" in classifiers


def test_editable_install_exposes_only_taskcast(tmp_path: Path) -> None:
    """``pip install -e .`` maps the folders into ``taskcast`` and puts no ``tasks`` on the path."""
    env = make_venv(tmp_path / "env", system_site_packages=True)
    pip_install(env, "--no-deps", "-e", str(ROOT_DIR))
    code = (
        "import importlib.util as u, taskcast.tasks, taskcast.bridge, taskcast.worker_config;"
        "print(taskcast.tasks.__file__);"
        "print([n for n in ('tasks', 'bridge', 'worker_config', 'bench') if u.find_spec(n)])"
    )
    out = env.run("-c", code, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    location, leaked = out.stdout.splitlines()
    assert Path(location) == ROOT_DIR / "tasks" / "__init__.py"
    assert leaked == "[]"


TUTORIAL_TASKS = """
    from celery import Celery

    import taskcast
    from taskcast import ProgressTask

    app = Celery("tasks", broker="{broker}", backend="{backend}")
    taskcast.instrument(app)


    @app.task
    def add(x, y):
        return x + y


    @app.task(bind=True, base=ProgressTask)
    def crunch(self, n):
        for i in range(n):
            self.progress(current=i + 1, total=n, message=f"step {{i + 1}}")
        return n


    @app.task
    def fail():
        raise RuntimeError("tutorial failure")
"""


@pytest.fixture
def tutorial_project(tmp_path: Path, redis_server: EmbeddedRedis) -> Iterator[Path]:
    """Celery's first-steps layout: a directory with the user's own ``tasks.py``."""
    base = redis_server.url.rsplit("/", 1)[0]
    project = tmp_path / "project"
    project.mkdir()
    source = TUTORIAL_TASKS.format(broker=f"{base}/5", backend=f"{base}/6")
    (project / "tasks.py").write_text(textwrap.dedent(source))
    yield project


def test_a_users_tasks_py_imports_taskcast_and_its_worker_loads_it(
    user_venv: Venv, tutorial_project: Path, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    prefix = f"tutorial{os.getpid()}:"
    env = clean_env(TASKCAST_REDIS_URL=redis_server.url, TASKCAST_PREFIX=prefix)
    imported = user_venv.run("-c", "import tasks; print(tasks.__file__)", cwd=tutorial_project)
    assert imported.returncode == 0, imported.stderr
    assert Path(imported.stdout.strip()) == tutorial_project / "tasks.py"

    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [user_venv.python, "-m", "celery", "-A", "tasks", "worker", "-P", "solo", "-l", "INFO"],
            cwd=tutorial_project,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        call = user_venv.run(
            "-c",
            "import tasks; r = tasks.crunch.delay(5); a = tasks.add.delay(2, 3);"
            "f = tasks.fail.delay(); print(r.id, a.id, f.id);"
            "print(r.get(timeout=60), a.get(timeout=60), f.get(timeout=60, propagate=False))",
            cwd=tutorial_project,
            env=env,
        )
        assert call.returncode == 0, call.stderr + log.read_text()
        ids, values = call.stdout.splitlines()
        operation_id, add_id, fail_id = ids.split()
        assert values == "5 5 tutorial failure"
        assert "tasks.crunch" in log.read_text()  # the worker loaded the user's module
    finally:
        worker.terminate()
        worker.wait(timeout=30)

    import redis

    store = EventStore(redis.Redis.from_url(redis_server.url), prefix=prefix)
    wait_finished(store, operation_id, timeout=15)
    events = events_of(store, operation_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    statuses = [e["data"].get("status") for e in events if e["event_type"] == "status"]
    assert statuses[:2] == ["queued", "running"]
    assert events[-1]["event_type"] == "completed"
    assert any(e["event_type"] == "progress" and e["data"].get("total") == 5 for e in events)
    # A task without the base class gets its whole lifecycle; a failing one ends failed.
    assert wait_finished(store, add_id)["status"] == "completed"
    plain = [e["event_type"] for e in events_of(store, add_id)]
    assert plain == ["status", "status", "result", "completed"]
    failed = wait_finished(store, fail_id)
    assert (failed["status"], failed["error_type"]) == ("failed", "RuntimeError")

    # A subscriber, through the wheel's own bridge and Python client, sees the same.
    bridge = BridgeProcess("--port", "0", env=env, python=user_venv.python)
    try:
        bridge.wait_listening()
        watched = user_venv.run("-c", WATCH, bridge.url, operation_id, cwd=tmp_path, env=env)
    finally:
        bridge.stop()
    assert watched.returncode == 0, watched.stderr
    seen = json.loads(watched.stdout)
    assert [seq for seq, _, _ in seen] == [e["seq"] for e in events]
    assert seen[0][1:] == ["status", "queued"] and seen[-1][1] == "completed"


WATCH = """
import json, sys
from taskcast.client import SyncClient

client = SyncClient(sys.argv[1])
events = [(e["seq"], e["event_type"], e["data"].get("status")) for e in client.watch(sys.argv[2])]
client.close()
print(json.dumps(events))
"""
