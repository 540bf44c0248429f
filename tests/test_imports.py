"""Importing taskcast has no side effects a user's process would notice.

Each import runs in a fresh interpreter that records, while the import runs,
every Celery app constructed, every TASKCAST_/CELERY_ variable read and every
socket connect; afterwards it checks that a new app of the user's gets no
task from taskcast and that no server library was loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from helpers import ROOT_DIR

PROBE = textwrap.dedent(
    """
    import json, os, socket, sys
    import celery

    apps, reads, connects = [], [], []
    original_init = celery.Celery.__init__

    def counting_init(self, *args, **kwargs):
        apps.append(args[:1])
        original_init(self, *args, **kwargs)

    class RecordingEnviron(dict):
        def get(self, key, default=None):
            if key.startswith(("TASKCAST_", "CELERY_")):
                reads.append(key)
            return super().get(key, default)

        def __getitem__(self, key):
            if key.startswith(("TASKCAST_", "CELERY_")):
                reads.append(key)
            return super().__getitem__(key)

    original_connect = socket.socket.connect

    def recording_connect(self, address):
        connects.append(str(address))
        return original_connect(self, address)

    real_environ = os.environ
    celery.Celery.__init__ = counting_init
    os.environ = RecordingEnviron(os.environ)
    socket.socket.connect = recording_connect

    exec(sys.argv[1])

    celery.Celery.__init__ = original_init
    os.environ = real_environ
    server_stack = ("websockets.asyncio.server", "websockets.server", "prometheus_client",
                    "redis.asyncio")
    users_app = celery.Celery("users_app")
    print(json.dumps({
        "apps": apps,
        "reads": reads,
        "connects": connects,
        "server_modules": [m for m in server_stack if m in sys.modules],
        "tasks_given": sorted(n for n in users_app.tasks if not n.startswith("celery.")),
    }))
    """
)


@pytest.mark.parametrize(
    "statement",
    [
        "import taskcast",
        "from taskcast import ProgressTask",
        "from taskcast.client import TaskcastClient",
        "import taskcast.tasks, taskcast.worker_config",
        "from taskcast.bridge.hub import Hub; from taskcast.bridge.commands import parse_command",
    ],
)
def test_import_builds_no_app_reads_nothing_and_connects_nowhere(statement: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, statement],
        capture_output=True,
        text=True,
        cwd=ROOT_DIR / "tests",
        env={"PATH": "/usr/bin:/bin", "TASKCAST_REDIS_URL": "redis://127.0.0.1:1/0"},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen == {
        "apps": [],
        "reads": [],
        "connects": [],
        "server_modules": [],
        "tasks_given": [],
    }


def loaded_after(imports: str, prefixes: tuple[str, ...]) -> list[str]:
    """Modules starting with ``prefixes`` loaded by ``imports`` in a fresh interpreter."""
    listing = f"[m for m in sorted(sys.modules) if m.startswith({prefixes!r})]"
    code = f"import json, sys; {imports}; print(json.dumps({listing}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_pure_bridge_core_imports_neither_redis_nor_websockets() -> None:
    core = "import taskcast.bridge.hub, taskcast.bridge.commands"
    assert loaded_after(core, ("redis", "websockets", "celery")) == []


def test_the_bridge_never_imports_the_celery_side() -> None:
    server = "import taskcast.bridge.server, taskcast.bridge.serve"
    assert loaded_after(server, ("taskcast.tasks", "celery")) == []
