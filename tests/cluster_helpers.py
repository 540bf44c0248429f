"""A local Redis Cluster for the tests: three masters on loopback, no replicas.

Each node is a private ``redis-server --cluster-enabled yes`` with an
append-only file in its own directory, so one can be stopped and started
again with its slots and data (a master restart). ``redis-cli --cluster
create`` assigns the slots.
"""

from __future__ import annotations

import socket
import subprocess

import redis
from helpers import wait_for
from system_packages import require_binary

from taskcast.embedded_redis import EmbeddedRedis, free_port

CLUSTER_ARGS = (
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "2000",
)


def cluster_port() -> int:
    """A free port whose cluster bus port (the port + 10000) exists and is free too."""
    while True:
        port = free_port()
        if port + 10_000 < 65_536 and port_is_free(port + 10_000):
            return port


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class LocalCluster:
    """Three master nodes; :attr:`url` points a cluster client at the first."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes = [
            EmbeddedRedis(cluster_port(), persistent=True, extra_args=CLUSTER_ARGS)
            for _ in range(masters)
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> LocalCluster:
        cli = require_binary("redis-cli", "redis-tools")
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        created = subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every node says the cluster is up (all slots served)."""

        def ok() -> bool:
            for node in self.nodes:
                client = redis.Redis(port=node.port, socket_timeout=1)
                try:
                    if client.cluster("info").get("cluster_state") != "ok":
                        return False
                except redis.RedisError:
                    return False
                finally:
                    client.close()
            return True

        wait_for(ok, timeout, interval=0.1)

    def node_of(self, key: str) -> EmbeddedRedis:
        """The master serving ``key``'s slot (the others answer MOVED)."""
        for node in self.nodes:
            client = redis.Redis(port=node.port)
            try:
                client.exists(key)
                return node
            except redis.ResponseError:
                continue
            finally:
                client.close()
        raise AssertionError(f"no node serves {key}")

    def close(self) -> None:
        for node in self.nodes:
            node.close()
