"""The deployment users copy: docker-compose.yml and the Dockerfile.

No Docker engine runs here, so the compose file is validated by docker-compose
itself (``config`` needs no engine), and the commands the image runs are
checked to be the ones the end-to-end tests run.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from system_packages import ensure_binary

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_is_valid_for_docker_compose(tmp_path: Path) -> None:
    binary = ensure_binary("docker-compose", "docker-compose")
    ok = subprocess.run(
        [binary, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert ok.returncode == 0, ok.stderr
    broken = tmp_path / "docker-compose.yml"
    broken.write_text((ROOT / "docker-compose.yml").read_text().replace("condition:", "when:"))
    bad = subprocess.run([binary, "-f", str(broken), "config", "-q"], capture_output=True)
    assert bad.returncode != 0


def test_workers_scale_and_every_service_has_a_health_check(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "worker", "bridge"}
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert worker["command"][:4] == ["celery", "-A", "tasks", "worker"]
    for name, service in services.items():
        assert "healthcheck" in service, name
    env = worker["environment"]
    assert env == services["bridge"]["environment"]
    assert env["TASKCAST_REDIS_URL"].startswith("redis://redis:")


def test_image_default_command_is_the_compose_bridge_command(compose: dict) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE).group(1))
    assert cmd == compose["services"]["bridge"]["command"]
    assert cmd[:2] == ["taskcast", "serve"]


def test_readme_documents_every_setting_with_its_default() -> None:
    from worker_config import VARIABLES, Settings

    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", (ROOT / "README.md").read_text(), re.M))
    defaults = Settings()
    derived = {"CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"}  # default: TASKCAST_REDIS_URL
    for field, variable in VARIABLES.items():
        assert variable in rows, f"{variable} is missing from the README"
        if variable in derived:
            assert rows[variable] == "TASKCAST_REDIS_URL"
            continue
        value = getattr(defaults, field)
        shown = str(value).lower() if isinstance(value, bool) else str(value)
        assert rows[variable] in (shown, shown.removesuffix(".0")), variable
