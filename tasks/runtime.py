"""The settings and producer every part of ``taskcast.tasks`` emits through, made on first use.

Nothing is read at import: the first emit (or :func:`configure`, or
``instrument(app, redis_url=...)``) loads the settings, from the environment
unless given, and opens the producer. A bad value then raises ``ConfigError``
naming the variable, in the worker before it takes a task. The user's Celery
app is never touched here: its broker, backend and options stay its own.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskcast.worker_config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from taskcast.tasks.producer import Producer


@dataclass(frozen=True)
class _Current:
    settings: Settings
    producer: Producer


_current: _Current | None = None
_lock = threading.Lock()


def configure(settings: Settings) -> Producer:
    """Use ``settings`` from now on for the event store; returns the new producer.

    The store (URL, prefix, bounds, coalescing) switches at once; the previous
    producer is flushed and closed.
    """
    global _current
    producer = _new_producer(settings)
    with _lock:
        previous = _current
        _current = _Current(settings, producer)
    if previous is not None:
        previous.producer.close()
    return producer


def _new_producer(settings: Settings) -> Producer:
    """Imported here: the Redis client loads with the first event, not with ``taskcast``."""
    from taskcast.tasks.producer import Producer

    return Producer(settings)


def _loaded() -> _Current:
    global _current
    current = _current
    if current is None:
        with _lock:
            if _current is None:
                settings = load_settings()
                _current = _Current(settings, _new_producer(settings))
            current = _current
    return current


def get_settings() -> Settings:
    """The settings in effect (from the environment unless :func:`configure` changed them)."""
    return _loaded().settings


def settings_at_start(**overrides: Any) -> Settings:
    """The settings a process starts with (``overrides`` over the environment), or the
    process stops here with one line naming the bad variable.

    For start-up only (``instrument()``, a worker's init): a ``ConfigError`` would
    reach the user as a traceback of their app's import, 80 lines under
    ``celery worker``, where one line says all. Code that wants to handle a bad
    value itself calls :func:`~taskcast.worker_config.load_settings` first.
    """
    try:
        if overrides:
            return configure(load_settings(**overrides)).settings
        return get_settings()
    except ConfigError as exc:
        raise SystemExit(f"taskcast: {exc}") from None


def get_producer() -> Producer:
    """The producer in effect; looked up on every emit so :func:`configure` takes effect."""
    return _loaded().producer


def producer_stats() -> dict[str, int]:
    """Counters of the current producer: stored, rejected, failed, dropped, coalesced."""
    return get_producer().stats()
