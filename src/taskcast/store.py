"""The synchronous event store: one atomic append per event, and the reads tools need.

Workers, the emitter and the lost-worker sweep write through :class:`EventStore`;
the key layout and the decoding of what it stores are in :mod:`taskcast.keys`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis

from taskcast.events import Event
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

# KEYS: 1 snapshot hash, 2 history stream, 3 live stream, 4 index zset, 5 active zset,
#       6 (optional) the once-only marker of an event that may be appended twice
# ARGV: 1 id, 2 prefix, 3 suffix, 4 history maxlen, 5 ttl, 6 live maxlen,
#       7 score, 8 kind (n/t/r), 9 number of overwrite pairs, then the
#       overwrite pairs, then the set-if-absent pairs.
# Returns the new seq, 0 when the operation already ended, -1 when the marker
# says the event was stored before (nothing stored in either case).
APPEND_SCRIPT = """
local kind = ARGV[8]
if kind ~= 'r' and redis.call('HGET', KEYS[1], 'terminal') == '1' then
  return 0
end
if KEYS[6] and not redis.call('SET', KEYS[6], '1', 'NX', 'EX', 600) then
  return -1
end
local seq = redis.call('HINCRBY', KEYS[1], 'last_seq', 1)
local event = ARGV[2] .. seq .. ARGV[3]
local first_absent = 10 + 2 * tonumber(ARGV[9])
local overwrite = {'terminal', kind == 't' and '1' or '0'}
for i = 10, first_absent - 1 do overwrite[#overwrite + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(overwrite))
for i = first_absent, #ARGV, 2 do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], seq .. '-0', 'e', event)
local optype = redis.call('HGET', KEYS[1], 'operation_type')
optype = optype and cjson.decode(optype) or ''
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'o', ARGV[1], 's', seq, 't', optype,
  'e', event)
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
return seq
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
        args: list[Any] = [
            event.operation_id,
            prefix,
            suffix,
            self.history_maxlen,
            self.history_ttl,
            self.live_maxlen,
            event.timestamp,
            event.kind,
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
        return int(self._append(keys=keys, args=args))

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
