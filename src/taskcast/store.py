"""The synchronous event store: one atomic append per event, and the reads tools need.

Workers, the emitter and the lost-worker sweep write through :class:`EventStore`;
the key layout and the decoding of what it stores are in :mod:`taskcast.keys`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import redis

from taskcast.events import KIND_TERMINAL, Event
from taskcast.keys import (
    Keys,
    LiveEvent,
    decode_history,
    decode_live,
    decode_snapshot,
    history_start,
    lex_range,
    matches,
    matching_types,
    merge_newest,
    score,
    type_prefix,
)
from taskcast.members import (
    AGGREGATE_LUA,
    MEMBER_ARGS,
    MEMBER_KEYS,
    member_args,
    member_change,
)
from taskcast.redis_clients import store_client

if TYPE_CHECKING:
    from taskcast.worker_config import Settings

# What the append returns for a ``queued`` that came after its run began (see below).
LATE_QUEUED = -2

# Unfinished operations whose last write a store object remembers (a worker runs a
# few at a time; the bound only matters for a long-lived emitter that never ends some).
WRITTEN_LIMIT = 10_000

# KEYS: 1 snapshot hash, 2 history stream, 3 live stream, 4 index zset, 5 active zset,
#       6 types zset, 7 types:seen zset, 8 (optional) the once-only marker of an event
#       that may be appended twice
# ARGV: 1 id, 2 prefix, 3 suffix, 4 history maxlen, 5 ttl (s), 6 live maxlen,
#       7 score (µs, an integer), 8 kind (n/t/r/q, see taskcast.events), 9 random
#       characters for a new epoch, 10 the epoch this writer last stored in ('' if
#       none), 11 the seq it got there, 12 the operation type ('' if the event has
#       none), 13 the same as JSON, 14 '1' for a milestone (any event but progress
#       and log), 15 the writer's id ('' for none), 16 the writer's number for this
#       event, 17 number of overwrite pairs, 18 the partition's type index prefix
#       (Keys.type_index_prefix), then the overwrite pairs, then the pairs to set only
#       when the snapshot is new.
# Returns {seq, epoch}: seq 0 when the operation already ended, -1 when the marker
# says the event was stored before, or for a ``queued`` of an operation still queued,
# -2 for a ``queued`` that came after its run began (nothing stored in any of these
# cases).
#
# A publisher stores ``queued`` once the broker has the message (a publish that
# raises must leave nothing waiting), so the worker's ``running``, even its end, can
# come first. A run that begins with no ``queued`` before it (the operation is new,
# or had ended) marks the snapshot (``_aq``); the next ``queued`` is then that run's,
# late: it is not stored (-2; it would reopen an ended run or put a running one back
# to waiting) and clears the mark, but still tells a group its size (members.py).
#
# A writer's numbers for one operation only grow, and the snapshot keeps the last one
# it stored (``_w:<writer>``): an append retried after its reply was lost (a timeout,
# a cut link) finds its number there and is not stored again.
#
# The epoch (PROTOCOL.md "History epochs") is chosen with the first event the store
# holds for an operation: after Redis lost everything, the next event starts a new
# one. When this writer already got a higher seq in the same epoch than the store
# now holds (Redis came back from an older snapshot), those seqs would be handed
# out again for other events, so the old history is dropped and a new epoch begins.
# An epoch is Redis's clock in microseconds (13 hex digits) and random characters:
# clients only compare epochs for equality, but a bridge can tell a newer one from
# a stale event still in its tail.
#
# Cost (bench/store_cost.py): one HMGET reads all the state, one HSET writes the
# snapshot. The sorted sets and the TTLs are written for milestones and at most
# once a second otherwise (``_indexed``), not for every progress event: a small
# sorted set is a listpack, where ZADD scans and rewrites it. So listings order
# operations by their last update to within a second, and keys expire the TTL
# after the last event to within a second. Scores are integer microseconds;
# expired members are pruned on one append in 64 (readers count by score, so
# stale members never show).
#
# An operation with a type is also in its type's index (``type:NAME``, written with
# the main index, and pruned with it of the operations of that type), and the type's
# name in ``types`` (for prefix lookups) and ``types:seen``. The index's name comes
# from the snapshot's ``_type``, which only the script knows for most events; it is
# built from ARGV[18], so it carries the partition's hash tag like KEYS[4] and a
# Cluster node always holds it with the declared keys. A type whose last index write
# is older than the TTL has only expired operations left: the pruning append drops
# its index and its names (at most 64 such types per append).
APPEND_SCRIPT = """
local kind = ARGV[8]
local writer = ARGV[15] ~= '' and '_w:' .. ARGV[15] or '_indexed'
local state = redis.call('HMGET', KEYS[1], 'epoch', 'last_seq', 'terminal', '_type', '_indexed',
  writer, '_aq')
local epoch, last, terminal, optype = state[1], tonumber(state[2] or '0'), state[3], state[4]
local now = tonumber(ARGV[7])
if ARGV[15] ~= '' and epoch and tonumber(state[6] or '0') >= tonumber(ARGV[16]) then
  return {last, epoch}
end
local created = not state[2]
local renewed = not epoch
if epoch and epoch == ARGV[10] and last < tonumber(ARGV[11]) then
  redis.call('DEL', KEYS[2])
  last, terminal, renewed = 0, '0', true
end
if renewed then
  local clock = redis.call('TIME')
  epoch = string.format('"%013x%s"', clock[1] * 1000000 + clock[2], ARGV[9])
elseif kind == 'q' and state[7] then
  redis.call('HDEL', KEYS[1], '_aq')
  return {-2, epoch}
elseif kind == 'q' and terminal ~= '1' and redis.call('HGET', KEYS[1], 'status') == '"queued"' then
  return {-1, epoch}
elseif kind ~= 'r' and kind ~= 'q' and terminal == '1' then
  return {0, epoch}
end
if KEYS[8] and not redis.call('SET', KEYS[8], '1', 'NX', 'EX', 600) then
  return {-1, epoch}
end
local seq = last + 1
local event = ARGV[2] .. seq .. ',"epoch":' .. epoch .. ARGV[3]
local fields = {'last_seq', seq, 'terminal', kind == 't' and '1' or '0'}
if kind == 'r' and (created or terminal == '1') then
  fields[#fields + 1] = '_aq'
  fields[#fields + 1] = '1'
end
if renewed then
  fields[#fields + 1] = 'epoch'
  fields[#fields + 1] = epoch
end
if ARGV[15] ~= '' then
  fields[#fields + 1] = writer
  fields[#fields + 1] = ARGV[16]
end
local first_absent = 19 + 2 * tonumber(ARGV[17])
for i = 19, first_absent - 1 do fields[#fields + 1] = ARGV[i] end
if created then
  for i = first_absent, #ARGV do fields[#fields + 1] = ARGV[i] end
end
local typed = not optype and ARGV[12] ~= ''
if typed then
  optype = ARGV[12]
  fields[#fields + 1] = '_type'
  fields[#fields + 1] = optype
  fields[#fields + 1] = 'operation_type'
  fields[#fields + 1] = ARGV[13]
end
local index = created or renewed or typed or kind ~= 'n' or ARGV[14] == '1'
  or now - tonumber(state[5] or '0') >= 1000000
if index then
  fields[#fields + 1] = '_indexed'
  fields[#fields + 1] = ARGV[7]
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], seq .. '-0', 'e', event)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'o', ARGV[1], 's', seq,
  't', optype or '', 'p', epoch, 'e', event)
if index then
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
  redis.call('ZADD', KEYS[4], ARGV[7], ARGV[1])
  if kind == 't' then
    redis.call('ZREM', KEYS[5], ARGV[1])
  else
    redis.call('ZADD', KEYS[5], ARGV[7], ARGV[1])
  end
  if optype then
    redis.call('ZADD', ARGV[18] .. optype, ARGV[7], ARGV[1])
    if redis.call('ZADD', KEYS[7], ARGV[7], optype) == 1 then
      redis.call('ZADD', KEYS[6], 0, optype)
    end
  end
end
if seq % 64 == 1 then
  local expired = '(' .. string.format('%d', now - 1000000 * tonumber(ARGV[5]))
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', expired)
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', expired)
  if optype then
    redis.call('ZREMRANGEBYSCORE', ARGV[18] .. optype, '-inf', expired)
  end
  for _, name in ipairs(redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', expired, 'LIMIT', 0, 64)) do
    redis.call('DEL', ARGV[18] .. name)
    redis.call('ZREM', KEYS[6], name)
    redis.call('ZREM', KEYS[7], name)
  end
end
return {seq, epoch}
"""

# The append as a Lua function (its body shadows KEYS and ARGV), for the scripts that
# append more than one operation's event.
_APPEND_FUNCTION = f"local function append(KEYS, ARGV)\n{APPEND_SCRIPT}end\n{AGGREGATE_LUA}"

# A group member's event and its parent's update in one atomic call, when both
# operations' keys are on one server (always, except in a Cluster): KEYS are the
# member part's (taskcast.members) then the append's; ARGV likewise.
MEMBER_APPEND_SCRIPT = f"""{_APPEND_FUNCTION}
local K = {{unpack(KEYS, {MEMBER_KEYS + 1})}}
local M = {{unpack(ARGV, 1, {MEMBER_ARGS})}}
local result = append(K, {{unpack(ARGV, {MEMBER_ARGS + 1})}})
if result[1] > 0 or result[1] == {LATE_QUEUED} then
  M[3] = math.max(result[1], 0)
  aggregate(KEYS, M)
end
return result
"""

# The parent's update alone, after the member's append (Redis Cluster, where the
# parent's keys may sit in another slot): the member seq makes it idempotent.
AGGREGATE_SCRIPT = f"{_APPEND_FUNCTION}aggregate(KEYS, ARGV)\n"

class EventStore:
    """Synchronous access to the store, for workers, the emitter and tools.

    ``client`` must not decode responses: events stay bytes end to end.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "taskcast:",
        history_maxlen: int = 1000,
        history_ttl: int = 86400,
        live_maxlen: int = 100_000,
        partitions: int = 1,
    ) -> None:
        self.client = client
        self.keys = Keys(prefix, partitions)
        self.history_maxlen = history_maxlen
        self.history_ttl = history_ttl
        self.live_maxlen = live_maxlen
        self._append = client.register_script(APPEND_SCRIPT)
        self._member_append = client.register_script(MEMBER_APPEND_SCRIPT)
        self._aggregate = client.register_script(AGGREGATE_SCRIPT)
        # A Cluster client routes a script by its keys' slot: a member's keys and its
        # parent's are in one slot only when they share a partition.
        self._cluster = not isinstance(client, redis.Redis)
        # The (epoch, seq) this store object last got per unfinished operation: what
        # lets the script notice a store that went back in time (see APPEND_SCRIPT).
        self._written: dict[str, tuple[bytes, int]] = {}
        self.new_writer()

    def new_writer(self) -> None:
        """Take a new writer id (events' ``token`` count per writer): a forked child must,
        or it would share its parent's numbers."""
        self.writer = os.urandom(4).hex()

    @classmethod
    def for_settings(cls, client: redis.Redis, settings: Settings) -> EventStore:
        """A store with the prefix, bounds and partitions of ``settings``."""
        return cls(
            client,
            prefix=settings.prefix,
            history_maxlen=settings.history_maxlen,
            history_ttl=settings.history_ttl,
            live_maxlen=settings.live_maxlen,
            partitions=settings.live_partitions,
        )

    @classmethod
    def connect(cls, settings: Settings, **options: Any) -> EventStore:
        """A store on a new client for ``settings`` (``options``: redis-py client options)."""
        return cls.for_settings(store_client(settings, **options), settings)

    def append(self, event: Event, once: str | None = None) -> int:
        """Store ``event`` atomically; return its seq, or 0 if the operation had ended.

        ``once`` names an event that several writers may append (each bridge
        ingesting Celery's event stream receives every event): the first
        append stores it, later ones within ten minutes return -1.
        """
        keys, args = self._script_input(event, once)
        change = member_change(event)
        if change is not None and self._split(event):
            seq, epoch = self._append(keys=keys, args=args)
            if int(seq) > 0 or int(seq) == LATE_QUEUED:
                self._aggregate(*self._member_input(event, change, max(int(seq), 0)))
        elif change is not None:
            member_keys, member_argv = self._member_input(event, change, 0)
            seq, epoch = self._member_append(keys=member_keys + keys, args=member_argv + args)
        else:
            seq, epoch = self._append(keys=keys, args=args)
        self._remember(event, int(seq), epoch)
        return int(seq)

    def _split(self, event: Event) -> bool:
        """Whether the parent's update needs a call of its own (another Cluster slot)."""
        parent = event.parent
        return (
            self._cluster
            and parent is not None
            and self.keys.partition(parent.operation_id) != self.keys.partition(event.operation_id)
        )

    def _member_input(
        self, event: Event, change: tuple[str, str, str], seq: int
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of the member part of an append (see :mod:`taskcast.members`)."""
        assert event.parent is not None
        parent = event.parent.operation_id
        keys = [
            self.keys.snapshot(parent),
            self.keys.history(parent),
            self.keys.live(parent),
            self.keys.index(parent),
            self.keys.active(parent),
            self.keys.members(parent),
            self.keys.types(parent),
            self.keys.types_seen(parent),
        ]
        bounds = (self.history_maxlen, self.history_ttl, self.live_maxlen)
        nonce, typed = os.urandom(3).hex(), self.keys.type_index_prefix(parent)
        return keys, member_args(event, change, seq, bounds, nonce, typed)

    def append_many(self, events: list[Event]) -> list[int]:
        """Store ``events`` in order in one round trip (a pipeline); their seqs.

        Group members take :meth:`append` one by one (their parents move too)."""
        if any(member_change(event) is not None for event in events):
            return [self.append(event) for event in events]
        pipe = self.client.pipeline(transaction=False)
        for event in events:
            keys, args = self._script_input(event, None)
            self._append(keys=keys, args=args, client=pipe)
        seqs = []
        for event, (seq, epoch) in zip(events, pipe.execute(), strict=True):
            self._remember(event, int(seq), epoch)
            seqs.append(int(seq))
        return seqs

    def _script_input(self, event: Event, once: str | None) -> tuple[list[str], list[Any]]:
        prefix, suffix = event.encode()
        overwrite, if_absent = event.snapshot_changes()
        typed = if_absent.pop("operation_type", b"")
        known_epoch, known_seq = self._written.get(event.operation_id, (b"", 0))
        args: list[Any] = [
            event.operation_id,
            prefix,
            suffix,
            self.history_maxlen,
            self.history_ttl,
            self.live_maxlen,
            score(event.timestamp),
            event.kind,
            os.urandom(3).hex(),
            known_epoch,
            known_seq,
            event.operation_type or "",
            typed,
            "0" if event.event_type in ("progress", "log") else "1",
            self.writer if event.token else "",
            event.token,
            len(overwrite),
            self.keys.type_index_prefix(event.operation_id),
        ]
        for mapping in (overwrite, if_absent):
            for name, value in mapping.items():
                args.extend((name, value))
        op = event.operation_id
        keys = [
            self.keys.snapshot(op),
            self.keys.history(op),
            self.keys.live(op),
            self.keys.index(op),
            self.keys.active(op),
            self.keys.types(op),
            self.keys.types_seen(op),
        ]
        if once is not None:
            keys.append(self.keys.once(event.operation_id, once))
        return keys, args

    def _remember(self, event: Event, seq: int, epoch: bytes) -> None:
        """Keep the ledger of unfinished operations this store object writes, bounded."""
        if seq <= 0 or event.kind == KIND_TERMINAL:
            self._written.pop(event.operation_id, None)
            return
        self._written[event.operation_id] = (epoch, seq)
        if len(self._written) > WRITTEN_LIMIT:
            del self._written[next(iter(self._written))]

    def snapshot(self, operation_id: str) -> dict[str, Any] | None:
        """The operation's snapshot, or None if the store has no such operation."""
        return decode_snapshot(self.client.hgetall(self.keys.snapshot(operation_id)))

    def history(self, operation_id: str, since: int = 0) -> list[tuple[int, bytes]]:
        """Stored events with ``seq > since``, oldest first, as ``(seq, JSON)``."""
        entries = self.client.xrange(self.keys.history(operation_id), min=history_start(since))
        return decode_history(entries)

    def list_operations(
        self,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
        operation_type: str | None = None,
    ) -> list[dict[str, Any]]:
        """Snapshots, most recently updated first, filtered by ``taskcast.keys.matches``;
        the ``offset`` newest operations of the listing are skipped (before the status
        filter). A type filter lists from its types' indexes only, never the whole index."""
        listing = self._listing(status, operation_type)
        found: list[dict[str, Any]] = []
        start, page = offset, max(limit, 100)
        while len(found) < limit:
            ids = self._ids(listing, start, page)
            if not ids:
                break
            pipe = self.client.pipeline(transaction=False)
            for op_id in ids:
                pipe.hgetall(self.keys.snapshot(op_id.decode()))
            for raw in pipe.execute():
                snapshot = decode_snapshot(raw)
                if snapshot is not None and matches(snapshot, status, operation_type):
                    found.append(snapshot)
            start += page
        return found[:limit]

    def _listing(self, status: str | None, operation_type: str | None) -> list[str]:
        """The sorted sets a listing walks (see ``taskcast.keys.matching_types``)."""
        if operation_type is None:
            return self.keys.listing(status)
        prefix = type_prefix(operation_type)
        if prefix is None:
            return matching_types(self.keys, operation_type)
        low, high = lex_range(prefix)
        found = [self.client.zrangebylex(key, low, high) for key in self.keys.type_sets]
        return matching_types(self.keys, operation_type, found)

    def _ids(self, keys: list[str], start: int, count: int) -> list[bytes]:
        """Ranks ``start..start+count-1`` of the listing over every partition, newest first."""
        if len(keys) == 1:
            return list(self.client.zrevrange(keys[0], start, start + count - 1))
        pages = [self.client.zrevrange(key, 0, start + count - 1, withscores=True) for key in keys]
        return merge_newest(pages, start, count)

    def live_tail(self, last_id: bytes | str = b"0", count: int = 1000) -> list[LiveEvent]:
        """Live-stream entries after ``last_id`` in every partition (tests and tools)."""
        events: list[LiveEvent] = []
        for key in self.keys.lives:
            reply = self.client.xread({key: last_id}, count=count)
            events.extend(decode_live(reply[0][1]) if reply else [])
        return events
