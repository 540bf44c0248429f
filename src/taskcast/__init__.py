"""taskcast: real-time progress streaming for Celery tasks.

The public surface, each name loaded on first use so that ``import taskcast``
builds no Celery app, reads no setting, registers no task and opens no
connection:

- ``instrument(app)``: stream the lifecycle of every task of a Celery app.
- ``ProgressTask``: a task base class with ``self.progress``/``status``/``log``.
- ``progress``, ``status``, ``log``: the same for the task running now.
- ``ProgressRecorder``: celery-progress's recorder, streamed.
- ``Emitter``, ``AsyncEmitter``: operations for work that is not a Celery task.
- ``mint_token``: a token for the bridge, minted by the web app that submits work.

The clients are in ``taskcast.client`` (``TaskcastClient``, ``SyncClient``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskcast.lazy import lazy_getattr

if TYPE_CHECKING:
    from taskcast.tasks.current import ProgressRecorder, log, progress, status
    from taskcast.tasks.emitter import AsyncEmitter, Emitter
    from taskcast.tasks.lifecycle import instrument
    from taskcast.tasks.task import ProgressTask
    from taskcast.tokens import mint_token

__version__ = "0.1.0"

_LAZY = {
    "instrument": ".tasks.lifecycle",
    "ProgressTask": ".tasks.task",
    "progress": ".tasks.current",
    "status": ".tasks.current",
    "log": ".tasks.current",
    "ProgressRecorder": ".tasks.current",
    "Emitter": ".tasks.emitter",
    "AsyncEmitter": ".tasks.emitter",
    "mint_token": ".tokens",
}

__all__ = [
    "__version__",
    "instrument",
    "ProgressTask",
    "progress",
    "status",
    "log",
    "ProgressRecorder",
    "Emitter",
    "AsyncEmitter",
    "mint_token",
]

__getattr__ = lazy_getattr(__name__, _LAZY)
