"""The Celery app and the producer every part of ``tasks`` emits through.

Both are built at import from the environment (``worker_config``), so that
``celery -A tasks worker`` needs nothing but environment variables and a bad
value stops the worker before it takes any task. :func:`configure` re-points
both at other settings at run time, for tests and for programs that embed
taskcast and read their configuration elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery

from worker_config import Settings, celery_config, load_settings

from .producer import Producer

app = Celery("taskcast")


@dataclass(frozen=True)
class _Current:
    settings: Settings
    producer: Producer


_current: _Current | None = None


def configure(settings: Settings) -> Producer:
    """Use ``settings`` from now on: Celery's configuration and a fresh producer.

    The event store (URL, prefix, bounds, coalescing) switches at once; Celery
    keeps the broker and result backend it already connected to, so change
    those before the app first sends or runs a task. The previous producer is
    flushed and closed. Returns the new producer.
    """
    global _current
    app.conf.update(celery_config(settings))
    previous = _current
    _current = _Current(settings, Producer(settings))
    if previous is not None:
        previous.producer.close()
    return _current.producer


def get_settings() -> Settings:
    """The settings in effect (from the environment unless :func:`configure` changed them)."""
    assert _current is not None
    return _current.settings


def get_producer() -> Producer:
    """The producer in effect; looked up on every emit so :func:`configure` takes effect."""
    assert _current is not None
    return _current.producer


def producer_stats() -> dict[str, int]:
    """Counters of the current producer: stored, rejected, failed, dropped, coalesced."""
    return get_producer().stats()


configure(load_settings())
