"""The hub without sockets or Redis: order, no gap, no duplicate, back-pressure."""

from __future__ import annotations

import itertools
import tracemalloc

import pytest

from taskcast.bridge.commands import encode, error_frame
from taskcast.bridge.hub import LIVE, REPLAYED, REPLY, Connection, Hub, Subscription, stored_at
from taskcast.keys import LiveEvent

_ids = itertools.count(1)


def event(op: str, seq: int, optype: str = "demo.job", size: int = 0, epoch: str = "") -> LiveEvent:
    payload = f'{{"operation_id":"{op}","seq":{seq}}}'.encode() + b" " * size
    stream_id = f"{1700000000000 + next(_ids)}-0".encode()
    return LiveEvent(stream_id, op, seq, optype, payload, epoch)


def stored(op: str, seq: int) -> tuple[int, bytes]:
    return seq, event(op, seq).payload


class Recorder:
    """A hub with callbacks that record what the adapter would be asked to do."""

    def __init__(
        self,
        send_buffer_bytes: int = 1 << 20,
        max_subscriptions: int = 1000,
        max_buffered_bytes: int = 0,
    ) -> None:
        self.ready: list[Connection] = []
        self.overflowed: list[Connection] = []
        self.resyncs: list[tuple[Connection, Subscription]] = []
        self.hub = Hub(
            send_buffer_bytes=send_buffer_bytes,
            max_subscriptions=max_subscriptions,
            max_buffered_bytes=max_buffered_bytes,
            on_ready=self.ready.append,
            on_overflow=self.overflowed.append,
            on_resync=lambda conn, sub: self.resyncs.append((conn, sub)),
        )

    def connect(self, name: str = "") -> Connection:
        return self.hub.connect(Connection(name or f"c{next(_ids)}"))

    def drain(self, conn: Connection) -> list[bytes]:
        frames = []
        while (frame := self.hub.take(conn)) is not None:
            frames.append(frame.payload)
        return frames

    def seqs(self, conn: Connection, op: str) -> list[int]:
        marker = f'"operation_id":"{op}","seq":'.encode()
        return [
            int(payload[len(marker) + 1 :].split(b"}")[0])
            for payload in self.drain(conn)
            if payload.startswith(b"{" + marker)
        ]

    def subscribe(
        self,
        conn: Connection,
        op: str,
        since: int = 0,
        history=(),
        last_seq: int | None = None,
        epoch: str = "",
    ) -> Subscription:
        sub = self.hub.begin_subscribe(conn, op, since)
        assert sub is not None
        history = list(history)
        last = last_seq if last_seq is not None else (history[-1][0] if history else 0)
        self.hub.finish_subscribe(conn, sub, b"reply", history, last, epoch)
        return sub


def test_live_events_reach_every_subscriber_in_order_sharing_one_frame() -> None:
    r = Recorder()
    a, b, other = r.connect(), r.connect(), r.connect()
    r.subscribe(a, "op")
    r.subscribe(b, "op")
    assert r.drain(a) == [b"reply"] and r.drain(b) == [b"reply"]
    r.hub.publish([event("op", 1), event("op", 2), event("zzz", 1)])
    frame_a = a.outbox[0]
    assert frame_a is b.outbox[0] and frame_a.kind == LIVE
    assert r.seqs(a, "op") == [1, 2] and r.seqs(b, "op") == [1, 2]
    assert r.drain(other) == []
    assert r.hub.stats.events_in == 3 and r.hub.stats.events_delivered == 4


def test_subscribe_merges_history_and_buffered_live_events_without_gap_or_duplicate() -> None:
    r = Recorder()
    conn = r.connect()
    sub = r.hub.begin_subscribe(conn, "op", 0)
    # While the history read is in flight, seq 3..5 arrive live; the history
    # read then returns 1..4 (it ran after 3 and 4 were stored).
    r.hub.publish([event("op", 3), event("op", 4), event("op", 5)])
    assert r.drain(conn) == []
    r.hub.finish_subscribe(conn, sub, b"reply", [stored("op", s) for s in (1, 2, 3, 4)], 4)
    kinds = [frame.kind for frame in conn.outbox]
    assert kinds == [REPLY, REPLAYED, REPLAYED, REPLAYED, REPLAYED, LIVE]
    assert r.drain(conn)[0] == b"reply"
    r.hub.publish([event("op", 5), event("op", 6)])
    assert r.seqs(conn, "op") == [6]
    assert conn.queued_bytes == 0


def test_subscribe_with_since_delivers_only_later_events() -> None:
    r = Recorder()
    conn = r.connect()
    sub = r.hub.begin_subscribe(conn, "op", 3)
    r.hub.publish([event("op", 6)])
    r.hub.finish_subscribe(conn, sub, b"reply", [stored("op", 4), stored("op", 5)], 5)
    r.hub.publish([event("op", 7)])
    assert r.seqs(conn, "op") == [4, 5, 6, 7]


def test_buffered_events_are_sorted_and_deduplicated() -> None:
    r = Recorder()
    conn = r.connect()
    sub = r.hub.begin_subscribe(conn, "op", 0)
    r.hub.publish([event("op", 2), event("op", 3)])
    r.hub.publish([event("op", 3)])
    r.hub.finish_subscribe(conn, sub, b"reply", [stored("op", 1)], 1)
    assert r.seqs(conn, "op") == [1, 2, 3]
    assert conn.queued_bytes == 0


def test_unknown_operation_then_events_flow_once_it_starts() -> None:
    r = Recorder()
    conn = r.connect()
    r.subscribe(conn, "future", since=9, last_seq=0)
    r.hub.publish([event("future", 1), event("future", 2)])
    assert r.seqs(conn, "future") == [1, 2]


def test_since_beyond_the_stored_last_seq_does_not_hide_new_events() -> None:
    r = Recorder()
    conn = r.connect()
    r.subscribe(conn, "op", since=50, last_seq=4)
    r.hub.publish([event("op", 5)])
    assert r.seqs(conn, "op") == [5]


def test_a_gap_in_the_live_tail_triggers_a_resync_from_history() -> None:
    r = Recorder()
    conn = r.connect()
    sub = r.subscribe(conn, "op", history=[stored("op", 1)])
    r.drain(conn)
    r.hub.publish([event("op", 2), event("op", 5), event("op", 6)])
    assert r.resyncs == [(conn, sub)] and sub.since == 2
    assert r.seqs(conn, "op") == [2]
    r.hub.publish([event("op", 7)])
    r.hub.finish_subscribe(conn, sub, None, [stored("op", s) for s in (3, 4, 5, 6)], 7)
    assert r.seqs(conn, "op") == [3, 4, 5, 6, 7]
    assert conn.queued_bytes == 0


def test_replaced_or_dropped_subscription_ignores_a_late_history_read() -> None:
    r = Recorder()
    conn = r.connect()
    first = r.hub.begin_subscribe(conn, "op", 0)
    second = r.hub.begin_subscribe(conn, "op", 2)
    r.hub.finish_subscribe(conn, first, b"stale", [stored("op", 1)], 1)
    assert r.drain(conn) == []
    r.hub.finish_subscribe(conn, second, b"reply", [stored("op", 3)], 3)
    assert r.drain(conn)[0] == b"reply"
    r.hub.abort_subscribe(conn, first)
    assert "op" in conn.subscriptions
    r.hub.abort_subscribe(conn, second)
    assert conn.subscriptions == {} and r.hub.subscription_count == 0


def test_unsubscribe_stops_delivery_and_releases_buffered_bytes() -> None:
    r = Recorder()
    conn = r.connect()
    r.hub.begin_subscribe(conn, "op", 0)
    r.hub.publish([event("op", 1)])
    assert conn.queued_bytes > 0
    assert r.hub.unsubscribe(conn, "op") is True
    assert conn.queued_bytes == 0 and r.hub.unsubscribe(conn, "op") is False
    r.hub.publish([event("op", 2)])
    assert r.drain(conn) == [] and r.hub.subscription_count == 0


def test_subscription_limit_counts_distinct_operations() -> None:
    r = Recorder(max_subscriptions=2)
    conn = r.connect()
    assert r.hub.begin_subscribe(conn, "a", 0) is not None
    assert r.hub.begin_subscribe(conn, "b", 0) is not None
    assert r.hub.begin_subscribe(conn, "c", 0) is None
    assert r.hub.begin_subscribe(conn, "a", 0) is not None
    assert r.hub.subscription_count == 2


def test_monitor_sees_every_operation_or_only_its_type() -> None:
    r = Recorder()
    everything, only_x = r.connect(), r.connect()
    r.hub.subscribe_all(everything)
    r.hub.subscribe_all(only_x, "x")
    r.hub.publish([event("a", 1, "x"), event("b", 1, "y"), event("a", 2, "x")])
    assert len(r.drain(everything)) == 3
    assert r.seqs(only_x, "a") == [1, 2]
    assert r.hub.unsubscribe_all(only_x) is True and r.hub.unsubscribe_all(only_x) is False
    r.hub.publish([event("a", 3, "x")])
    assert r.drain(only_x) == []
    assert r.hub.monitor_count == 1


def test_monitor_that_also_subscribes_gets_each_event_once_in_seq_order() -> None:
    r = Recorder()
    conn = r.connect()
    r.hub.subscribe_all(conn)
    sub = r.hub.begin_subscribe(conn, "op", 0)
    r.hub.publish([event("op", 2), event("other", 1)])
    r.hub.finish_subscribe(conn, sub, b"reply", [stored("op", 1)], 1)
    frames = r.drain(conn)
    assert frames[0].startswith(b'{"operation_id":"other"')
    assert frames[1:] == [b"reply", stored("op", 1)[1], event("op", 2).payload]


def test_slow_consumer_is_condemned_once_its_unsent_bytes_pass_the_budget() -> None:
    r = Recorder(send_buffer_bytes=1000)
    slow, fast = r.connect(), r.connect()
    r.subscribe(slow, "op")
    r.subscribe(fast, "op")
    r.hub.subscribe_all(slow)
    for seq in range(1, 30):
        r.hub.publish([event("op", seq, size=100)])
        r.drain(fast)
    assert r.overflowed == [slow]
    assert slow.closed and not slow.outbox and slow.queued_bytes == 0
    assert slow.subscriptions == {} and not r.hub.is_monitoring(slow)
    assert r.hub.stats.slow_consumer_disconnects == 1
    assert not fast.closed and fast.subscriptions


def test_events_buffered_during_a_subscribe_count_against_the_budget() -> None:
    r = Recorder(send_buffer_bytes=500)
    conn = r.connect()
    r.hub.begin_subscribe(conn, "op", 0)
    r.hub.publish([event("op", seq, size=100) for seq in range(1, 10)])
    assert r.overflowed == [conn]


def test_replies_and_history_never_condemn_a_connection() -> None:
    r = Recorder(send_buffer_bytes=100)
    conn = r.connect()
    r.hub.send(conn, b"x" * 500)
    r.subscribe(conn, "op", history=[(s, b"h" * 200) for s in range(1, 5)])
    assert r.overflowed == [] and r.hub.over_budget(conn)
    assert len(r.drain(conn)) == 6 and not r.hub.over_budget(conn)


def test_ready_fires_only_when_an_outbox_becomes_non_empty() -> None:
    r = Recorder()
    conn = r.connect()
    r.hub.send(conn, b"a")
    r.hub.send(conn, b"b")
    assert r.ready == [conn]
    r.drain(conn)
    r.hub.send(conn, b"c")
    assert r.ready == [conn, conn]


def test_disconnect_forgets_everything_and_is_idempotent() -> None:
    r = Recorder()
    conn = r.connect()
    r.subscribe(conn, "op")
    r.hub.subscribe_all(conn)
    r.hub.disconnect(conn)
    r.hub.disconnect(conn)
    stats = r.hub.snapshot_stats()
    assert stats["connected_clients"] == 0 and stats["subscriptions"] == 0
    assert stats["monitors"] == 0 and stats["connections_total"] == 1
    r.hub.publish([event("op", 1)])
    r.hub.send(conn, b"late")
    assert r.drain(conn) == []


def test_stored_at_reads_the_stream_id_milliseconds() -> None:
    assert stored_at(b"1735734005456-3") == pytest.approx(1735734005.456)


# Epochs are Redis-clock strings of one width: "e2" is newer than "e1".


def test_a_new_epoch_starts_the_subscription_over_with_a_fresh_reply() -> None:
    r = Recorder()
    conn = r.connect()
    sub = r.subscribe(conn, "op", history=[stored("op", 1)], epoch="e1")
    r.hub.publish([event("op", 2, epoch="e1")])
    assert r.seqs(conn, "op") == [1, 2]
    r.hub.publish([event("op", 1, epoch="e2"), event("op", 2, epoch="e2")])
    assert r.resyncs == [(conn, sub)] and sub.renew and sub.since == 0
    assert r.drain(conn) == []  # nothing flows until the new epoch's history is read
    r.hub.finish_subscribe(conn, sub, b"renewed", [stored("op", 1)], 1, "e2")
    assert r.drain(conn)[0] == b"renewed"
    assert not sub.renew and sub.epoch == "e2" and sub.last_seq == 2


def test_events_of_an_older_epoch_still_in_the_tail_are_dropped() -> None:
    r = Recorder()
    conn = r.connect()
    r.subscribe(conn, "op", epoch="e2")
    r.drain(conn)
    r.hub.publish([event("op", 7, epoch="e1"), event("op", 1, epoch="e2")])
    assert r.seqs(conn, "op") == [1] and r.resyncs == []


def test_history_read_in_an_epoch_that_ended_meanwhile_is_read_again() -> None:
    r = Recorder()
    conn = r.connect()
    sub = r.hub.begin_subscribe(conn, "op", 0)
    assert sub is not None
    r.hub.publish([event("op", 4, epoch="e1"), event("op", 1, epoch="e2")])
    r.hub.finish_subscribe(conn, sub, b"reply", [stored("op", 1), stored("op", 2)], 3, "e1")
    assert r.resyncs == [(conn, sub)] and sub.renew and r.drain(conn) == []
    assert conn.queued_bytes == 0


def test_an_operation_unknown_at_subscribe_takes_the_epoch_of_its_first_events() -> None:
    r = Recorder()
    conn = r.connect()
    sub = r.hub.begin_subscribe(conn, "op", 0)
    assert sub is not None
    r.hub.publish([event("op", 9, epoch="e1"), event("op", 1, epoch="e2")])
    r.hub.finish_subscribe(conn, sub, b"reply", [], 0, "")
    assert sub.epoch == "e2" and r.seqs(conn, "op") == [1]


def test_queued_replies_are_charged_at_least_what_they_occupy() -> None:
    """The finding of issue 18: 100-byte replies each held 4 KiB while charged 100 B."""
    r = Recorder()
    conn = r.connect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for request_id in range(5000):
            r.hub.send(conn, error_frame("rate_limited", "too many commands", request_id))
            r.hub.send(conn, encode({"status": "pong", "timestamp": 1.5}, request_id))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held <= conn.queued_bytes == r.hub.buffered_bytes
    assert conn.queued_bytes < 2 * held  # charged near what is held, not far above
    r.drain(conn)
    assert conn.queued_bytes == r.hub.buffered_bytes == 0


def test_the_bridge_wide_cap_condemns_those_owed_the_most_never_a_reader() -> None:
    r = Recorder(send_buffer_bytes=1 << 30, max_buffered_bytes=100_000)
    readers = [r.connect() for _ in range(3)]
    stalled = [r.connect() for _ in range(5)]
    for conn in readers + stalled:
        r.subscribe(conn, "op")
        r.drain(conn)
    for seq in range(1, 200):
        r.hub.publish([event("op", seq, size=1000)])
        for conn in readers:
            assert r.seqs(conn, "op") == [seq]
    assert set(r.overflowed) == set(stalled) and len(r.overflowed) == len(stalled)
    assert r.hub.stats.budget_evictions == len(stalled)
    assert not any(conn.closed for conn in readers)
    assert r.hub.buffered_bytes == sum(conn.queued_bytes for conn in readers) == 0


def test_the_cap_sheds_down_to_seven_eighths_taking_the_biggest_first() -> None:
    r = Recorder(send_buffer_bytes=1 << 30, max_buffered_bytes=80_000)
    small, big = r.connect(), r.connect()
    for _ in range(30):
        r.hub.send(small, b"s" * 1000)
    for _ in range(40):
        r.hub.send(big, b"b" * 1000)
    assert r.overflowed == [big] and not small.closed
    assert r.hub.buffered_bytes == small.queued_bytes <= 70_000


def test_replies_to_a_condemned_connection_are_neither_queued_nor_charged() -> None:
    r = Recorder(max_buffered_bytes=10_000)
    conn = r.connect()
    for _ in range(100):
        r.hub.send(conn, b"x" * 500)
    assert r.overflowed == [conn] and conn.closed
    assert r.hub.buffered_bytes == conn.queued_bytes == 0 and not conn.outbox
