"""The deployment users copy: docker-compose.yml and the Dockerfile.

No Docker engine runs here, so the compose file is validated by docker-compose
itself (``config`` needs no engine), the image's build is reproduced from
exactly what its Dockerfile copies, and the commands the image runs are
checked to be the ones the end-to-end tests run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from system_packages import require_binary
from test_packaging import clean_env, make_venv, pip_install

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_bridges_require_tokens(compose: dict) -> None:
    env = compose["services"]["bridge"]["environment"]
    assert env["TASKCAST_AUTH_SECRET"].startswith("${TASKCAST_AUTH_SECRET:?")
    assert "--insecure" not in compose["services"]["bridge"]["command"]


def test_compose_file_is_valid_for_docker_compose(tmp_path: Path) -> None:
    binary = require_binary("docker-compose", "docker-compose")
    command = [binary, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"]
    keyed = {**os.environ, "TASKCAST_AUTH_SECRET": "k" * 64}
    ok = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=keyed)
    assert ok.returncode == 0, ok.stderr
    unkeyed = {k: v for k, v in os.environ.items() if k != "TASKCAST_AUTH_SECRET"}
    refused = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=unkeyed)
    assert refused.returncode != 0 and "TASKCAST_AUTH_SECRET" in refused.stderr
    broken = tmp_path / "docker-compose.yml"
    broken.write_text((ROOT / "docker-compose.yml").read_text().replace("condition:", "when:"))
    bad_command = [binary, "-f", str(broken), "config", "-q"]
    bad = subprocess.run(bad_command, capture_output=True, env=keyed)
    assert bad.returncode != 0


def test_workers_scale_and_every_service_has_a_health_check(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "worker", "bridge", "haproxy"}
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert worker["command"][:4] == ["celery", "-A", "taskcast.demo.worker", "worker"]
    for name, service in services.items():
        assert "healthcheck" in service, name
    env = worker["environment"]
    assert env == services["bridge"]["environment"]
    assert env["TASKCAST_REDIS_URL"].startswith("redis://redis:")


def test_bridges_scale_behind_haproxy_and_redis_keeps_its_data(compose: dict) -> None:
    bridge, balancer = compose["services"]["bridge"], compose["services"]["haproxy"]
    assert "container_name" not in bridge and "ports" not in bridge
    assert balancer["ports"] == ["8765:8765"]
    (mount,) = balancer["volumes"]
    config = ROOT / mount.split(":")[0]
    assert "server-template bridge" in config.read_text() and "/readyz" in config.read_text()
    haproxy = require_binary("haproxy", "haproxy")
    checked = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    redis_command = compose["services"]["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"


def dockerfile_copies(dockerfile: str) -> list[tuple[str, str]]:
    """``(source, destination)`` of every COPY instruction, in order."""
    copies = []
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            *sources, destination = line.split()[1:]
            copies.extend((source, destination) for source in sources)
    return copies


def test_the_image_builds_from_what_its_dockerfile_copies(tmp_path: Path) -> None:
    """The image's ``pip install .`` runs on a build context holding exactly the COPY sources."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^RUN pip install \. ", dockerfile, re.M)
    context = tmp_path / "app"
    context.mkdir()
    for source, destination in dockerfile_copies(dockerfile):
        target = context / destination
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / source, target / Path(source).name)
    # The dependencies come from this interpreter; the package itself only from the context.
    env = make_venv(tmp_path / "env", system_site_packages=True)
    pip_install(env, "--no-deps", str(context))
    out = env.run("-m", "taskcast", "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "serve" in out.stdout and "demo" in out.stdout
    where = env.run("-c", "import taskcast.bridge; print(taskcast.bridge.__file__)", cwd=tmp_path)
    assert where.stdout.startswith(str(env.path)), where.stdout + where.stderr
    script = env.path / "bin" / "taskcast"
    assert subprocess.run([script, "--help"], capture_output=True, env=clean_env()).returncode == 0


def test_the_build_context_holds_only_what_the_image_copies() -> None:
    """``.dockerignore`` excludes everything (a checkout's .git, venvs, caches, a local
    .env with secrets) but the Dockerfile's COPY sources, so a build sends only those."""
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*"
    admitted = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied = {source.rstrip("/") for source, _ in dockerfile_copies(
        (ROOT / "Dockerfile").read_text()
    )}
    assert admitted == copied


def test_image_default_command_is_the_compose_bridge_command(compose: dict) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE).group(1))
    assert cmd == compose["services"]["bridge"]["command"]
    assert cmd[:2] == ["taskcast", "serve"]


def test_readme_documents_every_setting_with_its_default() -> None:
    from taskcast.worker_config import VARIABLES, Settings
    from taskcast.worker_config.settings import environment_value

    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", (ROOT / "README.md").read_text(), re.M))
    defaults = Settings()
    derived = {"CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"}  # default: TASKCAST_REDIS_URL
    for field, variable in VARIABLES.items():
        assert variable in rows, f"{variable} is missing from the README"
        if variable in derived:
            assert rows[variable] == "TASKCAST_REDIS_URL"
            continue
        shown = environment_value(getattr(defaults, field))
        assert rows[variable] in (shown, shown.removesuffix(".0")), variable
