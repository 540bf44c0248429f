"""Tasks the broker delivers again because the worker running them died.

With ``acks_late`` (and ``task_reject_on_worker_lost``) Celery puts the message
of a task whose pool child or worker died back on the queue, and the task
starts over: without a word its progress would jump back to 0, and a task
that always kills its process would loop forever. The broker flags such a
message (``delivery_info['redelivered']``), but it also flags messages a
worker merely prefetched and handed back at shutdown, so the store decides:
only an operation that had started and not finished was lost with its worker.
Each such redelivery is recorded as ``retrying`` (reason ``worker lost``) with
its count; past ``max_redeliveries`` the operation ends ``lost`` and the task
does not run again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from taskcast.events import Event, error_data, status_data

# Statuses of an operation that never started (the message was only prefetched)
# or that ran to an end of its own: a redelivery of those is no worker loss.
NOT_STARTED = frozenset({"queued", "retrying"})
ENDED_ON_ITS_OWN = frozenset({"completed", "failed", "revoked"})
REASON = "worker lost"


@dataclass(frozen=True)
class Verdict:
    """What a redelivery means: the count it makes, and the event that records it."""

    redeliveries: int
    event: Event

    @property
    def stop(self) -> bool:
        """Whether the task must not run again (the event ends the operation ``lost``)."""
        return self.event.event_type == "error"


def judge(operation_id: str, snapshot: dict[str, Any] | None, limit: int) -> Verdict | None:
    """The verdict on a redelivered message of ``operation_id``, None if no worker was lost."""
    if snapshot is None or snapshot["status"] in NOT_STARTED | ENDED_ON_ITS_OWN:
        return None
    count = int(snapshot.get("redeliveries") or 0) + 1
    if count > limit:
        message = (
            f"worker lost {count} times while running this task; not running it again "
            f"(TASKCAST_MAX_REDELIVERIES={limit})"
        )
        return Verdict(
            count, Event("error", operation_id, error_data(message, "WorkerLostError", "lost"))
        )
    data = status_data(
        "retrying", f"Redelivery {count} after its worker was lost", {"redeliveries": count}
    )
    data["reason"] = REASON
    data["retry_in"] = 0.0
    return Verdict(count, Event("status", operation_id, data, reopens=True))
