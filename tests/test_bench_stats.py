"""The benchmark's pure parts: percentiles, loss/duplicate counting, pacing, report blocks."""

from __future__ import annotations

import random
from itertools import pairwise
from pathlib import Path

import pytest

from bench.fleet import split
from bench.produce import schedule_offsets, staggered_start
from bench.report import (
    END_MARK,
    START_MARK,
    Row,
    load_rows,
    markdown,
    merge_rows,
    to_json,
    update_markdown,
)
from bench.stats import Delivery, Histogram, SeqTracker, merged


def test_histogram_percentiles_are_within_one_percent_of_exact() -> None:
    rng = random.Random(7)
    samples = [rng.expovariate(1 / 0.002) for _ in range(20_000)]
    histogram = Histogram()
    for s in samples:
        histogram.record(s)
    ordered = sorted(samples)
    for q in (50, 90, 99, 99.9):
        exact = ordered[round(q / 100 * len(ordered)) - 1] * 1e6
        assert histogram.percentile(q) == pytest.approx(exact, rel=0.01, abs=1.0)
    assert histogram.max_us == pytest.approx(max(samples) * 1e6)
    assert histogram.count == len(samples)


def test_merged_histograms_equal_one_histogram_of_all_samples() -> None:
    a, b, both = Histogram(), Histogram(), Histogram()
    for i in range(1, 1000):
        (a if i % 3 else b).record(i / 1e5)
        both.record(i / 1e5)
    total = merged([a, b])
    assert total.counts == both.counts
    assert total.percentile(99) == both.percentile(99)
    assert (total.count, total.max_us, total.min_us) == (both.count, both.max_us, both.min_us)


def test_negative_latency_is_counted_not_hidden() -> None:
    histogram = Histogram()
    histogram.record(-0.001)
    assert histogram.negative == 1 and histogram.percentile(50) == 0.0


def test_empty_histogram_reports_zero() -> None:
    assert Histogram().summary_ms() == {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0, "samples": 0}


def test_seq_tracker_counts_gaps_duplicates_and_missing_tail() -> None:
    tracker = SeqTracker()
    for seq in (1, 2, 2, 5, 4, 6):
        tracker.record("a", seq)
    tracker.record("b", 1)
    assert tracker.duplicates == 2  # the repeated 2 and the late 4
    assert tracker.gaps == 2  # 3 and 4 were skipped when 5 arrived
    assert tracker.missing({"a": 8, "b": 1, "c": 2}) == 2 + 2 + 2
    assert not tracker.complete({"a": 6, "c": 1})
    assert tracker.complete({"a": 6, "b": 1})


def test_delivery_merge_adds_counts_and_latencies() -> None:
    first, second = Delivery(received=3, lost=1), Delivery(received=2, duplicates=1)
    first.histogram.record(0.001)
    second.histogram.record(0.003)
    total = Delivery().merge(first).merge(second)
    assert (total.received, total.lost, total.duplicates) == (5, 1, 1)
    assert total.histogram.count == 2 and total.histogram.max_us == 3000


def test_schedule_paces_events_evenly() -> None:
    assert schedule_offsets(4, 2.0) == [0.0, 0.5, 1.0, 1.5]


def test_staggered_tasks_together_emit_one_event_every_interval() -> None:
    tasks, rate, each = 100, 1000.0, 5
    due = sorted(
        staggered_start(10.0, j, rate) + i / (rate / tasks)
        for j in range(tasks)
        for i in range(each)
    )
    gaps = [later - earlier for earlier, later in pairwise(due)]
    assert due[0] == 10.0
    assert gaps == pytest.approx([1 / rate] * (tasks * each - 1), abs=1e-9)


def test_split_deals_every_item_once_into_nonempty_parts() -> None:
    parts = split([str(i) for i in range(7)], 3)
    assert sorted(x for p in parts for x in p) == sorted(str(i) for i in range(7))
    assert [len(p) for p in parts] == [3, 2, 2]
    assert split(["only"], 4) == [("only",)]


MACHINE = {
    "date": "2025-01-01 00:00 UTC",
    "commit": "abc",
    "cpu": "CPU",
    "cores": 2,
    "memory_gib": 4.0,
    "python": "3.11",
    "redis": "6.2",
    "os": "Linux",
    "load_average_at_start": [0.5, 0.4, 0.3],
}


def test_update_markdown_replaces_only_the_generated_block(tmp_path: Path) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"# Title\n\nProse before.\n\n{START_MARK}\nold\n{END_MARK}\n\nProse after.\n")
    row = Row(
        "1 latency", "a|b", {"p99_ms": 1.5}, lost=0, duplicates=0, goal="p99 < 5 ms", met=True
    )
    update_markdown(doc, markdown([row], MACHINE))
    text = doc.read_text()
    assert text.startswith("# Title\n\nProse before.") and text.endswith("Prose after.\n")
    assert "old" not in text
    assert "| 1 latency | a\\|b | p99_ms 1.500 | 0/0 | met: p99 < 5 ms |" in text
    assert "2 logical cores" in text and "Redis 6.2" in text


def test_update_markdown_creates_a_missing_document(tmp_path: Path) -> None:
    doc = tmp_path / "docs" / "BENCHMARKS.md"
    update_markdown(doc, "generated\n")
    assert doc.read_text().count(START_MARK) == 1 and "generated" in doc.read_text()


def test_rerunning_one_scenario_keeps_the_others_rows_in_scenario_order(tmp_path: Path) -> None:
    old = [
        Row("1 latency", "old", {"p99_ms": 9.0}, key="latency", measured_at="A"),
        Row("2 throughput", "old", {"max_ev_s": 1}, key="throughput", measured_at="A"),
    ]
    (tmp_path / "latest.json").write_text(to_json(old, MACHINE, {}))
    new = [Row("2 throughput", "new", {"max_ev_s": 2}, key="throughput", measured_at="B")]
    rows = merge_rows(new, load_rows(tmp_path / "latest.json"), ["latency", "throughput"])
    assert [(r.key, r.case) for r in rows] == [("latency", "old"), ("throughput", "new")]
    assert "Measured between A and B" in markdown(rows, MACHINE)


def test_unreadable_results_file_gives_no_rows(tmp_path: Path) -> None:
    (tmp_path / "latest.json").write_text("not json")
    assert load_rows(tmp_path / "latest.json") == []
    assert load_rows(tmp_path / "missing.json") == []
