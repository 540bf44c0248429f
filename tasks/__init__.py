"""The Celery side of taskcast: the event store, the task helper, lifecycle signals."""

from .events import Event
from .store import EventStore, Keys

__all__ = ["Event", "EventStore", "Keys"]
