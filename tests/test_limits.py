"""The limit arithmetic of the bridge, without sockets (bridge/limits.py)."""

from __future__ import annotations

from taskcast.bridge.limits import ConnectionCaps, TokenBucket, default_max_connections


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=50, burst=100, now=0.0)
    assert sum(bucket.take(0.0) for _ in range(150)) == 100
    assert not bucket.take(0.0)
    assert sum(bucket.take(1.0) for _ in range(100)) == 50  # one second refills 50
    assert sum(bucket.take(100.0) for _ in range(200)) == 100  # never more than the burst


def test_connection_caps_refuse_with_503_in_total_and_429_per_address() -> None:
    caps = ConnectionCaps(total=3, per_address=2)
    for address in ("a", "a", "b"):
        assert caps.refusal(address) is None
        caps.opened(address)
    assert caps.refusal("c") == 503
    caps.closed("b")
    assert caps.refusal("a") == 429 and caps.refusal("c") is None
    caps.closed("a")
    caps.closed("a")
    assert caps.open == {} and caps.count == 0


def test_default_connection_cap_keeps_a_reserve_of_descriptors() -> None:
    assert default_max_connections(1024) == 1024 - 204
    assert default_max_connections(20_000) == 16_000
    assert default_max_connections(100) == 1  # at least 128 kept back
