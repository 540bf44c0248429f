"""Latency histograms and sequence checks: pure, mergeable across client processes.

Client processes record millions of samples at high rates; keeping them all
would cost memory and pickling time, so they go into a log-linear histogram
(HDR style, under 1 % relative error) that the orchestrator merges. Loss and
duplicates are counted per operation from ``seq``, the protocol's own
gap-and-duplicate detector.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

SUB_BUCKET_BITS = 7  # 128 sub-buckets per power of two: < 0.8 % relative error


def _bucket(micros: int) -> int:
    exponent = max(0, micros.bit_length() - SUB_BUCKET_BITS)
    return (exponent << 16) | (micros >> exponent)


def _bucket_value(key: int) -> float:
    """Midpoint, in microseconds, of the values that share a bucket."""
    exponent, mantissa = key >> 16, key & 0xFFFF
    return ((mantissa << exponent) + ((1 << exponent) - 1) / 2) if exponent else float(mantissa)


@dataclass
class Histogram:
    """Latency samples in microsecond buckets; exact count, min and max."""

    counts: dict[int, int] = field(default_factory=dict)
    count: int = 0
    max_us: float = 0.0
    min_us: float = float("inf")
    negative: int = 0  # samples below zero: clock trouble, counted as 0

    def record(self, seconds: float) -> None:
        micros = seconds * 1e6
        if micros < 0:
            self.negative += 1
            micros = 0.0
        key = _bucket(int(micros))
        self.counts[key] = self.counts.get(key, 0) + 1
        self.count += 1
        self.max_us = max(self.max_us, micros)
        self.min_us = min(self.min_us, micros)

    def merge(self, other: Histogram) -> Histogram:
        for key, n in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + n
        self.count += other.count
        self.max_us = max(self.max_us, other.max_us)
        self.min_us = min(self.min_us, other.min_us)
        self.negative += other.negative
        return self

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile ``q`` (0-100) in microseconds; 0 when empty."""
        if not self.count:
            return 0.0
        rank = max(1, round(q / 100 * self.count))
        seen = 0
        for key in sorted(self.counts):
            seen += self.counts[key]
            if seen >= rank:
                return min(_bucket_value(key), self.max_us)
        return self.max_us

    def summary_ms(self) -> dict[str, float]:
        """p50/p99/max in milliseconds, rounded for reports."""
        return {
            "p50_ms": round(self.percentile(50) / 1000, 3),
            "p99_ms": round(self.percentile(99) / 1000, 3),
            "max_ms": round(self.max_us / 1000, 3),
            "samples": self.count,
        }


def merged(histograms: Iterable[Histogram]) -> Histogram:
    total = Histogram()
    for histogram in histograms:
        total.merge(histogram)
    return total


@dataclass
class SeqTracker:
    """Per-operation sequence bookkeeping of one receiver (one WebSocket connection).

    ``gaps`` counts seqs skipped in the middle, ``duplicates`` seqs seen again
    or out of order; :meth:`missing` adds the tail not received by the end.
    """

    last: dict[str, int] = field(default_factory=dict)
    received: int = 0
    gaps: int = 0
    duplicates: int = 0

    def record(self, operation_id: str, seq: int) -> None:
        self.received += 1
        last = self.last.get(operation_id, 0)
        if seq <= last:
            self.duplicates += 1
            return
        self.gaps += seq - last - 1
        self.last[operation_id] = seq

    def missing(self, expected_last: dict[str, int]) -> int:
        """Events lost: inner gaps plus every expected seq past the last one received."""
        tail = sum(max(0, want - self.last.get(op, 0)) for op, want in expected_last.items())
        return self.gaps + tail

    def complete(self, expected_last: dict[str, int]) -> bool:
        return all(self.last.get(op, 0) >= want for op, want in expected_last.items())


@dataclass
class Delivery:
    """What one receiver process saw: latencies, loss and duplicates, counts."""

    histogram: Histogram = field(default_factory=Histogram)
    received: int = 0
    lost: int = 0
    duplicates: int = 0

    def merge(self, other: Delivery) -> Delivery:
        self.histogram.merge(other.histogram)
        self.received += other.received
        self.lost += other.lost
        self.duplicates += other.duplicates
        return self
