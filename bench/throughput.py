"""Scenario 2: the highest sustained rate with no loss and p99 under 50 ms.

Two shapes: 100 operations x 1 subscriber (one connection following all of
them) and 1 operation x 100 subscribers (100 connections following it). A
step-up search raises the event rate by a fixed factor every few seconds
until a step (and its one retry) loses or duplicates an event, misses
p99 < 50 ms, or the producer cannot hold the rate; the last passing step is
the result. The same
search runs against the thin relay (bench/thin_relay.py) step for step with
taskcast's, on a stream of its own so that the server not being measured
does no work meanwhile, and taskcast is reported as a ratio of it. Producers
write with ``EventStore.append`` from their own processes, so Celery is not
what limits these figures.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import psutil

from .context import Bench
from .fleet import Fleet, split
from .procs import Endpoint
from .produce import ProducerSpec
from .receive import ReceiverSpec
from .report import Row

P99_LIMIT_MS = 50.0
GOAL_RATIO = 0.6
PRODUCER_SLACK = 0.95  # a step whose producers reach less than this share of the rate is void


@dataclass(frozen=True)
class Shape:
    name: str
    ops: int
    subscribers: int
    producer_processes: int
    client_processes: int


@dataclass
class Step:
    rate: float
    deliveries_s: float
    p99_ms: float
    lost: int
    duplicates: int
    producer_rate: float
    server_cpu_us: float  # server process CPU per delivered event
    errors: list[str]

    @property
    def passed(self) -> bool:
        return (
            self.lost == 0
            and self.duplicates == 0
            and self.p99_ms < P99_LIMIT_MS
            and self.producer_rate >= PRODUCER_SLACK * self.rate
        )

    def why_not(self) -> str:
        if self.lost or self.duplicates:
            return f"lost {self.lost}, duplicated {self.duplicates}"
        if self.p99_ms >= P99_LIMIT_MS:
            return f"p99 {self.p99_ms:.1f} ms"
        return f"producer reached only {self.producer_rate:,.0f} ev/s"


def cpu_seconds(pid: int) -> float:
    """CPU time of the server process and its children (``taskcast serve --processes``)."""
    process = psutil.Process(pid)
    total = 0.0
    for member in (process, *process.children(recursive=True)):
        times = member.cpu_times()
        total += times.user + times.system
    return total


def step(
    bench: Bench, server: Endpoint, prefix: str, protocol: bool, shape: Shape, rate: float
) -> Step:
    """One fixed-rate run of ``step_seconds`` against ``server``."""
    seconds = bench.sizes.step_seconds
    ops = [str(uuid.uuid4()) for _ in range(shape.ops)]
    per_op = max(1, round(rate * seconds / shape.ops))
    expected = dict.fromkeys(ops, per_op)
    deadline = time.time() + seconds + 30
    per_client = split([str(i) for i in range(shape.subscribers)], shape.client_processes)
    receiver_specs = [
        ReceiverSpec(server.url, tuple(tuple(ops) for _ in chunk), expected, deadline, protocol)
        for chunk in per_client
    ]
    producer_specs = [
        ProducerSpec(bench.store.url, prefix, part, rate / shape.producer_processes, per_op)
        for part in split(ops, shape.producer_processes)
    ]
    with Fleet() as fleet:
        receivers = fleet.receivers(receiver_specs)
        connected, errors = receivers.ready(timeout=60)
        if connected != shape.subscribers:
            raise RuntimeError(f"{connected}/{shape.subscribers} subscribers connected: {errors}")
        producers = fleet.producers(producer_specs)
        cpu_before = cpu_seconds(server.child.pid)
        producers.start()
        produced = producers.finish(timeout=seconds * 10 + 30)
        seen = receivers.finish(timeout=max(5.0, deadline - time.time() + 5))
        cpu_used = cpu_seconds(server.child.pid) - cpu_before
    delivery = seen["delivery"]
    return Step(
        rate=rate,
        deliveries_s=delivery.received / max(produced["seconds"], 1e-9),
        p99_ms=delivery.histogram.percentile(99) / 1000,
        lost=delivery.lost,
        duplicates=delivery.duplicates,
        producer_rate=produced["rate"],
        server_cpu_us=cpu_used / max(delivery.received, 1) * 1e6,
        errors=seen["errors"],
    )


@dataclass(frozen=True)
class Target:
    """A server under test: where it listens, the stream that feeds it, if it speaks PROTOCOL.md."""

    server: Endpoint
    prefix: str
    protocol: bool


@dataclass
class Search:
    best: Step | None = None
    failed: Step | None = None


def paired_search(
    bench: Bench, targets: dict[str, Target], shape: Shape, start: float
) -> dict[str, Search]:
    """Raise the rate for all targets in lockstep until each fails a step twice in a row.

    At every rate each target still in the race runs one step, one after the
    other, so taskcast and the relay see the same background load (other
    work on the shared cores comes and goes within minutes). A failing step is
    run once more before that target drops out, so one burst of someone
    else's work does not end its search early.
    """
    searches = {name: Search() for name in targets}
    rate = start
    for _ in range(bench.sizes.max_steps):
        racing = [name for name, search in searches.items() if search.failed is None]
        if not racing:
            break
        for name in racing:
            target = targets[name]
            args = (bench, target.server, target.prefix, target.protocol, shape, rate)
            result = step(*args)
            if not result.passed:
                result = step(*args)
            if result.passed:
                searches[name].best = result
            else:
                searches[name].failed = result
        rate *= bench.sizes.step_factor
    return searches


def describe(best: Step | None, failed: Step | None) -> tuple[dict, str]:
    figures = {
        "max_ev_s": round(best.rate) if best else 0,
        "deliveries_s": round(best.deliveries_s) if best else 0,
        "p99_ms": round(best.p99_ms, 2) if best else None,
        "server_cpu_us_per_delivery": round(best.server_cpu_us, 1) if best else None,
    }
    if failed is None:
        return figures, "search ended at its last step (the ceiling is higher)"
    errors = f" ({'; '.join(failed.errors[:2])})" if failed.errors else ""
    return figures, f"next step {failed.rate:,.0f} ev/s failed: {failed.why_not()}{errors}"


def run(bench: Bench) -> list[Row]:
    sizes = bench.sizes
    shapes = [
        (
            Shape(f"{sizes.fanin_ops} ops x 1 subscriber", sizes.fanin_ops, 1, 2, 1),
            sizes.fanin_start_rate,
        ),
        (
            Shape(
                f"1 op x {sizes.fanout_subscribers} subscribers", 1, sizes.fanout_subscribers, 1, 2
            ),
            sizes.fanout_start_rate,
        ),
    ]
    rows = []
    relay = bench.procs.thin_relay(bench.store.url, f"{bench.relay_prefix}events")
    bridge = bench.bridge()
    targets = {
        "taskcast": Target(bridge, bench.prefix, True),
        "relay": Target(relay, bench.relay_prefix, False),
    }
    try:
        for shape, start in shapes:
            searches = paired_search(bench, targets, shape, start)
            best, failed = searches["taskcast"].best, searches["taskcast"].failed
            relay_best, relay_failed = searches["relay"].best, searches["relay"].failed
            figures, note = describe(best, failed)
            relay_figures, relay_note = describe(relay_best, relay_failed)
            ratio = (best.deliveries_s / relay_best.deliveries_s) if best and relay_best else 0.0
            figures["vs_relay"] = round(ratio, 2)
            if best and relay_best:
                efficiency = relay_best.server_cpu_us / max(best.server_cpu_us, 1e-9)
                figures["cpu_efficiency_vs_relay"] = round(efficiency, 2)
            rows.append(
                Row(
                    "2 throughput",
                    f"taskcast, {shape.name}",
                    figures,
                    lost=(best.lost if best else None),
                    duplicates=(best.duplicates if best else None),
                    goal=f">= {GOAL_RATIO:.0%} of thin relay",
                    met=ratio >= GOAL_RATIO,
                    note=note,
                )
            )
            rows.append(
                Row(
                    "baseline thin relay",
                    shape.name,
                    relay_figures,
                    lost=(relay_best.lost if relay_best else None),
                    duplicates=(relay_best.duplicates if relay_best else None),
                    note=relay_note,
                )
            )
    finally:
        bench.procs.stop(bridge.child)
        bench.procs.stop(relay.child)
    return rows
