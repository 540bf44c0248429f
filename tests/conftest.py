"""Shared fixtures: a private real redis-server per test session, a clean store per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import redis

from bridge.embedded_redis import EmbeddedRedis
from tasks.store import EventStore

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One private redis-server for the whole session (never the system's)."""
    with EmbeddedRedis() as server:
        yield server


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
