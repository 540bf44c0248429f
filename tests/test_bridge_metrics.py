"""The delivery-lag histogram the bridge counts itself and exports at scrape time."""

from __future__ import annotations

from taskcast.bridge.metrics import LAG_BUCKETS, LagHistogram


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
