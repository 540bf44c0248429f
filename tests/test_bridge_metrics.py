"""The delivery-lag histogram the bridge counts itself and exports at scrape time."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from bridge_helpers import http_get
from helpers import ManualClock

from taskcast.bridge.metrics import LAG_BUCKETS, LagHistogram
from taskcast.events import Event, log_data
from taskcast.tasks.producer import Producer


def buckets(histogram: LagHistogram) -> dict[str, float]:
    metric = histogram.metric()
    return {
        sample.labels["le"]: sample.value
        for sample in metric.samples
        if sample.name.endswith("_bucket")
    }


def test_a_lag_on_a_bound_counts_in_that_bucket_and_buckets_are_cumulative() -> None:
    lag = LagHistogram()
    for seconds in (0.0, 0.001, 0.0011, 0.05, 11.0):
        lag.observe(seconds)
    counts = buckets(lag)
    assert list(counts) == [str(bound) for bound in LAG_BUCKETS] + ["+Inf"]
    assert counts["0.001"] == 2 and counts["0.0025"] == 3
    assert counts["0.025"] == 3 and counts["0.05"] == 4 and counts["10.0"] == 4
    assert counts["+Inf"] == 5
    samples = {s.name: s.value for s in lag.metric().samples if "_bucket" not in s.name}
    assert samples["taskcast_bridge_delivery_lag_seconds_count"] == 5
    assert abs(samples["taskcast_bridge_delivery_lag_seconds_sum"] - 11.0521) < 1e-9


async def test_metrics_show_the_counters_a_worker_process_reported(
    bridge, task_settings, prefix: str
) -> None:
    clock = ManualClock()
    settings = replace(task_settings, prefix=prefix, progress_interval=0, heartbeat_interval=10)
    producer = Producer(settings, clock=clock)
    metrics_url = bridge.url.replace("ws://", "http://").replace("/ws", "/metrics")
    try:
        for _ in range(3):  # reported once, after the first is stored
            producer.emit(Event("log", "op", log_data("info", "x")))
        _, _, first = await asyncio.to_thread(http_get, metrics_url)
        clock.now = 11.0  # an interval later, the next stored event reports again
        producer.emit(Event("log", "op", log_data("info", "x")))
        status, _, second = await asyncio.to_thread(http_get, metrics_url)
    finally:
        producer.close()
    assert 'taskcast_producer_events_total{outcome="stored"} 1.0' in first.decode()
    text = second.decode()
    assert status == 200 and 'taskcast_producer_events_total{outcome="stored"} 4.0' in text
    assert "taskcast_producer_processes 1.0" in text
    assert "taskcast_producer_outbox_events 0.0" in text
