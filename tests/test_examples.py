"""The web-app example: a form submits a real task whose progress the page follows."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest
from celery import Celery
from helpers import ROOT_DIR, wait_finished

from taskcast.store import EventStore
from taskcast.worker_config import Settings, to_environment


@pytest.fixture
def webapp(task_settings: Settings, prefix: str, monkeypatch: pytest.MonkeyPatch):
    """The example as its README runs it: configured by the environment (this test's Redis)."""
    for variable, value in to_environment(replace(task_settings, prefix=prefix)).items():
        monkeypatch.setenv(variable, value)
    spec = importlib.util.spec_from_file_location("webapp", ROOT_DIR / "examples" / "webapp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app.test_client()


def test_page_loads_the_client_from_the_bridge(webapp) -> None:
    page = webapp.get("/").get_data(as_text=True)
    assert 'import { TaskcastClient } from "http://127.0.0.1:8765/taskcast.js"' in page
    assert "<option>demo.generate_code</option>" in page


def test_form_submits_a_task_that_streams_to_completion(
    webapp, task_app: Celery, store: EventStore
) -> None:
    reply = webapp.post("/submit", data={"task": "demo.generate_code"})
    assert reply.status_code == 200
    operation_id = reply.get_json()["operation_id"]
    assert wait_finished(store, operation_id, timeout=30)["status"] == "completed"
    refused = webapp.post("/submit", data={"task": "os.system"})
    assert refused.status_code == 400 and "unknown task" in refused.get_json()["error"]
