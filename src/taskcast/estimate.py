"""ETA and rate of an operation, estimated from its own recent progress (PROTOCOL.md 1.1).

Pure and in-process: the producer that stores an operation's progress feeds
each stored point here, so an estimate costs no Redis round trip and no
call that the coalescer merges away (a point every interval is plenty to
estimate from).

Why exponentially discounted totals: the rate is *progress made* over *time
spent*, both summed over the run with older stretches fading out
(``made = made * k + dp``, ``spent = spent * k + dt``, ``k = exp(-dt / horizon)``).
Each stretch of time counts in proportion to its length, not to how many
calls fell in it, so uneven steps (a burst of tiny updates, then a long
silent step) neither dominate nor vanish: a steady staircase gives its exact
rate at every step, whatever the step sizes. Averaging per-call rates, or a
regression over the last N points, weighs calls instead and swings with
their spacing. The horizon grows with the run (a share of its elapsed time,
never under a floor), so a long task is judged on its last minutes rather
than its last few seconds, while a change of pace still shows within a
fraction of the time already spent.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from taskcast.events import KIND_NORMAL, Event

MIN_SPAN = 1.0  # seconds between the first and the latest point before an estimate is made
MIN_HORIZON = 5.0  # seconds: the shortest memory of the discounted totals
HORIZON_SHARE = 0.5  # the memory as a share of the run's elapsed time, when longer
DEFAULT_LIMIT = 10_000  # operations one producer keeps estimators for


class Estimate(NamedTuple):
    """``eta``: seconds left at the latest point; ``rate``: units per second when the
    point gave a ``total``, else fraction per second."""

    eta: float
    rate: float


class Estimator:
    """The discounted-totals estimate of one operation, fed ``(time, fraction)`` points.

    No estimate until the fraction has risen and the points span at least
    ``min_span`` seconds (two points a moment apart say little). A fraction
    lower than the previous one (the task restarted, or is counting a new
    phase) starts afresh from that point.
    """

    __slots__ = (
        "min_span",
        "min_horizon",
        "horizon_share",
        "_start",
        "_time",
        "_fraction",
        "_made",
        "_spent",
    )

    def __init__(
        self,
        min_span: float = MIN_SPAN,
        min_horizon: float = MIN_HORIZON,
        horizon_share: float = HORIZON_SHARE,
    ) -> None:
        self.min_span = min_span
        self.min_horizon = min_horizon
        self.horizon_share = horizon_share
        self._start = self._time = self._made = self._spent = 0.0
        self._fraction = math.inf  # no point yet: the first one starts afresh like a fall

    def update(self, now: float, fraction: float, total: float | None = None) -> Estimate | None:
        """Add the point ``fraction`` (0.0-1.0) at ``now`` (seconds); the estimate, if any."""
        if fraction < self._fraction:
            self._start = self._time = now
            self._fraction = fraction
            self._made = self._spent = 0.0
            return None
        elapsed = now - self._start
        step = max(0.0, now - self._time)
        keep = math.exp(-step / max(self.min_horizon, elapsed * self.horizon_share))
        self._made = self._made * keep + (fraction - self._fraction)
        self._spent = self._spent * keep + step
        self._time = max(self._time, now)
        self._fraction = fraction
        if self._made <= 0.0 or self._spent <= 0.0 or elapsed < self.min_span:
            return None
        rate = self._made / self._spent
        eta = round(max(0.0, 1.0 - fraction) / rate, 1)
        return Estimate(eta, rate * total if total else rate)


class Estimates:
    """One :class:`Estimator` per operation, for the operations a producer is storing.

    The producer drops an operation's estimator when the operation ends (or
    starts again); ``limit`` bounds those whose end this process never sees
    (an emitter operation finished elsewhere), dropping the longest unfed.
    Not thread-safe by itself: the producer calls it under its own lock.
    """

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._ops: dict[str, Estimator] = {}

    def update(
        self, operation_id: str, now: float, fraction: float, total: float | None = None
    ) -> Estimate | None:
        """Feed one point of ``operation_id``; its estimate, if any."""
        estimator = self._ops.pop(operation_id, None)
        if estimator is None:
            estimator = Estimator()
            if len(self._ops) >= self.limit:
                del self._ops[next(iter(self._ops))]
        self._ops[operation_id] = estimator  # last in order: the most recently fed
        return estimator.update(now, fraction, total)

    def forget(self, operation_id: str) -> None:
        """Drop the estimator of an operation that ended or starts over."""
        self._ops.pop(operation_id, None)

    def __len__(self) -> int:
        return len(self._ops)


def estimated_data(estimates: Estimates, event: Event) -> dict[str, Any]:
    """``event``'s data as it is stored: progress with a value gets its operation's ``eta``
    and ``rate`` once estimable (a new dict; otherwise the same one); an event that ends
    or restarts the operation drops its estimator. Feed events in the order they are
    stored (the producer does, under its lock; so does the Celery-event ingester, on its
    one thread)."""
    data = event.data
    if event.event_type == "progress":
        fraction, total = data.get("progress"), data.get("total")
        if isinstance(fraction, (int, float)):
            if not isinstance(total, (int, float)):
                total = None
            estimate = estimates.update(event.operation_id, event.timestamp, fraction, total)
            if estimate is not None:
                return {**data, "eta": estimate.eta, "rate": estimate.rate}
    elif event.kind != KIND_NORMAL:
        estimates.forget(event.operation_id)
    return data
