"""``python -m bench.soak [--minutes 30] [--rate 200] [--clients 1000]``: the long run.

Not part of ``python -m bench`` (nor CI): it runs for half an hour. Two
Celery workers run ``bench.soak_job`` operations submitted at ``--rate`` per
second while ``--clients`` WebSocket connections follow running operations
one after another (bench/soak_clients.py). Every ``--kill-every`` seconds
the bridge is SIGKILLed and started again on its port; half-way between,
one worker is SIGKILLed (its whole process group) and started again under
its name. Every 10 s the RSS of each process is sampled.

Reported: the RSS of each process over time (first, last, peak), the events
the clients lost and saw twice, the broker's backlog when submissions stop,
operations not ended once the workers worked it off (up to 10 minutes) by
status (``queued``: still waiting in the broker; any other: stuck), the
submission rate reached, and the machine. Written to
``bench/results/soak.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis
from rich.console import Console
from rich.table import Table

from taskcast import tasks
from taskcast.store import EventStore
from taskcast.worker_config import celery_config, load_settings

from . import tasks as bench_tasks
from .machine import machine_info
from .procs import WORKER_READY, Child, Processes, raise_nofile_limit
from .soak_clients import Tally, run_clients

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "soak"
STEPS, STEP_DELAY = 5, 0.2  # each operation: about a second, 8 events
SAMPLE_EVERY = 10.0
CLIENT_PROCESSES = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=200.0, help="operations per second")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--kill-every", type=float, default=300.0, help="seconds between kills")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    return parser.parse_args(argv)


@dataclass
class Samples:
    """RSS (MiB) per process role over time."""

    started: float = field(default_factory=time.time)
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def take(self, roles: dict[str, int]) -> None:
        now = round(time.time() - self.started, 1)
        for role, pid in roles.items():
            try:
                process = psutil.Process(pid)
                rss = process.memory_info().rss + sum(
                    child.memory_info().rss for child in process.children(recursive=True)
                )
            except psutil.NoSuchProcess:
                continue
            self.series.setdefault(role, []).append((now, round(rss / 2**20, 1)))

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            role: {
                "first_mib": points[0][1],
                "last_mib": points[-1][1],
                "peak_mib": max(rss for _, rss in points),
            }
            for role, points in self.series.items()
        }


class Stack:
    """The soak's processes, each restartable in place."""

    def __init__(self, procs: Processes) -> None:
        self.procs = procs
        self.store_redis = procs.redis()
        self.broker_redis = procs.redis()
        self.env = {
            "TASKCAST_REDIS_URL": self.store_redis.url,
            "CELERY_BROKER_URL": self.broker_redis.url,
            "CELERY_RESULT_BACKEND": f"redis://127.0.0.1:{self.store_redis.port}/1",
            "TASKCAST_PREFIX": "soak:",
        }
        self.bridge = procs.bridge(self.store_redis.url, "soak:")
        self.port = self.bridge.port
        self.workers = [self._worker(number) for number in (1, 2)]

    def _worker(self, number: int) -> Child:
        args = ["celery", "-A", "bench.tasks", "worker", "-P", "threads", "-c", "100"]
        args += ["-Q", QUEUE, "-n", f"soak{number}@%h", "-l", "info"]
        args += ["--without-heartbeat", "--without-gossip", "--without-mingle"]
        return self.procs.python(f"worker {number}", args, self.env, WORKER_READY, 60)

    def kill_bridge(self) -> None:
        self.procs.kill(self.bridge.child)
        self.bridge = self.procs.bridge(self.store_redis.url, "soak:", self.port)

    def kill_worker(self, number: int) -> None:
        self.procs.kill(self.workers[number - 1])
        self.workers[number - 1] = self._worker(number)

    def roles(self) -> dict[str, int]:
        pids = {"bridge": self.bridge.child.pid, "store redis": self.store_redis_pid()}
        for number, worker in enumerate(self.workers, 1):
            pids[f"worker {number}"] = worker.pid
        return pids

    def store_redis_pid(self) -> int:
        assert self.store_redis.process is not None
        return self.store_redis.process.pid


def submit_for(stack: Stack, seconds: float, rate: float, kill_every: float, samples: Samples):
    """Submit at ``rate`` for ``seconds``, killing and sampling on schedule; the ids sent."""
    settings = load_settings(stack.env)
    tasks.configure(settings)
    app = bench_tasks.app
    app.conf.update(celery_config(settings))
    sent: list[str] = []
    started = time.time()
    next_sample = started
    next_bridge_kill, next_worker_kill = started + kill_every, started + kill_every / 2
    kills = {"bridge": 0, "worker": 0}
    while (now := time.time()) < started + seconds:
        if now >= next_sample:
            samples.take(stack.roles())
            next_sample += SAMPLE_EVERY
        if now >= next_bridge_kill:
            stack.kill_bridge()
            kills["bridge"] += 1
            next_bridge_kill += kill_every
        if now >= next_worker_kill:
            stack.kill_worker(1 + kills["worker"] % 2)
            kills["worker"] += 1
            next_worker_kill += kill_every
        due = started + len(sent) / rate
        if due > now:
            time.sleep(min(due - now, 0.05))
            continue
        result = app.send_task(
            "bench.soak_job", kwargs={"steps": STEPS, "delay": STEP_DELAY}, queue=QUEUE
        )
        sent.append(result.id)
    return sent, kills, time.time() - started


def unfinished(stack: Stack, sent: list[str], wait: float) -> dict[str, int]:
    """Operations not ended once the workers worked off the broker's backlog, by status.

    Waits up to ``wait`` seconds for the broker queue to empty and then for the
    running operations to end. ``queued`` ones left wait in the broker (messages
    a killed worker had prefetched, which Redis as a broker hands out again only
    after its visibility timeout); any other status is an operation stuck for
    good, which the lost-worker sweep must prevent.
    """
    store = EventStore(redis.Redis.from_url(stack.store_redis.url), prefix="soak:")
    broker = redis.Redis.from_url(stack.broker_redis.url)
    deadline = time.time() + wait
    left = list(sent)
    while left and time.time() < deadline:
        statuses = {op: _status(store, op) for op in left}
        left = [op for op, status in statuses.items() if status not in FINISHED]
        if not broker.llen(QUEUE) and all(statuses[op] == "queued" for op in left):
            break
        time.sleep(1.0)
    counts: dict[str, int] = {}
    for op in left:
        status = _status(store, op) or "missing"
        if status not in FINISHED:
            counts[status] = counts.get(status, 0) + 1
    return counts


FINISHED = ("completed", "failed", "revoked", "lost")


def _status(store: EventStore, operation_id: str) -> str | None:
    snapshot = store.snapshot(operation_id)
    return None if snapshot is None else snapshot["status"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile_limit()
    seconds = args.minutes * 60
    samples = Samples()
    context = multiprocessing.get_context("spawn")
    with Processes() as procs:
        stack = Stack(procs)
        machine = machine_info(stack.store_redis.url, ROOT)
        results: Any = context.Queue()
        stop_at = time.time() + seconds + 40
        per_process = args.clients // CLIENT_PROCESSES
        clients = [
            context.Process(
                target=run_clients,
                args=(f"ws://127.0.0.1:{stack.port}/ws", per_process, stop_at, results),
            )
            for _ in range(CLIENT_PROCESSES)
        ]
        for process in clients:
            process.start()
        sent, kills, took = submit_for(stack, seconds, args.rate, args.kill_every, samples)
        backlog = redis.Redis.from_url(stack.broker_redis.url).llen(QUEUE)
        left = unfinished(stack, sent, wait=600.0)
        stuck = sum(count for status, count in left.items() if status != "queued")
        samples.take(stack.roles())
        tally = Tally()
        for _ in clients:
            tally.add(results.get(timeout=120))
        for process in clients:
            process.join(timeout=30)
    report = {
        "machine": machine,
        "options": vars(args) | {"out": str(args.out)},
        "operations": len(sent),
        "rate_reached": round(len(sent) / took, 1),
        "kills": kills,
        "broker_backlog_at_end": backlog,
        "unfinished": left,
        "stuck": stuck,
        "clients": tally.__dict__,
        "rss": samples.summary(),
        "rss_series": samples.series,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print_report(report)
    return 0 if tally.lost == tally.duplicates == stuck == 0 else 1


def print_report(report: dict[str, Any]) -> None:
    console = Console()
    table = Table(title="taskcast soak", show_lines=True)
    for column in ("Process", "RSS first MiB", "RSS last MiB", "RSS peak MiB"):
        table.add_column(column)
    for role, rss in report["rss"].items():
        table.add_row(role, str(rss["first_mib"]), str(rss["last_mib"]), str(rss["peak_mib"]))
    console.print(table)
    clients = report["clients"]
    console.print(
        f"{report['operations']:,} operations at {report['rate_reached']}/s, kills "
        f"{report['kills']}, stuck {report['stuck']} (unfinished by status: "
        f"{report['unfinished']}; {report['broker_backlog_at_end']:,} messages were in "
        f"the broker queue when submissions stopped); clients: {clients['connections']} "
        f"connections followed {clients['followed']:,} operations, {clients['events']:,} "
        f"events, lost {clients['lost']}, duplicates {clients['duplicates']}, "
        f"reconnects {clients['reconnects']}, renewed epochs {clients['renewed']}"
    )
    console.print(f"machine: {report['machine']}")


if __name__ == "__main__":
    sys.exit(main())
