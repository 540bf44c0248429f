"""Cooperative cancellation: a task's next helper call stops it once its operation has ended.

A client's ``cancel`` makes the bridge store the operation's terminal
``error`` (``revoked``) and revoke the Celery task. Pools that can, kill it
(``terminate``); every other pool (threads, gevent, eventlet, solo), and a
task already running when the revoke arrives, is stopped here: the store
refuses events after the end, the producer says :data:`ENDED`, and the
helper raises :class:`OperationCancelled`, which unwinds the task like any
exception and is recorded as ``revoked``. What Celery's ``AbortableTask``
offers, without its base class or its result-backend requirement.
"""

from __future__ import annotations

# What the producer's emit returns when the store refused an event because its
# operation has ended (here, not in the producer: importing ProgressTask must
# not load the Redis client).
ENDED = -1


class OperationCancelled(Exception):
    """The operation of the running task has ended (a client cancelled it): stop working."""


def stop_if_ended(operation_id: str, outcome: int) -> None:
    """Raise :class:`OperationCancelled` when an emit's ``outcome`` says the operation ended."""
    if outcome == ENDED:
        raise OperationCancelled(f"operation {operation_id} was cancelled (or has ended)")
