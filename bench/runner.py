"""``python -m bench``: run the scenarios, print the table, write JSON and Markdown.

Every process the run starts is stopped on the way out, whether the run
ends normally, with an error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType

from rich.console import Console

from . import (
    connections,
    latency,
    polling,
    producer_cost,
    recovery,
    scale,
    store_cost,
    throughput,
)
from .context import FULL, QUICK, Bench
from .machine import machine_info
from .procs import Processes, raise_nofile_limit
from .report import Row, load_rows, markdown, merge_rows, print_table, to_json, update_markdown

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS: dict[str, Callable[[Bench], list[Row]]] = {
    "producer-cost": producer_cost.run,
    "latency": latency.run,
    "polling": polling.run,
    "throughput": throughput.run,
    "connections": connections.run,
    "recovery": recovery.run,
    "store-cost": store_cost.run,
    "scale": scale.run,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="taskcast benchmarks (loopback only)."
    )
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run, tiny sizes")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        help="run only this scenario (repeatable; default: all); the other scenarios' "
        "rows in the output are kept from the last run",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="directory for latest.json and BENCHMARKS.md "
        "(default: bench/results/latest.json and docs/BENCHMARKS.md; "
        "bench/results/quick/ for --quick)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="attach py-spy to every bridge and worker; collapsed stacks go to DIR "
        "(summarise with python -m bench.profile DIR/*.txt); figures are then perturbed",
    )
    return parser.parse_args(argv)


def output_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    if args.out is not None:
        return args.out / "latest.json", args.out / "BENCHMARKS.md"
    if args.quick:
        quick = ROOT / "bench" / "results" / "quick"
        return quick / "latest.json", quick / "BENCHMARKS.md"
    return ROOT / "bench" / "results" / "latest.json", ROOT / "docs" / "BENCHMARKS.md"


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace, console: Console) -> tuple[list[Row], dict]:
    """Run the chosen scenarios; a failing scenario becomes an error row, the rest go on."""
    sizes = QUICK if args.quick else FULL
    rows: list[Row] = []
    with Processes(args.profile) as procs:
        bench = Bench(procs, sizes)
        machine = machine_info(bench.store.url, ROOT)
        try:
            for name in args.scenario or list(SCENARIOS):
                console.log(f"scenario {name} ...")
                started = time.monotonic()
                try:
                    scenario_rows = SCENARIOS[name](bench)
                except Exception as exc:
                    console.log(traceback.format_exc())
                    scenario_rows = [Row(name, "error", note=f"{type(exc).__name__}: {exc}")]
                measured_at = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
                for row in scenario_rows:  # others' work on the same cores skews every figure
                    row.figures["load_1m"] = round(os.getloadavg()[0], 2)
                    row.key, row.measured_at = name, measured_at
                rows.extend(scenario_rows)
                console.log(f"scenario {name} took {time.monotonic() - started:.1f} s")
        finally:
            bench.close()
    return rows, machine


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGINT):  # SIGINT too: a background job ignores it
        signal.signal(signum, _terminate)
    raise_nofile_limit()
    console = Console()
    try:
        rows, machine = run(args, console)
    except KeyboardInterrupt:
        console.log("interrupted; every process the run started has been stopped")
        return 130
    print_table(rows, console)
    json_path, md_path = output_paths(args)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    if args.scenario:  # re-running some scenarios keeps the others' last figures
        rows = merge_rows(rows, load_rows(json_path), list(SCENARIOS))
    options = {"quick": args.quick, "scenarios": sorted({r.key for r in rows})}
    json_path.write_text(to_json(rows, machine, options))
    update_markdown(md_path, markdown(rows, machine))
    console.log(f"wrote {json_path} and {md_path}")
    return 1 if any(r.case == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
