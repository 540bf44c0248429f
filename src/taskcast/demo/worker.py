"""The demo's Celery app: ``celery -A taskcast.demo.worker worker`` (what ``taskcast demo`` runs).

Only the demo and its workers load this module. It sets up an app as a
user's project would: built and configured here from the environment
(TASKCAST_* and CELERY_* variables, with the Celery options taskcast suggests
for long work), instrumented with one call, and given its tasks.
"""

from __future__ import annotations

from celery import Celery

from taskcast.demo import samples
from taskcast.tasks import instrument
from taskcast.worker_config import celery_config, load_settings

app = Celery("taskcast_demo")
app.conf.update(celery_config(load_settings()))
instrument(app)

__all__ = ["app", "samples"]
