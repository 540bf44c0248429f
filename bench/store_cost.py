"""Scenario 7: Redis CPU per stored event, against a raw XADD of the same bytes; appends/s.

One private Redis, commandstats reset, then the same workload twice:
``EventStore.append`` of progress events spread over 100 operations (the way
workers store them), and a plain ``XADD`` of each event's bytes into one
stream (what the cheapest possible relay pays). Both in pipelines, so the
client's round trips do not count: only Redis's own CPU time per call, from
``INFO commandstats`` (``usec_per_call``), which a busy machine disturbs far
less than wall time. Reported: the ratio, and what each command run inside
the append script costs per event.

Then appends per second from :data:`WRITERS` processes (one append per round
trip, as workers store events) into one Redis and into a local 3-master
Redis Cluster with 3 partitions, on the same machine: with two cores shared by
the writers and the servers this shows the cost of the cluster's routing more
than its capacity, which grows with the masters' machines.
"""

from __future__ import annotations

import multiprocessing
import time
import uuid

import redis

from taskcast.embedded_redis import EmbeddedCluster, EmbeddedRedis
from taskcast.events import Event, progress_data
from taskcast.store import EventStore
from taskcast.worker_config import Settings, load_settings

from .context import Bench
from .report import Row

OPERATIONS = 100
PIPELINE = 100
GOAL_RATIO = 5.0
WRITERS = 2


def events(count: int) -> list[Event]:
    ops = [str(uuid.uuid4()) for _ in range(OPERATIONS)]
    return [
        Event(
            "progress",
            ops[i % OPERATIONS],
            progress_data(current=i, total=count, message="step"),
            operation_type="bench.cost",
        )
        for i in range(count)
    ]


def commandstats(client: redis.Redis) -> dict[str, dict[str, float]]:
    return {
        name.removeprefix("cmdstat_"): stats
        for name, stats in client.info("commandstats").items()
        if name.startswith("cmdstat_")
    }


def measure_appends(client: redis.Redis, batch: list[Event]) -> dict[str, dict[str, float]]:
    store = EventStore(client, prefix="cost:")
    for first in batch[:OPERATIONS]:  # every operation exists before measuring
        store.append(first)
    client.config_resetstat()
    for start in range(OPERATIONS, len(batch), PIPELINE):
        store.append_many(batch[start : start + PIPELINE])
    return commandstats(client)


def measure_xadds(client: redis.Redis, batch: list[Event]) -> dict[str, dict[str, float]]:
    client.config_resetstat()
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(batch), PIPELINE):
        for event in batch[start : start + PIPELINE]:
            prefix, suffix = event.encode()
            pipe.xadd("cost:raw", {"e": prefix + b"1" + suffix})
        pipe.execute()
    return commandstats(client)


def run(bench: Bench) -> list[Row]:
    count = max(2000, bench.sizes.cost_calls * 4)
    batch = events(count)
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        appends = measure_appends(client, batch)
        xadds = measure_xadds(client, batch)
        client.close()
    script = appends.get("evalsha", {})
    per_append = script.get("usec_per_call", 0.0)
    per_xadd = xadds["xadd"]["usec_per_call"]
    ratio = per_append / per_xadd if per_xadd else float("inf")
    inner = {
        f"{name}_us": round(stats["usec"] / script["calls"], 2)
        for name, stats in sorted(appends.items(), key=lambda item: -item[1]["usec"])
        if name != "evalsha" and script.get("calls")
    }
    return [
        Row(
            "7 store cost",
            f"{script.get('calls', 0):,} appends vs raw XADD of the same bytes",
            {
                "append_us": round(per_append, 2),
                "raw_xadd_us": round(per_xadd, 2),
                "ratio": round(ratio, 2),
                **inner,
            },
            goal=f"Redis CPU per append at most {GOAL_RATIO:g}x a raw XADD",
            met=ratio <= GOAL_RATIO,
            note="INFO commandstats usec_per_call; inner commands per append",
        ),
        *run_rates(bench),
    ]


def _write(settings: Settings, seconds: float, counts: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = EventStore.connect(settings)
    ops = [str(uuid.uuid4()) for _ in range(OPERATIONS)]
    done, stop_at = 0, time.monotonic() + seconds
    while time.monotonic() < stop_at:
        store.append(Event("progress", ops[done % OPERATIONS], progress_data(0.5)))
        done += 1
    counts.put(done / seconds)


def appends_per_second(settings: Settings, seconds: float) -> float:
    context = multiprocessing.get_context("spawn")
    counts = context.Queue()
    writers = [
        context.Process(target=_write, args=(settings, seconds, counts)) for _ in range(WRITERS)
    ]
    for writer in writers:
        writer.start()
    total = sum(counts.get(timeout=seconds + 60) for _ in writers)
    for writer in writers:
        writer.join(timeout=30)
    return total


def run_rates(bench: Bench) -> list[Row]:
    seconds = max(1.0, bench.sizes.step_seconds)
    with EmbeddedRedis() as server:
        single = appends_per_second(
            load_settings({}, redis_url=server.url, prefix="rate:"), seconds
        )
    cluster = EmbeddedCluster(persistent=False).start()
    try:
        clustered = appends_per_second(
            load_settings(
                {}, redis_url=cluster.url, redis_cluster=True, live_partitions=3, prefix="rate:"
            ),
            seconds,
        )
    finally:
        cluster.close()
    return [
        Row(
            "7 store cost",
            f"appends/s from {WRITERS} writer processes: 1 Redis vs 3-master Cluster",
            {"single_redis_s": round(single), "cluster_s": round(clustered)},
            note="one append per round trip; all on one machine",
        )
    ]
