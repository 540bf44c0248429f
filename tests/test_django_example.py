"""The Django example, as its README runs it: Django's own server, the project's worker, a
bridge, and a headless Chromium pressing the page's button and watching the bar fill."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from bridge_helpers import BridgeProcess, http_get
from browser_helpers import chromium
from helpers import ROOT_DIR, WorkerProcess, events_of, summary, wait_finished, wait_for, worker_env

from taskcast.embedded_redis import free_port
from taskcast.store import EventStore
from taskcast.worker_config import Settings

PROJECT = ROOT_DIR / "examples" / "django_app"
ARTIFACTS = ROOT_DIR / "test-artifacts"


@pytest.fixture
def site(task_settings: Settings, prefix: str, tmp_path: Path) -> Iterator[str]:
    """The worker, the bridge and Django's server, all on this test's Redis and prefix."""
    base = task_settings.redis_url.rsplit("/", 1)[0]
    settings = replace(
        task_settings, prefix=prefix, broker_url=f"{base}/13", result_backend=f"{base}/14"
    )
    env = worker_env(settings)
    env.pop("PYTHONPATH")  # the project needs nothing from the test suite
    django_port = free_port()
    # The page is on Django's origin: the bridge serves it only when listed (README).
    page_origin = {"TASKCAST_ALLOWED_ORIGINS": f"http://127.0.0.1:{django_port}"}
    bridge = BridgeProcess("--port", "0", env={**env, **page_origin})
    worker = WorkerProcess(env, "celery", tmp_path / "shop.log", app="shop", cwd=PROJECT)
    server: subprocess.Popen[bytes] | None = None
    try:
        port = bridge.wait_listening()
        worker.start().wait_ready()
        server = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", f"127.0.0.1:{django_port}", "--noreload"],
            cwd=PROJECT,
            env={**env, "TASKCAST_PUBLIC_URL": f"http://127.0.0.1:{port}"},
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "django.log").open("wb"),
        )
        url = f"http://127.0.0.1:{django_port}/"

        def serving() -> bool:
            assert server is not None and server.poll() is None, (
                tmp_path / "django.log"
            ).read_text()
            try:
                return http_get(url)[0] == 200
            except OSError:
                return False

        wait_for(serving, timeout=30, interval=0.2)
        yield url
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        worker.stop()
        bridge.stop()


def test_the_django_page_shows_a_tasks_live_progress(site: str, store: EventStore) -> None:
    with chromium() as browser:
        page = browser.new_page()
        page.set_default_timeout(30_000)
        page.goto(site)
        page.fill("input[name=rows]", "12")
        page.click("text=Build report")
        page.locator("#status[data-status=completed]").wait_for()
        operation_id = page.evaluate("document.body.dataset.operationId")
        bar = page.evaluate("document.getElementById('bar').value")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "django_example.png"))
        message = page.inner_text("#message")
    assert bar == 1
    assert message == "Row 12 of 12"
    snapshot = wait_finished(store, operation_id)
    assert snapshot["status"] == "completed" and snapshot["operation_type"].endswith(
        "build_report"
    )
    events = events_of(store, operation_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert summary(events)[:3] == ["status:queued", "status:running", "status:processing"]
