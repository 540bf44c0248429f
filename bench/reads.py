"""Reads at 100,000 stored operations: ``python3 -m bench.reads [--operations N]``.

``get_stats``' counts, ``list_operations status=active`` and the lost-worker
sweep used to read every operation's snapshot; the append script now keeps
the unfinished ids in a set of their own. ``list_operations operation_type``
reads the indexes the append keeps per type instead of every operation. This
times each read as the bridge does it (its async reader) against the full scan
it replaced (or, for the type filter, that a client without it would make),
measured in the same run on the same data, and prints medians in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable

import redis
from rich.console import Console
from rich.table import Table

from taskcast.bridge.reader import StoreReader
from taskcast.embedded_redis import EmbeddedRedis
from taskcast.events import Event, status_data
from taskcast.keys import matches
from taskcast.liveness import sweep_lost
from taskcast.store import EventStore

PREFIX = "reads:"
ACTIVE_SHARE = 100  # the oldest 1% still run: a scan for them must read everything
REPEATS = 15
# One operation in 100 of each of two report types (the prefix ``reports.*`` finds
# both), one in 5,000 of a rare one (fewer than a page: a scan reads everything),
# the rest spread over ten other types.
RARE_SHARE = 5000


def type_of(n: int) -> str:
    """The operation type of the ``n``-th operation (see above)."""
    if n % RARE_SHARE == 7:
        return "reports.rare"
    if n % 100 in (0, 50):
        return "reports.daily" if n % 100 == 0 else "reports.weekly"
    return f"bench.kind{n % 10}"


def fill(store: EventStore, operations: int) -> None:
    """``operations`` operations, queued then running; all but the oldest 1% completed."""
    for n in range(operations):
        op = f"op{n}"
        store.append(Event("status", op, status_data("queued"), operation_type=type_of(n)))
        store.append(Event("status", op, status_data("running", details={"worker": "w"})))
        if n >= operations // ACTIVE_SHARE:
            store.append(Event("completed", op, {"status": "completed"}))


async def full_scan_counts(reader: StoreReader) -> tuple[int, int]:
    """What get_stats did before: every snapshot's status, a page at a time."""
    active = total = start = 0
    (index,) = reader.keys.indexes
    while ids := await reader.client.zrevrange(index, start, start + 499):
        async with reader.client.pipeline(transaction=False) as pipe:
            for op_id in ids:
                pipe.hget(reader.keys.snapshot(op_id.decode()), "status")
            statuses = await pipe.execute()
        total += len(statuses)
        active += sum(1 for status in statuses if status != b'"completed"')
        start += 500
    return active, total


async def full_scan_active(reader: StoreReader, limit: int) -> int:
    """What list_operations status=active did before: snapshots of the whole index."""
    found = start = 0
    index = reader.keys.indexes
    while found < limit and (snapshots := await reader._snapshots(index, start, start + 99)):
        found += sum(1 for s in snapshots if s["status"] != "completed")
        start += 100
    return found


async def full_scan_type(reader: StoreReader, operation_type: str, limit: int) -> int:
    """A listing by type without the type indexes: snapshots of the index until found."""
    found = start = 0
    index = reader.keys.indexes
    while found < limit and (snapshots := await reader._snapshots(index, start, start + 99)):
        found += sum(1 for s in snapshots if matches(s, None, operation_type))
        start += 100
    return found


async def median_ms(read: Callable[[], Awaitable[object]]) -> float:
    times = []
    for _ in range(REPEATS):
        began = time.perf_counter()
        await read()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


async def measure(url: str, operations: int) -> list[tuple[str, float, float]]:
    reader = StoreReader(url, PREFIX)
    store = EventStore(redis.Redis.from_url(url), prefix=PREFIX)
    try:
        counts = await reader.operation_counts()
        assert counts == await full_scan_counts(reader), counts
        rare = await reader.operations(None, 50, 0, "reports.rare")
        assert len(rare) == await full_scan_type(reader, "reports.rare", 50), len(rare)
        rows = [
            (
                "get_stats counts",
                await median_ms(reader.operation_counts),
                await median_ms(lambda: full_scan_counts(reader)),
            ),
            (
                "list_operations active, limit 50",
                await median_ms(lambda: reader.operations("active", 50)),
                await median_ms(lambda: full_scan_active(reader, 50)),
            ),
            *[
                (
                    f"list_operations type {kind}, limit 50",
                    await median_ms(lambda kind=kind: reader.operations(None, 50, 0, kind)),
                    await median_ms(lambda kind=kind: full_scan_type(reader, kind, 50)),
                )
                for kind in ("reports.daily", "reports.*", "reports.rare")
            ],
            (
                "lost-worker sweep (its first 1000 active)",
                await median_ms(lambda: asyncio.to_thread(sweep_lost, store, 3600.0)),
                float("nan"),
            ),
        ]
    finally:
        await reader.close()
        store.client.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--operations", type=int, default=100_000)
    operations = parser.parse_args().operations
    with EmbeddedRedis() as server:
        began = time.perf_counter()
        fill(EventStore(redis.Redis.from_url(server.url), prefix=PREFIX), operations)
        filled = time.perf_counter() - began
        rows = asyncio.run(measure(server.url, operations))
    active = operations // ACTIVE_SHARE
    table = Table(title=f"reads at {operations:,} operations ({active:,} active)")
    for column in ("read", "now (ms, median)", "full scan (ms, median)", "ratio"):
        table.add_column(column)
    for name, now, scan in rows:
        ratio = "" if scan != scan else f"{scan / now:,.0f}x"
        table.add_row(name, f"{now:.2f}", "" if scan != scan else f"{scan:.0f}", ratio)
    console = Console()
    console.print(table)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    console.print(f"{os.cpu_count()} cores, load {load}; filled in {filled:.1f}s")


if __name__ == "__main__":
    main()
