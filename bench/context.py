"""The shared state of one benchmark run: sizes, the two Redis servers, workers, bridges.

Two Redis servers, so that the Celery broker's own traffic never shows up in
the event store's load figures: ``store`` holds taskcast's events and Celery's
result backend (db 1, where celery-progress polling reads), ``broker``
carries task messages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from taskcast import tasks
from taskcast.worker_config import celery_config, load_settings

from . import tasks as bench_tasks
from .procs import Endpoint, Processes


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is; :data:`FULL` is the real run, :data:`QUICK` the smoke run."""

    latency_rates: tuple[int, ...]
    latency_ops: int
    latency_seconds: float
    step_seconds: float
    step_factor: float
    max_steps: int
    fanin_start_rate: float
    fanout_start_rate: float
    fanin_ops: int
    fanout_subscribers: int
    connections: int
    connection_processes: int
    probe_rate: float
    probe_seconds: float
    recovery_clients: int
    recovery_ops: int
    recovery_rate: float
    recovery_seconds: float
    cost_calls: int
    poll_interval: float


FULL = Sizes(
    latency_rates=(1000, 5000),
    latency_ops=100,
    latency_seconds=10.0,
    step_seconds=3.0,
    step_factor=1.3,
    max_steps=14,
    fanin_start_rate=800.0,
    fanout_start_rate=60.0,
    fanin_ops=100,
    fanout_subscribers=100,
    connections=10_000,
    connection_processes=2,
    probe_rate=1000.0,
    probe_seconds=5.0,
    recovery_clients=1000,
    recovery_ops=100,
    recovery_rate=200.0,
    recovery_seconds=6.0,
    cost_calls=5000,
    poll_interval=0.5,
)

QUICK = Sizes(
    latency_rates=(200,),
    latency_ops=10,
    latency_seconds=1.0,
    step_seconds=0.6,
    step_factor=2.0,
    max_steps=2,
    fanin_start_rate=200.0,
    fanout_start_rate=20.0,
    fanin_ops=10,
    fanout_subscribers=10,
    connections=100,
    connection_processes=1,
    probe_rate=200.0,
    probe_seconds=0.5,
    recovery_clients=20,
    recovery_ops=5,
    recovery_rate=100.0,
    recovery_seconds=2.0,
    cost_calls=300,
    poll_interval=0.5,
)

WORKER_THREADS = 100  # one thread per concurrent operation of the latency scenario


class Bench:
    """Processes, Redis servers and Celery workers shared by the scenarios of one run."""

    prefix = "bench:"
    relay_prefix = "relay:"

    def __init__(self, procs: Processes, sizes: Sizes) -> None:
        self.procs = procs
        self.sizes = sizes
        self.store = procs.redis()
        self.broker = procs.redis()
        self.backend_url = f"redis://127.0.0.1:{self.store.port}/1"
        self._queues: dict[float, str] = {}
        self.client = redis.Redis.from_url(self.store.url)
        settings = load_settings(self.env(0.0))
        tasks.configure(settings)  # the publisher side, here
        self.app = bench_tasks.app
        self.app.conf.update(celery_config(settings))

    def env(self, progress_interval: float) -> dict[str, str]:
        """Environment of a worker (and of this process's publisher side)."""
        return {
            "TASKCAST_REDIS_URL": self.store.url,
            "CELERY_BROKER_URL": self.broker.url,
            "CELERY_RESULT_BACKEND": self.backend_url,
            "TASKCAST_PREFIX": self.prefix,
            "TASKCAST_PROGRESS_INTERVAL": str(progress_interval),
        }

    def worker(self, progress_interval: float) -> str:
        """The queue of a worker with this coalescing interval (started on first use)."""
        if progress_interval not in self._queues:
            queue = f"bench-{len(self._queues)}"
            self.procs.worker(queue, self.env(progress_interval), WORKER_THREADS)
            self._queues[progress_interval] = queue
        return self._queues[progress_interval]

    def bridge(self, port: int = 0, processes: int = 1) -> Endpoint:
        return self.procs.bridge(self.store.url, self.prefix, port, processes)

    def redis_load(self) -> dict[str, float]:
        """Counters to diff around a measurement: commands processed and CPU seconds."""
        stats, cpu = self.client.info("stats"), self.client.info("cpu")
        return {
            "commands": stats["total_commands_processed"],
            "cpu": cpu["used_cpu_user"] + cpu["used_cpu_sys"],
            "time": time.time(),
        }

    def redis_load_since(self, before: dict[str, float]) -> dict[str, Any]:
        """Commands per second and Redis CPU % since ``before``."""
        after = self.redis_load()
        seconds = max(after["time"] - before["time"], 1e-9)
        return {
            "redis_cmd_s": round((after["commands"] - before["commands"]) / seconds),
            "redis_cpu_pct": round((after["cpu"] - before["cpu"]) / seconds * 100, 1),
        }

    def close(self) -> None:
        self.client.close()
