"""The subscription hub: which connection gets which frame, in which order, and who is too slow.

Plain Python with no sockets and no Redis, in the spirit of websockets' sans-I/O
protocol: the server adapter tells the hub about connections, subscriptions and
batches of live events; the hub fills each connection's outbox and calls the
adapter back when an outbox needs draining, when a connection must be closed
for falling behind, or when a subscription must re-read history to close a gap.
Keeping every delivery decision here lets the tests check ordering, dedup and
back-pressure rules exhaustively without timing games.

Delivery per (connection, operation) follows PROTOCOL.md: every seq once, in
order. A subscription starts *pending*: live events for it are buffered while
the adapter reads the snapshot and history; :meth:`Hub.finish_subscribe` then
queues the reply, the history, and the buffered events the history did not
already cover.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from taskcast.keys import LiveEvent

# What a frame in an outbox is, for the counters: a command reply, an event read
# from history during a subscribe, or an event from the live tail.
REPLY = 0
REPLAYED = 1
LIVE = 2

# What a queued frame holds beyond its payload's length: the bytes object's header
# and allocator rounding, the Frame with its slots, and its outbox (or pending) slot,
# measured with tracemalloc (tests/test_hub.py checks it still covers them). Charging
# only the payload let a client owed 100-byte replies make the bridge hold 40 times
# its budget.
FRAME_OVERHEAD = 160


def stored_at(stream_id: bytes) -> float:
    """Seconds since the epoch when Redis stored a live-stream entry (from its id).

    The delivery-lag metric uses it, so the bridge never decodes event JSON.
    """
    return int(stream_id.split(b"-", 1)[0]) / 1000.0


class Frame:
    """One outgoing WebSocket text frame; a live event's frame is shared by all recipients.

    ``wire`` caches the frame as it goes on the wire (header and payload), which
    the adapter builds once for all the recipients that need no per-connection
    encoding: server frames are not masked. ``sse`` caches it likewise as a
    Server-Sent Events message, with whether the event is terminal. ``lag`` is
    the delivery lag the adapter measured when it first sent the frame, with its
    histogram slot: a fan-out sends it to every subscriber within the same loop
    turn, so one measurement stands for all of them.
    """

    __slots__ = ("payload", "cost", "kind", "stored_at", "wire", "sse", "lag")

    def __init__(self, payload: bytes, kind: int = REPLY, stored_at: float = 0.0) -> None:
        self.payload = payload
        # What holding it costs one connection: charged to its budget and the bridge's.
        self.cost = len(payload) + FRAME_OVERHEAD
        self.kind = kind
        self.stored_at = stored_at
        self.wire: bytes | None = None
        self.sse: tuple[bytes, bool] | None = None
        self.lag: tuple[int, float] | None = None


class Subscription:
    """One connection's interest in one operation.

    ``pending`` is a list of ``(seq, epoch, frame)`` buffered while history is
    being read, or None once live; ``since`` is what the reader was asked for.
    ``epoch`` is the history epoch the client is being served ("" until known);
    ``renew`` says the epoch changed under the client, whose next reply must be
    an unasked ``subscribed`` with ``recovered: false`` (PROTOCOL.md).
    """

    __slots__ = ("operation_id", "since", "last_seq", "pending", "epoch", "renew")

    def __init__(self, operation_id: str, since: int) -> None:
        self.operation_id = operation_id
        self.since = since
        self.last_seq = since
        self.pending: list[tuple[int, str, Frame]] | None = []
        self.epoch = ""
        self.renew = False


class Connection:
    """Hub-side state of one client; adapters subclass it to attach their socket.

    Slots keep an idle connection to a few hundred bytes.
    """

    __slots__ = ("client_id", "outbox", "queued_bytes", "subscriptions", "closed", "__weakref__")

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.outbox: deque[Frame] = deque()
        # Bytes held for this client and not yet handed to its socket (frames at their
        # cost), including events buffered by pending subscriptions.
        self.queued_bytes = 0
        self.subscriptions: dict[str, Subscription] = {}
        self.closed = False


@dataclass
class HubStats:
    """Counters since the hub started; the metrics and ``get_stats`` read them."""

    events_in: int = 0
    events_delivered: int = 0
    slow_consumer_disconnects: int = 0
    connections_total: int = 0
    budget_evictions: int = 0


class Hub:
    """Subscriptions, monitors and outboxes of every connection of one bridge.

    Callbacks (all called synchronously):

    - ``on_ready(conn)``: the outbox went from empty to non-empty; drain it
      with :meth:`take`.
    - ``on_overflow(conn)``: a live event came while the client still had more
      than ``send_buffer_bytes`` unsent, or the bridge as a whole held more than
      ``max_buffered_bytes`` and this client owed the most; its outbox is dropped
      and it must be closed (4008).
    - ``on_resync(conn, subscription)``: a live event skipped a seq for this
      subscription, or began a new epoch (``subscription.renew``); read the
      snapshot and the history after ``subscription.since`` and call
      :meth:`finish_subscribe`, with a fresh ``subscribed`` reply if renewing.

    Epochs are Redis-clock strings of one width (see ``taskcast.store``), so a
    greater one is newer: an event of an older epoch is stale (it was in the
    tail before Redis lost the history) and is dropped; one of a newer epoch
    starts the subscription over.
    """

    def __init__(
        self,
        *,
        send_buffer_bytes: int,
        max_subscriptions: int,
        on_ready: Callable[[Connection], None],
        on_overflow: Callable[[Connection], None],
        on_resync: Callable[[Connection, Subscription], None],
        max_buffered_bytes: int = 0,
    ) -> None:
        """``max_buffered_bytes``: what all connections together may be owed (0: no cap)."""
        self.send_buffer_bytes = send_buffer_bytes
        self.max_buffered_bytes = max_buffered_bytes
        # Bytes held for every connection together: the sum of their queued_bytes and
        # what is reserved for HTTP bodies.
        self.buffered_bytes = 0
        self.max_subscriptions = max_subscriptions
        self._on_ready = on_ready
        self._on_overflow = on_overflow
        self._on_resync = on_resync
        self.connections: dict[str, Connection] = {}
        self._subscribers: dict[str, dict[Connection, Subscription]] = {}
        self._monitors: dict[Connection, str | None] = {}
        self._subscription_count = 0
        self._overflowed: list[Connection] = []
        self.stats = HubStats()

    # -- connections -------------------------------------------------------

    def connect(self, conn: Connection) -> Connection:
        """Register a new connection (its ``client_id`` must be unique)."""
        self.connections[conn.client_id] = conn
        self.stats.connections_total += 1
        return conn

    def disconnect(self, conn: Connection) -> None:
        """Forget everything about ``conn`` at once; safe to call twice."""
        self._release(conn)
        self.connections.pop(conn.client_id, None)

    def _release(self, conn: Connection) -> None:
        """Drop subscriptions, monitor mode and queued frames of a closed connection."""
        conn.closed = True
        for operation_id in list(conn.subscriptions):
            self.unsubscribe(conn, operation_id)
        self._monitors.pop(conn, None)
        conn.outbox.clear()
        self._charge(conn, -conn.queued_bytes)

    # -- outbox ------------------------------------------------------------

    def send(self, conn: Connection, payload: bytes) -> None:
        """Queue a command reply (or any non-event frame) for ``conn``.

        Replies never count as falling behind: the adapter instead stops
        reading a client's commands while it is over its send budget. They do
        count towards the bridge's cap, which may condemn whoever owes the most.
        """
        self._enqueue(conn, Frame(payload))
        self._flush_overflowed()

    def take(self, conn: Connection) -> Frame | None:
        """The next frame to write to ``conn``'s socket, or None when drained."""
        if not conn.outbox:
            return None
        frame = conn.outbox.popleft()
        self._charge(conn, -frame.cost)
        if frame.kind != REPLY:
            self.stats.events_delivered += 1
        return frame

    def over_budget(self, conn: Connection) -> bool:
        """Whether ``conn`` has more unsent data than ``send_buffer_bytes``."""
        return conn.queued_bytes > self.send_buffer_bytes

    def reserve(self, size: int) -> bool:
        """Count ``size`` bytes held outside the outboxes (an HTTP body being sent)
        against the bridge's cap; False, counting nothing, if they do not fit."""
        if self.max_buffered_bytes and self.buffered_bytes + size > self.max_buffered_bytes:
            return False
        self.buffered_bytes += size
        return True

    def release(self, size: int) -> None:
        """Those bytes are no longer held."""
        self.buffered_bytes -= size

    def _charge(self, conn: Connection, cost: int) -> None:
        """Add ``cost`` (negative: released) to what ``conn`` and the bridge hold."""
        conn.queued_bytes += cost
        self.buffered_bytes += cost
        if cost > 0 and self.max_buffered_bytes and self.buffered_bytes > self.max_buffered_bytes:
            self._shed()

    def _shed(self) -> None:
        """Condemn the connections owed the most until the bridge is back under its cap.

        A client that keeps up is owed next to nothing, so it is never chosen while one
        that stopped reading holds anything; freeing down to seven eighths of the cap
        keeps one greedy client from making every later frame scan the connections.
        """
        target = self.max_buffered_bytes - self.max_buffered_bytes // 8
        owed = sorted(
            (conn for conn in self.connections.values() if not conn.closed and conn.queued_bytes),
            key=lambda conn: conn.queued_bytes,
            reverse=True,
        )
        held = self.buffered_bytes
        for conn in owed:
            if held <= target:
                break
            held -= conn.queued_bytes
            self.stats.budget_evictions += 1
            self._condemn(conn)

    def _enqueue(self, conn: Connection, frame: Frame, charged: bool = False) -> None:
        """Append to the outbox, or condemn a client still over budget when a live frame comes.

        Checking the backlog *before* adding lets one read batch overshoot the
        budget: the writer cannot run in the middle of a batch, so only data
        left unsent after the previous batch had its chance proves a client slow.
        """
        if conn.closed:
            return
        if not charged and frame.kind == LIVE and conn.queued_bytes > self.send_buffer_bytes:
            self._condemn(conn)
            return
        was_empty = not conn.outbox
        conn.outbox.append(frame)
        if not charged:
            self._charge(conn, frame.cost)
        if was_empty and not conn.closed:
            self._on_ready(conn)

    def _condemn(self, conn: Connection) -> None:
        """Mark a slow consumer closed now; the rest happens after the current fan-out loop.

        Releasing its subscriptions here would mutate the dicts being iterated.
        """
        conn.closed = True
        conn.outbox.clear()
        self.stats.slow_consumer_disconnects += 1
        self._overflowed.append(conn)

    def evict(self, conn: Connection) -> None:
        """Drop a client that has owed replies for too long: as a slow consumer (4008)."""
        if not conn.closed:
            self._condemn(conn)
        self._flush_overflowed()

    def _flush_overflowed(self) -> None:
        while self._overflowed:
            conn = self._overflowed.pop()
            self._release(conn)
            self._on_overflow(conn)

    # -- subscriptions -----------------------------------------------------

    def begin_subscribe(
        self, conn: Connection, operation_id: str, since: int
    ) -> Subscription | None:
        """Start buffering live events of ``operation_id`` for ``conn``.

        Returns None when the connection already has ``max_subscriptions``
        other subscriptions. Subscribing again to the same id starts over.
        """
        if operation_id in conn.subscriptions:
            self.unsubscribe(conn, operation_id)
        elif len(conn.subscriptions) >= self.max_subscriptions:
            return None
        sub = Subscription(operation_id, since)
        conn.subscriptions[operation_id] = sub
        self._subscribers.setdefault(operation_id, {})[conn] = sub
        self._subscription_count += 1
        return sub

    def finish_subscribe(
        self,
        conn: Connection,
        sub: Subscription,
        reply: bytes | None,
        history: Iterable[tuple[int, bytes]],
        stored_last_seq: int,
        epoch: str = "",
    ) -> None:
        """Queue ``reply``, then ``history`` (events after ``sub.since``), then buffered events.

        ``stored_last_seq`` and ``epoch`` come from the snapshot read with the
        history. A client claiming a ``since`` beyond it (or any ``since`` for
        an unknown operation) gets events from there on, so that an operation
        that starts later is not mistaken for one already seen. Buffered events
        of an older epoch are dropped; one of a newer epoch means the history
        just read is already stale, and the subscription starts over.
        Does nothing if the subscription was replaced or dropped meanwhile.
        """
        if conn.closed or conn.subscriptions.get(sub.operation_id) is not sub:
            return
        pending = sub.pending or []
        sub.pending = None
        sub.renew = False
        sub.epoch = max([epoch, *(item[1] for item in pending)])
        sub.last_seq = min(sub.since, stored_last_seq)
        if sub.epoch != epoch and epoch:
            self._charge(conn, -sum(frame.cost for _, _, frame in pending))
            self._start_over(conn, sub)
            self._on_resync(conn, sub)
            return
        if reply is not None:
            self._enqueue(conn, Frame(reply))
        for seq, payload in history:
            if seq > sub.last_seq:
                self._enqueue(conn, Frame(payload, REPLAYED))
                sub.last_seq = seq
        # Buffered frames were charged when buffered; they finish the replay
        # and so never count as falling behind.
        for seq, event_epoch, frame in sorted(pending, key=lambda item: item[0]):
            if seq > sub.last_seq and event_epoch in (sub.epoch, ""):
                self._enqueue(conn, frame, charged=True)
                sub.last_seq = seq
            else:
                self._charge(conn, -frame.cost)
        self._flush_overflowed()

    def abort_subscribe(self, conn: Connection, sub: Subscription) -> None:
        """Drop a subscription whose history could not be read."""
        if conn.subscriptions.get(sub.operation_id) is sub:
            self.unsubscribe(conn, sub.operation_id)

    def unsubscribe(self, conn: Connection, operation_id: str) -> bool:
        """Stop sending ``operation_id`` to ``conn``; False if it was not subscribed."""
        sub = conn.subscriptions.pop(operation_id, None)
        if sub is None:
            return False
        self._charge(conn, -sum(frame.cost for _, _, frame in sub.pending or ()))
        subscribers = self._subscribers.get(operation_id)
        if subscribers is not None:
            subscribers.pop(conn, None)
            if not subscribers:
                del self._subscribers[operation_id]
        self._subscription_count -= 1
        return True

    def subscribe_all(self, conn: Connection, operation_type: str | None = None) -> None:
        """Monitor mode: every live event (of one operation type, if given)."""
        if not conn.closed:
            self._monitors[conn] = operation_type

    def unsubscribe_all(self, conn: Connection) -> bool:
        """Leave monitor mode; False if the connection was not monitoring."""
        return self._monitors.pop(conn, False) is not False

    def is_monitoring(self, conn: Connection) -> bool:
        return conn in self._monitors

    # -- live events ---------------------------------------------------------

    def publish(self, events: Iterable[LiveEvent]) -> None:
        """Route a batch from the live tail to subscribers and monitors.

        A connection subscribed to an operation gets its events through the
        subscription only (seq-checked), never a second time as a monitor.
        """
        resyncs: list[tuple[Connection, Subscription]] = []
        for event in events:
            self.stats.events_in += 1
            frame = Frame(event.payload, LIVE, stored_at(event.stream_id))
            subscribers = self._subscribers.get(event.operation_id)
            if subscribers:
                for conn, sub in subscribers.items():
                    if self._route(conn, sub, event.seq, event.epoch, frame):
                        resyncs.append((conn, sub))
            for conn, wanted in self._monitors.items():
                if (wanted is None or wanted == event.operation_type) and (
                    event.operation_id not in conn.subscriptions
                ):
                    self._enqueue(conn, frame)
            self._flush_overflowed()
        for conn, sub in resyncs:
            if not conn.closed and conn.subscriptions.get(sub.operation_id) is sub:
                self._on_resync(conn, sub)

    def _route(
        self, conn: Connection, sub: Subscription, seq: int, epoch: str, frame: Frame
    ) -> bool:
        """Deliver, buffer or drop one event for one subscription; True if history must be read."""
        if conn.closed:
            return False
        if sub.pending is not None:
            self._buffer(conn, sub, seq, epoch, frame)
            return False
        if epoch and sub.epoch and epoch != sub.epoch:
            if epoch < sub.epoch:
                return False
            # Seqs started over in a new epoch: serve it from its beginning.
            self._start_over(conn, sub)
            self._buffer(conn, sub, seq, epoch, frame)
            return True
        if epoch and not sub.epoch:
            sub.epoch = epoch
        if seq <= sub.last_seq:
            return False
        if seq == sub.last_seq + 1:
            sub.last_seq = seq
            self._enqueue(conn, frame)
            return False
        # The tail skipped events (e.g. the live stream was trimmed while this
        # bridge lagged): buffer from here and have the history fill the hole.
        sub.since = sub.last_seq
        sub.pending = []
        self._buffer(conn, sub, seq, epoch, frame)
        return True

    @staticmethod
    def _start_over(conn: Connection, sub: Subscription) -> None:
        """Make ``sub`` wait for a whole new epoch's history, announced by a fresh reply."""
        sub.renew = True
        sub.since = 0
        sub.last_seq = 0
        sub.pending = []

    def _buffer(
        self, conn: Connection, sub: Subscription, seq: int, epoch: str, frame: Frame
    ) -> None:
        """Hold an event of a subscription whose history is being read (``pending`` is a list)."""
        if conn.queued_bytes > self.send_buffer_bytes:
            self._condemn(conn)
            return
        assert sub.pending is not None
        sub.pending.append((seq, epoch, frame))
        self._charge(conn, frame.cost)

    # -- introspection -------------------------------------------------------

    @property
    def subscription_count(self) -> int:
        return self._subscription_count

    @property
    def monitor_count(self) -> int:
        return len(self._monitors)

    def snapshot_stats(self) -> dict[str, int]:
        """The hub's part of ``get_stats`` and ``/metrics``."""
        return {
            "connected_clients": len(self.connections),
            "subscriptions": self._subscription_count,
            "monitors": len(self._monitors),
            "events_in": self.stats.events_in,
            "events_delivered": self.stats.events_delivered,
            "slow_consumer_disconnects": self.stats.slow_consumer_disconnects,
            "connections_total": self.stats.connections_total,
            "buffered_bytes": self.buffered_bytes,
            "budget_evictions": self.stats.budget_evictions,
        }
