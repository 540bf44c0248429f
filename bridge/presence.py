"""What every bridge process sharing a store reports about itself, for totals in ``get_stats``.

A client reaches one process of one bridge, but asks how many clients the
deployment serves. Each process writes its hub counters every
:data:`REPORT_SECONDS` into one hash (``Keys.bridges``) and its last report
time into a sorted set (``Keys.bridges_seen``); a reader takes only the
processes seen within :data:`ALIVE_SECONDS`, by score, so a dead process
drops out of the totals without anyone scanning keys. Both keys expire when
no process has reported for a while.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import orjson
import redis.asyncio as aioredis

from taskcast.keys import Keys

REPORT_SECONDS = 2.0
ALIVE_SECONDS = 3 * REPORT_SECONDS
KEY_TTL_SECONDS = 60

# The hub counters summed over processes.
SUMMED = ("connected_clients", "subscriptions", "monitors", "events_delivered")


def process_id() -> str:
    """How this process is named in the reports: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


async def report(
    client: aioredis.Redis, keys: Keys, me: str, stats: Mapping[str, int], now: float
) -> None:
    """Record this process's counters as of ``now`` and forget processes long silent."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.hset(keys.bridges, me, orjson.dumps({name: stats[name] for name in SUMMED}))
        pipe.zadd(keys.bridges_seen, {me: now})
        pipe.zrangebyscore(keys.bridges_seen, "-inf", now - KEY_TTL_SECONDS)
        pipe.expire(keys.bridges, KEY_TTL_SECONDS)
        pipe.expire(keys.bridges_seen, KEY_TTL_SECONDS)
        gone = (await pipe.execute())[2]
    if gone:
        async with client.pipeline(transaction=False) as pipe:
            pipe.hdel(keys.bridges, *gone)
            pipe.zrem(keys.bridges_seen, *gone)
            await pipe.execute()


async def totals(client: aioredis.Redis, keys: Keys, now: float) -> dict[str, int]:
    """The counters of every process seen within ALIVE_SECONDS, summed, and ``processes``."""
    alive = await client.zrangebyscore(keys.bridges_seen, now - ALIVE_SECONDS, "+inf")
    summed = dict.fromkeys(SUMMED, 0)
    reports = await client.hmget(keys.bridges, alive) if alive else []
    counted = 0
    for raw in reports:
        if raw is None:
            continue
        counted += 1
        for name, value in orjson.loads(raw).items():
            summed[name] = summed.get(name, 0) + int(value)
    return {"processes": counted, **summed}

