"""The tests' Redis Cluster: taskcast's EmbeddedCluster, failing with how to get redis-cli."""

from __future__ import annotations

from system_packages import require_binary

from taskcast.embedded_redis import EmbeddedCluster


def local_cluster() -> EmbeddedCluster:
    """Three started masters on loopback."""
    require_binary("redis-cli", "redis-tools")
    return EmbeddedCluster().start()
