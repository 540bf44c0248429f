"""The fault suite's stack: a private event-store Redis, workers and bridges as real processes.

The event store runs on a Redis of the test's own (so it can be stopped,
frozen or restarted empty) while the broker and results stay on the session's
Redis, as in a deployment that keeps them apart. The test process publishes
through the same private store, so ``queued`` lands there too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
import redis
from helpers import events_of, worker_env

from taskcast import tasks
from taskcast.embedded_redis import EmbeddedRedis
from taskcast.store import EventStore
from taskcast.worker_config import Settings


@dataclass
class Stack:
    """A private event-store Redis and the settings every process of the test shares."""

    redis: EmbeddedRedis
    settings: Settings
    store: EventStore

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a worker or bridge process joining this stack."""
        return worker_env(self.settings, **extra)

    def logged_lines(self, operation_id: str) -> list[int]:
        """The numbers ``test.numbered`` logged, as stored."""
        return [
            int(event["data"]["message"])
            for event in events_of(self.store, operation_id)
            if event["event_type"] == "log" and event["data"]["level"] == "info"
        ]


@pytest.fixture
def stack_factory(
    task_settings: Settings, prefix: str, task_app: Any
) -> Iterator[Callable[..., Stack]]:
    """``stack_factory(persistent=False, **settings)``: a :class:`Stack` on a new private
    Redis (``persistent``: it keeps its data across a restart)."""
    made: list[Stack] = []

    def make(persistent: bool = False, **overrides: Any) -> Stack:
        server = EmbeddedRedis(persistent=persistent).start()
        settings = replace(task_settings, redis_url=server.url, prefix=prefix, **overrides)
        tasks.configure(settings)
        client = redis.Redis.from_url(server.url, socket_timeout=5)
        stack = Stack(server, settings, EventStore(client, prefix=prefix))
        made.append(stack)
        return stack

    yield make
    tasks.configure(replace(task_settings, prefix=prefix))
    for stack in made:
        stack.store.client.close()
        stack.redis.close()
