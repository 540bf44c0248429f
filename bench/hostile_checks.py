"""The hostile harness's verdicts: the canary's ledger and the invariants, with no I/O.

The promises checked are ARCHITECTURE.md's "Bounded memory" (bytes held for
clients capped bridge-wide, misbehaving clients closed, never the ones that
read, ``/healthz`` always answers) and the access rules of PROTOCOL.md 1.2
(foreign origins and rebound hosts refused on every surface, bad tokens get
nothing). The harness collects :class:`Figures`; :func:`verdicts` turns them
into pass/fail lines with the figure and the limit, the same for the report,
the JSON and the test.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from .stats import SeqTracker

MIB = 1 << 20
# What the bridge may grow beyond its bridge-wide client budget (TASKCAST_MAX_BUFFERED_BYTES):
# the interpreter's and allocator's own overhead for hundreds of sockets, asyncio transports,
# per-connection objects and freed-but-not-returned arenas. docs/SECURITY.md's flood row: 1,000
# idle WebSockets took a bridge idling at about 56 MiB to 82 MiB; 64 MiB leaves room for that
# without hiding growth that scales with what attackers send (finding 1 grew by 2 GiB).
RSS_SLACK_BYTES = 64 * MIB
HEALTHZ_MIN_SHARE = 0.99
HEALTHZ_TIMEOUT = 1.0  # seconds: a slower answer counts as missed
CANARY_MIN_SHARE = 0.99
CANARY_ON_TIME = 1.0  # seconds from stored to received for an event to count as served


@dataclass
class CanaryLedger:
    """When each of the canary operation's events was stored and when it arrived.

    Written by two threads (the producer's and the canary's), read at the end.
    ``resumes`` counts reconnections; ``unrecovered`` the resumes the bridge
    answered with ``recovered: false`` (history the canary needed was gone).
    """

    operation_id: str
    stored: dict[int, float] = field(default_factory=dict)
    arrived: dict[int, float] = field(default_factory=dict)
    tracker: SeqTracker = field(default_factory=SeqTracker)
    resumes: int = 0
    unrecovered: int = 0
    max_frame: int = 0
    close_codes: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def store(self, seq: int, at: float) -> None:
        with self._lock:
            self.stored[seq] = at

    def frame(self, size: int) -> None:
        with self._lock:
            self.max_frame = max(self.max_frame, size)

    def receive(self, seq: int, at: float) -> None:
        with self._lock:
            self.tracker.record(self.operation_id, seq)
            self.arrived.setdefault(seq, at)

    def closed(self, code: int | None) -> None:
        with self._lock:
            key = str(code)
            self.close_codes[key] = self.close_codes.get(key, 0) + 1

    @property
    def last_received(self) -> int:
        return self.tracker.last.get(self.operation_id, 0)

    def served_share(self, on_time: float = CANARY_ON_TIME) -> float:
        """Share of stored events that arrived within ``on_time`` of being stored."""
        with self._lock:
            if not self.stored:
                return 0.0
            served = sum(
                1 for seq, at in self.stored.items()
                if seq in self.arrived and self.arrived[seq] - at <= on_time
            )
            return served / len(self.stored)

    def lost(self, last_seq: int) -> int:
        """Events up to ``last_seq`` (the store's) that never arrived, gaps included."""
        with self._lock:
            return self.tracker.missing({self.operation_id: last_seq})


@dataclass
class Figures:
    """Everything a run measured that an invariant looks at."""

    rss_baseline: int
    rss_peak: int
    buffered_budget: int
    probes: int
    probes_answered: int
    canary_events: int
    canary_served: float
    canary_lost: int
    canary_duplicates: int
    canary_unrecovered: int
    canary_max_frame: int
    frame_limit: int
    cross_origin_attempts: int
    cross_origin_reads: list[str]
    bad_token_attempts: int
    bad_token_reads: list[str]
    pipelined_writes: int
    pipelined_answered: int
    producer_errors: list[str]
    alive: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """One invariant: passed or not, the figure measured and the limit it was held to."""

    name: str
    passed: bool
    figure: str
    limit: str

    def line(self) -> str:
        return f"{self.name}: {'pass' if self.passed else 'FAIL'} ({self.figure}; {self.limit})"


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _reads(reads: list[str], attempts: int) -> str:
    shown = "; ".join(reads[:3]) + (" ..." if len(reads) > 3 else "")
    return f"{len(reads)} of {attempts} attempts read data" + (f": {shown}" if reads else "")


def verdicts(f: Figures) -> list[Verdict]:
    """Every invariant of the run, in the report's order."""
    growth = f.rss_peak - f.rss_baseline
    allowed = f.buffered_budget + RSS_SLACK_BYTES
    health = _share(f.probes_answered, f.probes)
    return [
        Verdict(
            "bounded memory", growth <= allowed,
            f"RSS grew {growth / MIB:.0f} MiB ({f.rss_baseline / MIB:.0f} -> "
            f"{f.rss_peak / MIB:.0f} MiB)",
            f"<= {f.buffered_budget / MIB:.0f} MiB budget + {RSS_SLACK_BYTES / MIB:.0f} MiB slack",
        ),
        Verdict(
            "/healthz answers", f.probes > 0 and health >= HEALTHZ_MIN_SHARE,
            f"{f.probes_answered} of {f.probes} probes ({health:.1%})",
            f">= {HEALTHZ_MIN_SHARE:.0%} within {HEALTHZ_TIMEOUT:g} s",
        ),
        Verdict(
            "canary served", f.canary_events > 0 and f.canary_served >= CANARY_MIN_SHARE,
            f"{f.canary_served:.1%} of {f.canary_events} events on time",
            f">= {CANARY_MIN_SHARE:.0%} within {CANARY_ON_TIME:g} s",
        ),
        Verdict(
            "canary lost nothing",
            f.canary_lost == f.canary_duplicates == f.canary_unrecovered == 0,
            f"{f.canary_lost} lost, {f.canary_duplicates} duplicated or out of order, "
            f"{f.canary_unrecovered} resumes not recovered",
            "0, 0, 0",
        ),
        Verdict(
            "no cross-origin read", not f.cross_origin_reads,
            _reads(f.cross_origin_reads, f.cross_origin_attempts),
            "foreign Origin / rebound Host: non-2xx, WS handshake refused",
        ),
        Verdict(
            "no read with a bad token", not f.bad_token_reads,
            _reads(f.bad_token_reads, f.bad_token_attempts),
            "forged, expired, alg none, wrong scope: refused",
        ),
        Verdict(
            "frames within limits", f.canary_max_frame <= f.frame_limit,
            f"largest frame the canary got: {f.canary_max_frame:,} B",
            f"<= {f.frame_limit:,} B (TASKCAST_MAX_EVENT_BYTES)",
        ),
        Verdict(
            "pipelined HTTP answered",
            f.pipelined_writes > 0 and f.pipelined_answered == f.pipelined_writes,
            f"{f.pipelined_answered} of {f.pipelined_writes} writes of several requests "
            "got an answer",
            "all: at least the first request of each",
        ),
        Verdict(
            "producer never raised", not f.producer_errors,
            "; ".join(f.producer_errors[:2]) or "no exception from emit",
            "a task's oversized event is capped, never an exception in the task",
        ),
        Verdict("bridge alive", f.alive, "running" if f.alive else "exited", "still running"),
    ]
