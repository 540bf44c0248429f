"""Prometheus metrics of one bridge, in a registry of its own.

Counters and gauges are read from the hub's plain integers at scrape time, so
the hot path pays nothing for them. The delivery-lag histogram is observed for
every live frame sent, so it too counts in plain integers (a bisect and two
additions) and becomes a metric only when scraped: prometheus-client's
``Histogram.observe`` takes a lock and cost a few percent of the fan-out path.
A private registry keeps two bridges in one process (tests, embedding) from
colliding in prometheus-client's global one.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

_GAUGES = {
    "connected_clients": "WebSocket connections open now",
    "subscriptions": "Operation subscriptions held by open connections",
    "monitors": "Connections in monitor mode (subscribe_all)",
    "buffered_bytes": "Bytes held for clients, frames at what they occupy",
}
_COUNTERS = {
    "events_in": "Events read from the live stream",
    "events_delivered": "Event frames handed to client sockets (replayed and live)",
    "slow_consumer_disconnects": "Connections closed with 4008 for falling behind",
    "connections_total": "WebSocket connections accepted",
    "budget_evictions": "Connections closed with 4008 because the bridge held too much",
}
# Counters each worker process's producer reports (taskcast.tasks.producer), summed.
PRODUCER_COUNTERS = {
    "stored": "stored",
    "rejected": "refused by the store: their operation had ended",
    "failed": "store attempts that failed (each failed event waits in the outbox)",
    "invalid": "dropped: their data could not be encoded as JSON",
    "coalesced": "progress merged into a later value by coalescing",
    "queued": "put in the outbox because the store was unreachable or busy draining it",
    "retried": "stored from the outbox",
    "merged": "progress merged away in a full outbox",
    "dropped": "dropped from a full outbox (each reported in its operation's history)",
}
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LagHistogram:
    """Delivery lags counted per bucket; only the event loop's thread observes and scrapes.

    ``counts[i]`` holds observations in ``(LAG_BUCKETS[i-1], LAG_BUCKETS[i]]``,
    the last slot those above every bucket.
    """

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LAG_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.add((bisect_left(LAG_BUCKETS, seconds), seconds))

    def measure(self, stored_at: float, now: float) -> tuple[int, float]:
        """A lag and its slot, for :meth:`add` (once per frame, however many get it)."""
        seconds = max(0.0, now - stored_at)
        return bisect_left(LAG_BUCKETS, seconds), seconds

    def add(self, lag: tuple[int, float]) -> None:
        self.counts[lag[0]] += 1
        self.total += lag[1]

    def metric(self) -> HistogramMetricFamily:
        buckets, cumulative = [], 0
        for bound, count in zip((*map(str, LAG_BUCKETS), "+Inf"), self.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        return HistogramMetricFamily(
            "taskcast_bridge_delivery_lag_seconds",
            "Seconds from an event being stored to its live frame being sent",
            buckets=buckets,
            sum_value=self.total,
        )


class _HubCollector(Collector):
    def __init__(
        self,
        stats: Callable[[], Mapping[str, int]],
        redis_up: Callable[[], bool],
        lag: LagHistogram,
        process: str,
    ) -> None:
        self._process = process
        self._stats = stats
        self._redis_up = redis_up
        self._lag = lag
        self.producers: Mapping[str, int] = {}

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        info = GaugeMetricFamily(
            "taskcast_bridge_process",
            "The bridge process that answered this scrape (host:pid); always 1",
            labels=["process"],
        )
        info.add_metric([self._process], 1)
        yield info
        for name, doc in _GAUGES.items():
            yield GaugeMetricFamily(f"taskcast_bridge_{name}", doc, value=stats[name])
        for name, doc in _COUNTERS.items():
            yield CounterMetricFamily(f"taskcast_bridge_{name}", doc, value=stats[name])
        yield GaugeMetricFamily(
            "taskcast_bridge_redis_up",
            "1 while the live tail reads Redis successfully",
            value=1 if self._redis_up() else 0,
        )
        yield self._lag.metric()
        events = CounterMetricFamily(
            "taskcast_producer_events",
            "Events of worker processes' producers, by outcome (summed over the processes "
            "that reported within the history TTL)",
            labels=["outcome"],
        )
        for name in PRODUCER_COUNTERS:
            events.add_metric([name], self.producers.get(name, 0))
        yield events
        yield GaugeMetricFamily(
            "taskcast_producer_outbox_events",
            "Events waiting in worker processes' outboxes for the store, at their last report",
            value=self.producers.get("outbox", 0),
        )
        yield GaugeMetricFamily(
            "taskcast_producer_processes",
            "Worker processes whose producer reported its counters",
            value=self.producers.get("processes", 0),
        )


class BridgeMetrics:
    """The bridge's registry; ``render()`` is the body of ``GET /metrics``."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self,
        stats: Callable[[], Mapping[str, int]],
        redis_up: Callable[[], bool],
        process: str = "",
    ) -> None:
        self.delivery_lag = LagHistogram()
        self.registry = CollectorRegistry()
        self._collector = _HubCollector(stats, redis_up, self.delivery_lag, process)
        self.registry.register(self._collector)

    def render(self, producers: Mapping[str, int] | None = None) -> bytes:
        """The metrics, with the producer counters read from the store for this scrape."""
        self._collector.producers = producers or {}
        return generate_latest(self.registry)
