"""The Celery side of taskcast: the event store, the task helper, lifecycle signals.

The event store and event encoding import without Celery, so the bridge can
read the store without building an app. Everything else loads on first use:
``tasks.app`` (what ``celery -A tasks worker`` asks for) builds the Celery app
from the environment, connects the lifecycle signal handlers and registers
the sample tasks; a bad setting stops it there with a message naming the
variable.
"""

from __future__ import annotations

import importlib
from typing import Any

from .events import Event
from .heartbeat import sweep_lost
from .store import EventStore, Keys
from .tracker import ProgressTracker

# name -> submodule that defines it; imported when first asked for.
_LAZY = {
    "app": "celery_app",
    "configure": "celery_app",
    "get_producer": "celery_app",
    "get_settings": "celery_app",
    "producer_stats": "celery_app",
    "AsyncEmitter": "emitter",
    "AsyncOperation": "emitter",
    "Emitter": "emitter",
    "Operation": "emitter",
    "StreamingMixin": "emitter",
    "ws_manager": "emitter",
    "ProgressTask": "task",
}

__all__ = ["Event", "EventStore", "Keys", "ProgressTracker", "sweep_lost", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tasks' has no attribute {name!r}")
    # The app comes with its lifecycle signal handlers and the sample tasks.
    importlib.import_module(".signals", __name__)
    importlib.import_module(".samples", __name__)
    return getattr(importlib.import_module(f".{module}", __name__), name)
