"""Smoke run of the benchmarks: every scenario runs at tiny sizes and loses nothing.

The real benchmark (``python -m bench``) takes minutes and is not part of the
suite; this checks that each scenario still runs against the current bridge
and workers and produces figures. Performance is not asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {
    "producer-cost": "4 producer cost",
    "latency": "1 latency",
    "polling": "baseline polling",
    "throughput": "2 throughput",
    "connections": "3 connections",
    "recovery": "5 recovery",
    "store-cost": "7 store cost",
    "scale": "8 scale",
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "taskcast benchmarks" in (out / "BENCHMARKS.md").read_text()
    return json.loads((out / "latest.json").read_text())


@pytest.mark.timeout(120)
def test_every_scenario_produced_numbers(quick_run: dict) -> None:
    rows = quick_run["results"]
    assert {row["scenario"] for row in rows} >= set(SCENARIOS.values()) | {"baseline thin relay"}
    for row in rows:
        assert row["case"] != "error", row
        numbers = [v for v in row["figures"].values() if isinstance(v, (int, float))]
        assert numbers and any(numbers), row


@pytest.mark.timeout(120)
def test_no_scenario_lost_or_duplicated_an_event(quick_run: dict) -> None:
    checked = [row for row in quick_run["results"] if row["lost"] is not None]
    assert {row["scenario"] for row in checked} >= {
        "1 latency",
        "2 throughput",
        "3 connections",
        "5 recovery",
        "8 scale",
    }
    for row in checked:
        assert (row["lost"], row["duplicates"]) == (0, 0), row


@pytest.mark.timeout(120)
def test_results_name_the_machine(quick_run: dict) -> None:
    machine = quick_run["machine"]
    assert machine["cores"] >= 1 and machine["redis"] and machine["cpu"]
