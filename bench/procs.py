"""The processes a benchmark run starts, and the guarantee that they all stop.

Every child runs in its own session (so a terminal's Ctrl-C reaches only the
orchestrator, which then stops them in order) and is recorded in a
:class:`Processes` set whose ``close`` kills what is left, on any exit.
Children's output is drained by a thread per child (a full pipe would stall
them) into a short ring buffer that error messages quote.
"""

from __future__ import annotations

import collections
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from taskcast.embedded_redis import EmbeddedRedis

BRIDGE_READY = re.compile(r"taskcast bridge listening on ws://([\d.]+):(\d+)/ws")
RELAY_READY = re.compile(r"thin relay listening on ws://([\d.]+):(\d+)/")
WORKER_READY = re.compile(r"\bready\.")


def raise_nofile_limit() -> int:
    """Raise this process's open-file limit to its hard limit (10,000 sockets need it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


@dataclass
class Child:
    """One started process, its recent output and what its ready line said."""

    name: str
    process: subprocess.Popen[str]
    output: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=60))
    ready: threading.Event = field(default_factory=threading.Event)
    match: re.Match[str] | None = None
    stop_signal: int = signal.SIGTERM

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self) -> str:
        return "".join(self.output)


@dataclass
class Endpoint:
    """A started server (bridge or relay) and where it listens."""

    child: Child
    host: str
    port: int
    path: str

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}{self.path}"


class Processes:
    """Start children, wait for their ready line, and stop all of them on close.

    With ``profile_dir``, every bridge and worker gets a py-spy sampler attached
    that writes collapsed stacks there when its target exits (see bench/profile.py).
    """

    def __init__(self, profile_dir: Path | None = None) -> None:
        self.children: list[Child] = []
        self.servers: list[EmbeddedRedis] = []
        self.profile_dir = profile_dir

    def redis(self) -> EmbeddedRedis:
        """A fresh private redis-server (stopped on close)."""
        server = EmbeddedRedis()
        self.servers.append(server)
        return server.start()

    def start(
        self,
        name: str,
        args: list[str],
        env: Mapping[str, str] | None = None,
        ready: re.Pattern[str] | None = None,
        timeout: float = 30.0,
    ) -> Child:
        """Start ``args``; with ``ready``, wait until a line matches it (or fail loudly)."""
        process = subprocess.Popen(
            args,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=raise_nofile_limit,
        )
        child = Child(name, process)
        self.children.append(child)
        threading.Thread(target=self._drain, args=(child, ready), daemon=True).start()
        if ready is not None and not child.ready.wait(timeout):
            self.stop(child)
            raise RuntimeError(f"{name} did not become ready in {timeout:.0f} s:\n{child.tail()}")
        if ready is not None and child.match is None:
            raise RuntimeError(f"{name} exited before it was ready:\n{child.tail()}")
        return child

    @staticmethod
    def _drain(child: Child, ready: re.Pattern[str] | None) -> None:
        assert child.process.stdout is not None
        for line in child.process.stdout:
            child.output.append(line)
            if ready is not None and child.match is None and (found := ready.search(line)):
                child.match = found
                child.ready.set()
        child.ready.set()  # exited: wake a waiter, which sees no match

    def python(
        self,
        name: str,
        module_args: list[str],
        env: Mapping[str, str] | None = None,
        ready: re.Pattern[str] | None = None,
        timeout: float = 30.0,
    ) -> Child:
        """Start ``python -m ...`` with this interpreter."""
        return self.start(name, [sys.executable, "-m", *module_args], env, ready, timeout)

    def bridge(self, redis_url: str, prefix: str, port: int = 0, processes: int = 1) -> Endpoint:
        """``taskcast serve`` on loopback; ``port`` 0 lets it pick a free one; with
        ``processes`` > 1, ready once the first process listens."""
        child = self.python(
            "bridge",
            ["taskcast", "serve", "--host", "127.0.0.1", "--port", str(port)]
            + ["--redis-url", redis_url, "--prefix", prefix, "--processes", str(processes)],
            env={
                "TASKCAST_REDIS_URL": redis_url,
                "TASKCAST_PREFIX": prefix,
                # Load generators, not attackers: one address opens thousands of
                # connections and subscribes to hundreds of operations at once.
                "TASKCAST_MAX_CONNECTIONS_PER_IP": "1000000",
                "TASKCAST_COMMAND_RATE": "100000",
                "TASKCAST_COMMAND_BURST": "100000",
            },
            ready=BRIDGE_READY,
        )
        assert child.match is not None
        self.sample(child)
        return Endpoint(child, child.match.group(1), int(child.match.group(2)), "/ws")

    def thin_relay(self, redis_url: str, stream: str) -> Endpoint:
        """The baseline relay of bench/thin_relay.py."""
        child = self.python(
            "thin-relay",
            ["bench.thin_relay", "--redis-url", redis_url, "--stream", stream, "--port", "0"],
            ready=RELAY_READY,
        )
        assert child.match is not None
        return Endpoint(child, child.match.group(1), int(child.match.group(2)), "/")

    def worker(self, queue: str, env: Mapping[str, str], concurrency: int) -> Child:
        """A real ``celery worker`` (threads pool) serving the bench tasks on ``queue``."""
        args = ["celery", "-A", "bench.tasks", "worker", "-P", "threads"]
        args += ["-c", str(concurrency), "-Q", queue, "-n", f"{queue}@%h", "-l", "info"]
        args += ["--without-heartbeat", "--without-gossip", "--without-mingle"]
        child = self.python(f"worker {queue}", args, env=env, ready=WORKER_READY, timeout=60)
        self.sample(child)
        return child

    def sample(self, target: Child) -> None:
        """Attach py-spy to ``target`` when profiling; it stops and writes when the target ends."""
        if self.profile_dir is None:
            return
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        name = target.name.replace(" ", "-")
        output = self.profile_dir / f"{name}-{target.pid}.txt"
        args = ["py-spy", "record", "--pid", str(target.pid), "--format", "raw", "--nolineno"]
        sampler = self.start(f"py-spy {name}", [*args, "--rate", "200", "-o", str(output)])
        sampler.stop_signal = signal.SIGINT  # py-spy writes its output on SIGINT

    def stop(self, child: Child, sig: int | None = None, timeout: float = 10.0) -> None:
        """Signal the child's process group, wait, and SIGKILL it if it lingers."""
        sig = child.stop_signal if sig is None else sig
        process = child.process
        if process.poll() is None:
            try:
                os.killpg(process.pid, sig)
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        if child in self.children:
            self.children.remove(child)

    def kill(self, child: Child) -> float:
        """SIGKILL (a crash, no goodbye frames); returns when it is gone, as ``time.time()``."""
        self.stop(child, signal.SIGKILL)
        return time.time()

    def close(self) -> None:
        """Stop every child still running, newest first, then the Redis servers."""
        for child in reversed(list(self.children)):
            self.stop(child, timeout=5)
        for server in self.servers:
            server.close()
        self.servers.clear()

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
