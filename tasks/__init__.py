"""``taskcast.tasks``: the Celery side of taskcast.

Instrumentation of any Celery app (:func:`instrument`), the task helper
(``ProgressTask``, the current-task helpers, ``ProgressRecorder``), the
producer that stores events (coalescing, fail-safe), the emitter for work
that is not a Celery task, and worker heartbeats. Importing it builds no app,
reads no setting and opens no connection: each name loads its module on
first use, and the settings load on the first event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskcast.lazy import lazy_getattr

if TYPE_CHECKING:
    from taskcast.tasks.cancel import OperationCancelled
    from taskcast.tasks.current import ProgressRecorder, log, progress, status
    from taskcast.tasks.emitter import (
        AsyncEmitter,
        AsyncOperation,
        Emitter,
        Operation,
        StreamingMixin,
        ws_manager,
    )
    from taskcast.tasks.lifecycle import instrument, is_instrumented
    from taskcast.tasks.runtime import configure, get_producer, get_settings, producer_stats
    from taskcast.tasks.task import ProgressTask
    from taskcast.tasks.tracker import ProgressTracker

# name -> submodule that defines it; imported when first asked for.
_LAZY = {
    "instrument": ".lifecycle",
    "is_instrumented": ".lifecycle",
    "ProgressTask": ".task",
    "progress": ".current",
    "status": ".current",
    "log": ".current",
    "ProgressRecorder": ".current",
    "Emitter": ".emitter",
    "AsyncEmitter": ".emitter",
    "Operation": ".emitter",
    "AsyncOperation": ".emitter",
    "StreamingMixin": ".emitter",
    "ws_manager": ".emitter",
    "ProgressTracker": ".tracker",
    "OperationCancelled": ".cancel",
    "configure": ".runtime",
    "get_settings": ".runtime",
    "get_producer": ".runtime",
    "producer_stats": ".runtime",
}

__all__ = [
    "instrument",
    "is_instrumented",
    "ProgressTask",
    "progress",
    "status",
    "log",
    "ProgressRecorder",
    "Emitter",
    "AsyncEmitter",
    "Operation",
    "AsyncOperation",
    "StreamingMixin",
    "ws_manager",
    "ProgressTracker",
    "OperationCancelled",
    "configure",
    "get_settings",
    "get_producer",
    "producer_stats",
]

__getattr__ = lazy_getattr(__name__, _LAZY)
