"""Scenario 3: many idle WebSocket connections on one bridge process.

Resident memory per connection is the bridge's RSS growth (psutil) from
before the connections to after all of them are open, divided by their
number; while they stay connected, a probe client measures the latency of
a steady event stream. Client sockets are spread over several loopback
source addresses and several client processes, and every process raises its
open-file limit, so neither ports nor descriptors run out first.
"""

from __future__ import annotations

import time

import psutil

from .context import Bench
from .fleet import Fleet, split
from .probe import probe
from .receive import ReceiverSpec
from .report import Row

GOAL_KIB = 30.0
SOURCE_ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")
SETTLE_SECONDS = 2.0


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def run(bench: Bench) -> list[Row]:
    sizes = bench.sizes
    total = sizes.connections
    bridge = bench.bridge()
    try:
        with Fleet() as fleet:
            warm, _ = probe(
                bench, bridge, fleet, sizes.probe_rate, sizes.probe_seconds
            )  # the bridge's first-use allocations, not counted
            time.sleep(SETTLE_SECONDS)
            before = rss(bridge.child.pid)
            deadline = time.time() + 600
            idle_specs = [
                ReceiverSpec(
                    bridge.url,
                    tuple(() for _ in chunk),
                    {},
                    deadline,
                    idle=True,
                    local_hosts=SOURCE_ADDRESSES,
                )
                for chunk in split([str(i) for i in range(total)], sizes.connection_processes)
            ]
            idle = fleet.receivers(idle_specs, with_release=True)
            opened_at = time.monotonic()
            connected, errors = idle.ready(timeout=300)
            open_seconds = time.monotonic() - opened_at
            time.sleep(SETTLE_SECONDS)
            after = rss(bridge.child.pid)
            loaded, _ = probe(bench, bridge, fleet, sizes.probe_rate, sizes.probe_seconds)
            idle_report = idle.finish(timeout=60)
    finally:
        bench.procs.stop(bridge.child)
    per_conn_kib = (after - before) / max(connected, 1) / 1024
    return [
        Row(
            "3 connections",
            f"{total:,} idle connections",
            {
                "connected": connected,
                "kib_per_conn": round(per_conn_kib, 1),
                "bridge_rss_mib": round(after / 2**20, 1),
                "open_s": round(open_seconds, 1),
            },
            goal=f"< {GOAL_KIB:g} KiB per connection",
            met=connected == total and per_conn_kib < GOAL_KIB,
            note="; ".join(errors[:2] + idle_report["errors"][:2]),
        ),
        Row(
            "3 connections",
            f"latency at {sizes.probe_rate:,.0f} ev/s with {connected:,} idle connected",
            {
                **loaded.histogram.summary_ms(),
                "p99_ms_without": round(warm.histogram.percentile(99) / 1000, 3),
            },
            lost=loaded.lost + warm.lost,
            duplicates=loaded.duplicates + warm.duplicates,
        ),
    ]
