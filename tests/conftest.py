"""Shared fixtures: a private real redis-server per test session, a clean store per test."""

from __future__ import annotations

import gc
import itertools
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
from bridge_helpers import RestartableBridge, WsClient, running_bridge
from celery import Celery
from helpers import AUTH_SECRET, TaskRun, WorkerProcess, events_of, wait_finished, worker_env

from taskcast import tasks
from taskcast.bridge import Bridge
from taskcast.embedded_redis import EmbeddedRedis
from taskcast.store import EventStore
from taskcast.tasks.producer import Producer
from taskcast.worker_config import Settings, celery_config, load_settings

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One private redis-server for the whole session (never the system's)."""
    with EmbeddedRedis() as server:
        yield server
        # Celery's Redis result backend unsubscribes when an AsyncResult is collected;
        # collect them while the server still answers, or exit stalls in its retry loop.
        gc.collect()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    return redis_server.url


@pytest.fixture
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own, so tests never see each other's data."""
    return f"test{next(_prefixes)}:"


@pytest.fixture
def store(redis_client: redis.Redis, prefix: str) -> EventStore:
    return EventStore(redis_client, prefix=prefix)


@pytest.fixture
def producer(task_settings: Settings, prefix: str) -> Iterator[Producer]:
    """A producer storing under this test's prefix; closed (and flushed) at teardown."""
    producer = Producer(replace(task_settings, prefix=prefix))
    yield producer
    producer.close()


# --- Celery: a configured app, an in-process worker, worker subprocesses -------------------


@pytest.fixture(scope="session")
def task_settings(redis_server: EmbeddedRedis) -> Settings:
    """Settings of the test session: event store on db 0, broker db 1, results db 2."""
    base = redis_server.url.rsplit("/", 1)[0]
    return load_settings(
        {},
        redis_url=f"{base}/0",
        broker_url=f"{base}/1",
        result_backend=f"{base}/2",
    )


@pytest.fixture(scope="session")
def celery_worker(task_settings: Settings) -> Iterator[Any]:
    """One in-process Celery worker (4 threads) for the session, on the default queue."""
    import worker_tasks
    from celery.contrib.testing.worker import start_worker

    worker_tasks.app.conf.update(celery_config(task_settings))
    tasks.configure(task_settings)
    with start_worker(
        worker_tasks.app,
        pool="threads",
        concurrency=4,
        perform_ping_check=False,
        loglevel="WARNING",
    ) as worker:
        yield worker


@pytest.fixture
def task_app(task_settings: Settings, prefix: str, celery_worker: Any) -> Iterator[Celery]:
    """The tests' app with the in-process worker running and events stored under ``prefix``."""
    tasks.configure(replace(task_settings, prefix=prefix))
    yield celery_worker.app
    tasks.configure(task_settings)


@pytest.fixture
def run_task(task_app: Celery, store: EventStore) -> Callable[..., TaskRun]:
    """``run_task(name, kwargs, timeout=15, **apply_async_options)``: send a task to the
    in-process worker, wait until its operation finished, return a :class:`TaskRun`."""

    def run(
        name: str, kwargs: dict[str, Any] | None = None, timeout: float = 15.0, **options: Any
    ) -> TaskRun:
        result = task_app.send_task(name, kwargs=kwargs or {}, **options)
        snapshot = wait_finished(store, result.id, timeout)
        return TaskRun(result, events_of(store, result.id), snapshot)

    return run


@pytest.fixture
def worker_process(
    task_settings: Settings, prefix: str, tmp_path: Path, task_app: Celery
) -> Iterator[Callable[..., WorkerProcess]]:
    """``worker_process(pool="prefork", concurrency=1, settings=None, **env)`` starts a
    ``celery -A worker_tasks worker`` subprocess on a queue of its own (``.queue``; send with
    ``queue=``), storing under this test's prefix, and waits until it is ready. All
    are stopped at teardown."""
    started: list[WorkerProcess] = []

    def launch(
        pool: str = "prefork", concurrency: int = 1, settings: Settings | None = None, **env: str
    ) -> WorkerProcess:
        number = len(started)
        queue = f"{prefix.rstrip(':')}-w{number}"
        worker = WorkerProcess(
            worker_env(settings or replace(task_settings, prefix=prefix), **env),
            queue,
            tmp_path / f"worker{number}.log",
            pool=pool,
            concurrency=concurrency,
        )
        started.append(worker)
        return worker.start().wait_ready()

    yield launch
    for worker in started:
        worker.stop()


# --- Bridge: an in-process bridge on this test's Redis + prefix, and WebSocket clients ------


@pytest.fixture
async def bridge(redis_url: str, prefix: str) -> AsyncIterator[Bridge]:
    """A running bridge (port 0, ``.url``) on this test's Redis and prefix."""
    async with running_bridge(redis_url, prefix) as running:
        yield running


@pytest.fixture
async def ws_client(bridge: Bridge) -> AsyncIterator[Callable[..., Awaitable[WsClient]]]:
    """``await ws_client()`` opens a :class:`WsClient` on ``bridge`` (past its connected frame);
    all are closed at teardown."""
    opened: list[WsClient] = []

    async def open_client(**kwargs: Any) -> WsClient:
        client = await WsClient.open(bridge.url, **kwargs)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        await client.close()


@pytest.fixture
def secured_bridge(task_settings: Settings, prefix: str) -> Iterator[RestartableBridge]:
    """``taskcast serve`` on this test's store that requires tokens signed with AUTH_SECRET."""
    bridge = RestartableBridge(
        worker_env(replace(task_settings, prefix=prefix, auth_secret=AUTH_SECRET))
    )
    bridge.start()
    yield bridge
    bridge.stop(signal.SIGKILL)


@pytest.fixture
def restartable_bridge(task_settings: Settings, prefix: str) -> Iterator[RestartableBridge]:
    """A started ``taskcast serve`` subprocess on this test's store; ``.env`` is the
    environment a ``taskcast`` or worker command needs to join it."""
    bridge = RestartableBridge(worker_env(replace(task_settings, prefix=prefix)))
    bridge.start()
    yield bridge
    bridge.stop(signal.SIGKILL)
