"""The bridge's asynchronous view of the event store: command reads and the one live tail.

A thin adapter over redis.asyncio (bytes, never decoded): key names and
decoding come from :mod:`taskcast.keys`, routing decisions from the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

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
    producer_totals,
    score,
    type_prefix,
)
from taskcast.members import CHORD_TYPE, GROUP_TYPE
from taskcast.redis_clients import async_store_client

log = logging.getLogger("taskcast.bridge")

# Errors meaning "the store is not reachable right now" (never a bug in the bridge).
STORE_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
# How long /readyz and /metrics wait for Redis: they answer within a second, frozen or not.
PROBE_TIMEOUT = 0.5


def _client(
    url: str, cluster: bool, socket_timeout: float, max_connections: int
) -> aioredis.Redis:
    """A bytes client that fails fast (one quick retry) so commands never hang on an outage.

    ``max_connections`` caps a single server's pool, which waits for a free
    connection. A Cluster client's per-node cap would instead fail every call once
    reached, and after a node restart the connections it has not released yet can
    keep it there: the Cluster client keeps its own (unbounded) default.
    """
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": min(socket_timeout, 2.0),
        "retry": Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1),
        "decode_responses": False,
    }
    if not cluster:
        options["max_connections"] = max_connections
        options["timeout"] = socket_timeout  # waiting for a free connection of the pool
    return async_store_client(url, cluster, **options)


class StoreReader:
    """Reads for commands and HTTP routes; raise one of ``STORE_ERRORS`` when Redis is down."""

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        history_ttl: int = 86400,
        max_connections: int = 32,
        partitions: int = 1,
        cluster: bool = False,
    ) -> None:
        self.keys = Keys(prefix, partitions)
        self.history_ttl = history_ttl
        self.cluster = cluster
        self.client = _client(redis_url, cluster, 3.0, max_connections)

    async def close(self) -> None:
        await self.client.aclose()

    async def ping(self, timeout: float) -> bool:
        """Whether Redis answers within ``timeout`` seconds (``/readyz``): a frozen Redis
        (a stopped process, a dead link) gives no error, and the socket timeout is
        longer than any probe waits."""
        try:
            return bool(await asyncio.wait_for(self.client.ping(), timeout))
        except STORE_ERRORS:
            return False

    async def snapshot_and_history(
        self, operation_id: str, since: int
    ) -> tuple[dict[str, Any] | None, list[tuple[int, bytes]]]:
        """The snapshot and the events after ``since``, read atomically in one round trip."""
        # A Cluster pipeline cannot be a transaction; the hub copes with history newer
        # than the snapshot (both keys are in one slot, read back to back).
        async with self.client.pipeline(transaction=not self.cluster) as pipe:
            pipe.hgetall(self.keys.snapshot(operation_id))
            pipe.xrange(self.keys.history(operation_id), min=history_start(since))
            raw, entries = await pipe.execute()
        return decode_snapshot(raw), decode_history(entries)

    async def operation(self, operation_id: str) -> dict[str, Any] | None:
        return decode_snapshot(await self.client.hgetall(self.keys.snapshot(operation_id)))

    async def parent_id(self, operation_id: str) -> str | None:
        """The snapshot's ``parent_id`` alone (access checks need no result or metadata)."""
        return await self._field(operation_id, "parent_id")

    async def is_group(self, operation_id: str) -> bool:
        """Whether the operation is a group or chord, whose members its token covers."""
        return await self._field(operation_id, "operation_type") in (GROUP_TYPE, CHORD_TYPE)

    async def _field(self, operation_id: str, name: str) -> str | None:
        """One string field of a snapshot (stored as JSON), None when absent or not a string."""
        raw = await self.client.hget(self.keys.snapshot(operation_id), name)
        value = orjson.loads(raw) if raw else None
        return value if isinstance(value, str) else None

    async def _snapshots(
        self, listing: list[str], start: int, stop: int
    ) -> list[dict[str, Any]] | None:
        """Snapshots of ranks ``start..stop`` of ``listing`` (newest first); None past its end."""
        ids = await self._ids(listing, start, stop - start + 1)
        if not ids:
            return None
        async with self.client.pipeline(transaction=False) as pipe:
            for op_id in ids:
                pipe.hgetall(self.keys.snapshot(op_id.decode()))
            raws = await pipe.execute()
        return [s for s in map(decode_snapshot, raws) if s is not None]

    async def operations(
        self, status: str | None, limit: int, offset: int = 0, operation_type: str | None = None
    ) -> list[dict[str, Any]]:
        """Snapshots, most recently updated first, filtered like ``EventStore.list_operations``."""
        listing = await self.listing(status, operation_type)
        found: list[dict[str, Any]] = []
        start, page = offset, max(limit, 100)
        while len(found) < limit:
            snapshots = await self._snapshots(listing, start, start + page - 1)
            if snapshots is None:
                break
            found.extend(s for s in snapshots if matches(s, status, operation_type))
            start += page
        return found[:limit]

    async def listing(self, status: str | None, operation_type: str | None) -> list[str]:
        """The sorted sets a listing walks, as ``EventStore._listing`` finds them."""
        if operation_type is None:
            return self.keys.listing(status)
        prefix = type_prefix(operation_type)
        if prefix is None:
            return matching_types(self.keys, operation_type)
        low, high = lex_range(prefix)
        async with self.client.pipeline(transaction=False) as pipe:
            for key in self.keys.type_sets:
                pipe.zrangebylex(key, low, high)
            found = await pipe.execute()
        return matching_types(self.keys, operation_type, found)

    async def producer_totals(self) -> dict[str, int]:
        """The counters every worker process's producer reported, summed (see keys)."""
        return producer_totals(await self.client.hgetall(self.keys.producers))

    async def _ids(self, keys: list[str], start: int, count: int) -> list[bytes]:
        """Ranks ``start..start+count-1`` over every partition, newest first (see the store)."""
        if len(keys) == 1:
            return list(await self.client.zrevrange(keys[0], start, start + count - 1))
        async with self.client.pipeline(transaction=False) as pipe:  # one round trip
            for key in keys:
                pipe.zrevrange(key, 0, start + count - 1, withscores=True)
            pages = await pipe.execute()
        return merge_newest(pages, start, count)

    async def operation_counts(self) -> tuple[int, int]:
        """``(active, total)`` stored operations, for ``get_stats``: two counts, no scan.

        Only operations whose last event is younger than the history TTL count:
        older ones expired (``get_operation`` calls them not found) even where
        no append has trimmed them from the sets yet.
        """
        alive = score(time.time() - self.history_ttl)
        async with self.client.pipeline(transaction=False) as pipe:
            for key in (*self.keys.actives, *self.keys.indexes):
                pipe.zcount(key, alive, "+inf")
            counts = await pipe.execute()
        half = len(counts) // 2
        return sum(counts[:half]), sum(counts[half:])


class LiveTail:
    """The bridge's single reader of the live stream (one reader per partition).

    Batched ``XREAD BLOCK`` from the last stream id it saw, so an outage only
    delays events: when Redis is back it resumes exactly where it stopped.
    It starts from the stream's last id *at start-up* rather than ``$``, so no
    event stored after a subscriber read its history can slip between the two.
    A short block (250 ms) costs an idle bridge four cheap reads a second and
    lets it stop promptly without cancelling a Redis call. With partitions
    (``Keys.lives``) each is read by its own loop on its own connection: in a
    Redis Cluster they live on different nodes, and one operation's events all
    go to one partition, so their order is kept.
    """

    def __init__(
        self,
        redis_url: str,
        keys: list[str],
        publish: Callable[[list[LiveEvent]], None],
        cluster: bool = False,
        block_ms: int = 250,
        count: int = 1000,
        max_backoff: float = 2.0,
    ) -> None:
        self.keys = keys
        self.publish = publish
        self.block_ms = block_ms
        self.count = count
        self.max_backoff = max_backoff
        self.client = _client(
            redis_url, cluster, socket_timeout=block_ms / 1000 + 2, max_connections=len(keys) + 1
        )
        self.positions: dict[str, bytes | None] = dict.fromkeys(keys)
        self._healthy = dict.fromkeys(keys, False)
        self.positioned = asyncio.Event()
        self._stopping = asyncio.Event()

    @property
    def healthy(self) -> bool:
        """Whether every partition's last read succeeded."""
        return all(self._healthy.values())

    async def find_position(self) -> None:
        """Start after the newest entry stored so far (``0-0`` if the stream is empty)."""
        for key in self.keys:
            await self._find_position(key)

    async def _find_position(self, key: str) -> None:
        newest: list[tuple[bytes, Any]] = await self.client.xrevrange(key, count=1)
        self.positions[key] = newest[0][0] if newest else b"0-0"
        self._healthy[key] = True
        if all(position is not None for position in self.positions.values()):
            self.positioned.set()

    async def run(self) -> None:
        """Read and publish every partition until :meth:`stop`."""
        await asyncio.gather(*(self._run(key) for key in self.keys))

    async def _run(self, key: str) -> None:
        """One partition's loop; back off (with jitter) while Redis is down."""
        delay = 0.05
        while not self._stopping.is_set():
            try:
                if self.positions[key] is None:
                    await self._find_position(key)
                position = self.positions[key]
                assert position is not None
                reply: Any = await self.client.xread(
                    {key: position}, count=self.count, block=self.block_ms
                )
            except STORE_ERRORS as exc:
                if self._healthy[key]:
                    log.warning("live tail lost Redis (%s); retrying", exc)
                self._healthy[key] = False
                await self._pause(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.max_backoff)
                continue
            if not self._healthy[key]:
                log.info("live tail reconnected to Redis; resuming after %s", position)
            self._healthy[key] = True
            delay = 0.05
            if reply:
                entries = reply[0][1]
                self.positions[key] = entries[-1][0]
                self.publish(decode_live(entries))

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def stop(self, task: asyncio.Task[None]) -> None:
        """Let the running ``XREAD BLOCK`` return, then end ``task``.

        Cancelling a redis.asyncio call while it connects can leave the task
        hanging (redis-py), so the loop is asked to stop and cancellation is
        only the fallback.
        """
        self._stopping.set()
        done, _ = await asyncio.wait([task], timeout=self.block_ms / 1000 + 1)
        if not done:
            task.cancel()
            await asyncio.wait([task], timeout=1)

    async def close(self) -> None:
        await self.client.aclose()
