"""Prometheus metrics of one bridge, in a registry of its own.

Counters and gauges are read from the hub's plain integers at scrape time, so
the hot path pays nothing for them; only the delivery-lag histogram is
observed, once per socket write that carries live events (for the oldest of
them, so it shows the worst lag of each write). A private registry keeps two bridges in one process
(tests, embedding) from colliding in prometheus-client's global one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_GAUGES = {
    "connected_clients": "WebSocket connections open now",
    "subscriptions": "Operation subscriptions held by open connections",
    "monitors": "Connections in monitor mode (subscribe_all)",
}
_COUNTERS = {
    "events_in": "Events read from the live stream",
    "events_delivered": "Event frames handed to client sockets (replayed and live)",
    "slow_consumer_disconnects": "Connections closed with 4008 for falling behind",
    "connections_total": "WebSocket connections accepted",
}
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _HubCollector(Collector):
    def __init__(self, stats: Callable[[], Mapping[str, int]], redis_up: Callable[[], bool]):
        self._stats = stats
        self._redis_up = redis_up

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        for name, doc in _GAUGES.items():
            yield GaugeMetricFamily(f"taskcast_bridge_{name}", doc, value=stats[name])
        for name, doc in _COUNTERS.items():
            yield CounterMetricFamily(f"taskcast_bridge_{name}", doc, value=stats[name])
        yield GaugeMetricFamily(
            "taskcast_bridge_redis_up",
            "1 while the live tail reads Redis successfully",
            value=1 if self._redis_up() else 0,
        )


class BridgeMetrics:
    """The bridge's registry; ``render()`` is the body of ``GET /metrics``."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self, stats: Callable[[], Mapping[str, int]], redis_up: Callable[[], bool]
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_HubCollector(stats, redis_up))
        self.delivery_lag = Histogram(
            "taskcast_bridge_delivery_lag_seconds",
            "Seconds from an event being stored to its live frame being sent"
            " (per socket write, its oldest live event)",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
