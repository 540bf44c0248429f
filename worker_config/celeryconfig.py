"""Celery configuration for long-running, progress-reporting work.

The choices favour never losing a task over throughput: late acks so a
worker that dies hands its task back, prefetch 1 so a long task does not
hold others hostage, JSON so any language can read the messages.
"""

from __future__ import annotations

from typing import Any

from taskcast.worker_config.settings import Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    """Return the ``app.conf`` mapping for ``settings``."""
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_track_started": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "result_expires": settings.result_expires,
        "result_extended": True,
        "task_send_sent_event": False,
        "worker_send_task_events": False,
        "broker_connection_retry_on_startup": True,
        "timezone": "UTC",
        "enable_utc": True,
    }
