"""Cooperative cancellation: a task's next helper call stops it once its operation has ended.

A client's ``cancel`` makes the bridge store the operation's terminal
``error`` (``revoked``) and revoke the Celery task. Pools that can, kill it
(``terminate``); every other pool (threads, gevent, eventlet, solo), and a
task already running when the revoke arrives, is stopped here: the store
refuses events after the end, the producer says :data:`ENDED`, and the
helper raises :class:`OperationCancelled`, which unwinds the task like any
exception. It is Celery's ``Ignore``, so the worker logs the task as ignored
instead of failed with a traceback, and the result backend keeps the
``REVOKED`` state stored here, as for a task Celery revoked itself. What
Celery's ``AbortableTask`` offers, without its base class or its
result-backend requirement.
"""

from __future__ import annotations

from celery import current_task
from celery.exceptions import Ignore

# What the producer's emit returns when the store refused an event because its
# operation has ended (here, not in the producer: importing ProgressTask must
# not load the Redis client).
ENDED = -1


class OperationCancelled(Ignore):
    """The operation of the running task has ended (a client cancelled it): stop working."""


def stop_if_ended(operation_id: str, outcome: int) -> None:
    """Raise :class:`OperationCancelled` when an emit's ``outcome`` says the operation ended."""
    if outcome == ENDED:
        reason = f"operation {operation_id} was cancelled (or has ended)"
        _mark_revoked(operation_id, reason)
        raise OperationCancelled(reason)


def _mark_revoked(operation_id: str, reason: str) -> None:
    """Store Celery's ``REVOKED`` for the task being stopped, as its worker does when it
    revokes one itself (result waiters and chords learn of it); not from other threads."""
    task = current_task
    if task is None or task.request.id != operation_id:
        return
    store = not task.ignore_result or task.store_errors_even_if_ignored
    task.backend.mark_as_revoked(operation_id, reason, request=task.request, store_result=store)
