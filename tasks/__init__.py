"""The Celery side of taskcast: the event store, the task helper, lifecycle signals.

Importing the package builds the Celery app from the environment (so
``celery -A tasks worker`` works), connects the lifecycle signal handlers and
registers the example tasks.
"""

from . import samples, signals
from .celery_app import app, configure, get_producer, get_settings, producer_stats
from .emitter import (
    AsyncEmitter,
    AsyncOperation,
    Emitter,
    Operation,
    StreamingMixin,
    ws_manager,
)
from .events import Event
from .heartbeat import sweep_lost
from .store import EventStore, Keys
from .task import ProgressTask
from .tracker import ProgressTracker

__all__ = [
    "AsyncEmitter",
    "AsyncOperation",
    "Emitter",
    "Event",
    "EventStore",
    "Keys",
    "Operation",
    "ProgressTask",
    "ProgressTracker",
    "StreamingMixin",
    "app",
    "configure",
    "get_producer",
    "get_settings",
    "producer_stats",
    "samples",
    "signals",
    "sweep_lost",
    "ws_manager",
]
