"""The project's own Celery app, set up as Celery's Django guide sets it up, plus one line."""

import os

from celery import Celery

import taskcast

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

app = Celery("shop")
app.config_from_object("django.conf:settings", namespace="CELERY")
taskcast.instrument(app)  # the only taskcast line in the project's Celery setup
app.autodiscover_tasks()
