"""Scenario 8: one bridge process against two on the same port (``--processes 2``).

The fan-out shape of scenario 2 (one operation, many subscribers), searched in
lockstep for both, each with its own store prefix's stream: deliveries per
second at the highest rate both pass, and server CPU per delivery (all of a
bridge's processes). The machine's cores are shared with the load generators,
so the gain of a second process is bounded by what they leave free: the load
average is recorded with the figures.
"""

from __future__ import annotations

from .context import Bench
from .report import Row
from .throughput import Shape, Target, describe, paired_search


def run(bench: Bench) -> list[Row]:
    sizes = bench.sizes
    shape = Shape(
        f"1 op x {sizes.fanout_subscribers} subscribers", 1, sizes.fanout_subscribers, 1, 2
    )
    one = bench.bridge()
    two = bench.bridge(processes=2)
    targets = {
        "1 process": Target(one, bench.prefix, True),
        "2 processes": Target(two, bench.prefix, True),
    }
    try:
        searches = paired_search(bench, targets, shape, sizes.fanout_start_rate)
    finally:
        bench.procs.stop(one.child)
        bench.procs.stop(two.child)
    rows = []
    for name, search in searches.items():
        figures, note = describe(search.best, search.failed)
        best = search.best
        rows.append(
            Row(
                "8 scale",
                f"bridge with {name}, {shape.name}",
                figures,
                lost=best.lost if best else None,
                duplicates=best.duplicates if best else None,
                note=note,
            )
        )
    return rows
