"""Clients of the event store's Redis: one server, or a Redis Cluster (``TASKCAST_REDIS_CLUSTER``).

redis-py's cluster clients take the same commands and route each by its key's
slot; every append touches one slot (see :class:`taskcast.keys.Keys`), so the
rest of taskcast uses either kind the same way. Cluster clients are typed as
the single-server ones they stand in for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import redis

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from taskcast.worker_config import Settings


def store_client(settings: Settings, **options: Any) -> redis.Redis:
    """A bytes client for ``settings.redis_url`` (``options``: redis-py client options)."""
    if settings.redis_cluster:
        from redis.cluster import RedisCluster

        return cast("redis.Redis", RedisCluster.from_url(settings.redis_url, **options))
    return redis.Redis.from_url(settings.redis_url, **options)


def async_store_client(url: str, cluster: bool, **options: Any) -> aioredis.Redis:
    """The asyncio counterpart of :func:`store_client`, for the bridge."""
    if cluster:
        from redis.asyncio.cluster import RedisCluster

        return cast("aioredis.Redis", RedisCluster.from_url(url, **options))
    import redis.asyncio as aioredis

    pool = aioredis.BlockingConnectionPool.from_url(url, **options)
    return aioredis.Redis.from_pool(pool)
