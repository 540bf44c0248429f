"""The limit arithmetic of the bridge, without sockets (bridge/limits.py)."""

from __future__ import annotations

from taskcast.bridge.limits import (
    IDLE_HEAD_TIMEOUT,
    ConnectionCaps,
    Heads,
    TokenBucket,
    default_max_buffered_bytes,
    default_max_connections,
)


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


def test_a_newcomer_head_is_admitted_and_a_silent_head_of_its_address_makes_room() -> None:
    heads: Heads[str] = Heads(total=10, per_address=2)
    assert heads.start("a1", "a", 0.0) is None
    assert heads.start("a2", "a", 1.0) is None
    heads.progress("a1", 2.9)  # a1 is still sending; a2 has been silent since 1.0
    assert heads.start("a3", "a", 3.0) == "a2"
    assert len(heads) == 2 and heads.by_address == {"a": 2}
    assert heads.start("b1", "b", 3.0) is None  # other addresses are not charged for it


def test_with_no_silent_head_the_oldest_goes_not_one_whose_bytes_are_on_their_way() -> None:
    heads: Heads[str] = Heads(total=10, per_address=3)
    heads.start("loris1", "a", 0.0)
    heads.start("loris2", "a", 1.0)
    heads.start("fresh", "a", 4.95)  # connected a moment ago, its request not yet read
    heads.progress("loris2", 4.9)
    heads.progress("loris1", 4.9)  # both trickle a byte at a time
    assert heads.start("probe", "a", 5.0) == "loris1"


def test_a_connection_whose_request_is_on_its_way_goes_after_half_heads() -> None:
    heads: Heads[str] = Heads(total=10, per_address=2)
    heads.start("client", "a", 0.0)  # its request arrives in the next loop turn
    heads.start("half", "a", 0.1)
    heads.progress("half", 0.1)  # sent half a head, and re-opens whenever it is dropped
    assert heads.start("half2", "a", 0.2) == "half"
    heads.progress("half2", 0.2)
    assert heads.start("half3", "a", 0.3) == "half2"
    assert "client" in heads and len(heads) == 2


def test_a_burst_of_new_connections_from_one_address_is_admitted_whole() -> None:
    # A thousand clients behind one address reconnect in the same instant after a
    # bridge restart: none of their requests has been read yet, and none is dropped.
    heads: Heads[str] = Heads(total=2000, per_address=32)
    assert all(heads.start(f"c{n}", "nat", 0.001 * n / 1000) is None for n in range(1000))
    assert heads.by_address == {"nat": 1000}
    # Once silent, they are the ones to make room again.
    assert heads.start("late", "nat", 1.0) == "c0"


def test_at_the_total_cap_a_head_on_its_way_goes_when_nothing_else_can() -> None:
    heads: Heads[str] = Heads(total=2, per_address=32)
    heads.start("a1", "a", 0.0)
    heads.start("a2", "a", 0.01)
    assert heads.start("a3", "a", 0.02) == "a1"


def test_at_the_total_cap_the_address_holding_the_most_heads_makes_room() -> None:
    heads: Heads[str] = Heads(total=3, per_address=3)
    for key, address, now in (("x1", "x", 0.0), ("x2", "x", 0.5), ("y1", "y", 0.0)):
        assert heads.start(key, address, now) is None
    assert heads.start("probe", "p", 1.0) == "x1"
    assert heads.by_address == {"x": 1, "y": 1, "p": 1}
    heads.done("probe")
    heads.done("probe")  # twice is harmless
    assert len(heads) == 2 and "p" not in heads.by_address


def test_a_head_is_idle_after_its_timeout_without_a_byte() -> None:
    heads: Heads[str] = Heads(total=3, per_address=3)
    heads.start("slow", "a", 0.0)
    assert heads.idle("slow", IDLE_HEAD_TIMEOUT - 0.5) == 0.5
    heads.progress("slow", 1.5)
    assert heads.idle("slow", IDLE_HEAD_TIMEOUT) == 1.5
    assert heads.idle("slow", IDLE_HEAD_TIMEOUT + 1.5) <= 0


def test_the_default_bridge_wide_budget_is_an_eighth_of_memory_shared_by_processes() -> None:
    gib = 1 << 30
    assert default_max_buffered_bytes(1, memory=24 * gib) == 3 * gib
    assert default_max_buffered_bytes(4, memory=24 * gib) == 3 * gib // 4
    assert default_max_buffered_bytes(64, memory=gib) == 16 << 20  # never below 16 MiB
