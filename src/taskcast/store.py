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
    matches_status,
)

if TYPE_CHECKING:
    from taskcast.worker_config import Settings

# Unfinished operations whose last write a store object remembers (a worker runs a
# few at a time; the bound only matters for a long-lived emitter that never ends some).
WRITTEN_LIMIT = 10_000

# KEYS: 1 snapshot hash, 2 history stream, 3 live stream, 4 index zset, 5 active zset,
#       6 (optional) the once-only marker of an event that may be appended twice
# ARGV: 1 id, 2 prefix, 3 suffix, 4 history maxlen, 5 ttl, 6 live maxlen,
#       7 score, 8 kind (n/t/r), 9 random characters for a new epoch,
#       10 the epoch this writer last stored in ('' if none), 11 the seq it got there,
#       12 number of overwrite pairs, then the overwrite pairs, then the
#       set-if-absent pairs.
# Returns {seq, epoch}: seq 0 when the operation already ended, -1 when the marker
# says the event was stored before (nothing stored in either case).
#
# The epoch (PROTOCOL.md "History epochs") is chosen with the first event the store
# holds for an operation: after Redis lost everything, the next event starts a new
# one. When this writer already got a higher seq in the same epoch than the store
# now holds (Redis came back from an older snapshot), those seqs would be handed
# out again for other events, so the old history is dropped and a new epoch begins.
# An epoch is Redis's clock in microseconds (13 hex digits) and random characters:
# clients only compare epochs for equality, but a bridge can tell a newer one from
# a stale event still in its tail.
APPEND_SCRIPT = """
local kind = ARGV[8]
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch and epoch == ARGV[10]
    and tonumber(redis.call('HGET', KEYS[1], 'last_seq') or '0') < tonumber(ARGV[11]) then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'last_seq', 0, 'terminal', '0')
  epoch = false
end
if not epoch then
  local now = redis.call('TIME')
  epoch = string.format('"%013x%s"', now[1] * 1000000 + now[2], ARGV[9])
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
if kind ~= 'r' and redis.call('HGET', KEYS[1], 'terminal') == '1' then
  return {0, epoch}
end
if KEYS[6] and not redis.call('SET', KEYS[6], '1', 'NX', 'EX', 600) then
  return {-1, epoch}
end
local seq = redis.call('HINCRBY', KEYS[1], 'last_seq', 1)
local event = ARGV[2] .. seq .. ',"epoch":' .. epoch .. ARGV[3]
local first_absent = 13 + 2 * tonumber(ARGV[12])
local overwrite = {'terminal', kind == 't' and '1' or '0'}
for i = 13, first_absent - 1 do overwrite[#overwrite + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(overwrite))
for i = first_absent, #ARGV, 2 do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], seq .. '-0', 'e', event)
local optype = redis.call('HGET', KEYS[1], 'operation_type')
optype = optype and cjson.decode(optype) or ''
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'o', ARGV[1], 's', seq, 't', optype,
  'p', epoch, 'e', event)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
local expired = '(' .. (tonumber(ARGV[7]) - tonumber(ARGV[5]))
redis.call('ZADD', KEYS[4], ARGV[7], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', expired)
if kind == 't' then
  redis.call('ZREM', KEYS[5], ARGV[1])
else
  redis.call('ZADD', KEYS[5], ARGV[7], ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', expired)
end
return {seq, epoch}
"""

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
    ) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.history_maxlen = history_maxlen
        self.history_ttl = history_ttl
        self.live_maxlen = live_maxlen
        self._append = client.register_script(APPEND_SCRIPT)
        # The (epoch, seq) this store object last got per unfinished operation: what
        # lets the script notice a store that went back in time (see APPEND_SCRIPT).
        self._written: dict[str, tuple[bytes, int]] = {}

    @classmethod
    def for_settings(cls, client: redis.Redis, settings: Settings) -> EventStore:
        """A store with the prefix and bounds of ``settings``."""
        return cls(
            client,
            prefix=settings.prefix,
            history_maxlen=settings.history_maxlen,
            history_ttl=settings.history_ttl,
            live_maxlen=settings.live_maxlen,
        )

    def append(self, event: Event, once: str | None = None) -> int:
        """Store ``event`` atomically; return its seq, or 0 if the operation had ended.

        ``once`` names an event that several writers may append (each bridge
        ingesting Celery's event stream receives every event): the first
        append stores it, later ones within ten minutes return -1.
        """
        prefix, suffix = event.encode()
        overwrite, if_absent = event.snapshot_changes()
        known_epoch, known_seq = self._written.get(event.operation_id, (b"", 0))
        args: list[Any] = [
            event.operation_id,
            prefix,
            suffix,
            self.history_maxlen,
            self.history_ttl,
            self.live_maxlen,
            event.timestamp,
            event.kind,
            os.urandom(3).hex(),
            known_epoch,
            known_seq,
            len(overwrite),
        ]
        for mapping in (overwrite, if_absent):
            for name, value in mapping.items():
                args.extend((name, value))
        keys = [
            self.keys.snapshot(event.operation_id),
            self.keys.history(event.operation_id),
            self.keys.live,
            self.keys.index,
            self.keys.active,
        ]
        if once is not None:
            keys.append(self.keys.once(event.operation_id, once))
        seq, epoch = self._append(keys=keys, args=args)
        self._remember(event, int(seq), epoch)
        return int(seq)

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

    def list_operations(self, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Snapshots, most recently updated first, filtered by ``matches_status``."""
        found: list[dict[str, Any]] = []
        start, page = 0, max(limit, 100)
        while len(found) < limit:
            ids = self.client.zrevrange(self.keys.listing(status), start, start + page - 1)
            if not ids:
                break
            pipe = self.client.pipeline(transaction=False)
            for op_id in ids:
                pipe.hgetall(self.keys.snapshot(op_id.decode()))
            for raw in pipe.execute():
                snapshot = decode_snapshot(raw)
                if snapshot is not None and matches_status(snapshot, status):
                    found.append(snapshot)
            start += page
        return found[:limit]

    def live_tail(
        self, last_id: bytes | str = b"$", block_ms: int | None = None, count: int = 1000
    ) -> list[LiveEvent]:
        """Live-stream entries after ``last_id`` (``$``: only new ones)."""
        reply = self.client.xread({self.keys.live: last_id}, count=count, block=block_ms)
        return decode_live(reply[0][1]) if reply else []
