"""The thinnest Redis-stream-to-WebSocket relay: the practical ceiling on this machine.

It tails the same live stream the bridge tails and writes field ``e`` of every
entry, as a text frame, to every connected client: no protocol, no
subscriptions, no history, no slow-consumer handling. Whatever taskcast adds
on top of this costs throughput; the benchmark reports taskcast as a ratio of it.
Run: ``python -m bench.thin_relay --redis-url URL --stream KEY [--port 0]``.
"""

from __future__ import annotations

import argparse
import asyncio

import redis.asyncio as aioredis
from websockets.asyncio.server import ServerConnection, broadcast, serve

clients: set[ServerConnection] = set()


async def handler(connection: ServerConnection) -> None:
    clients.add(connection)
    try:
        await connection.wait_closed()
    finally:
        clients.discard(connection)


async def relay(redis_url: str, stream: str, host: str, port: int, lifetime: float) -> None:
    client = aioredis.Redis.from_url(redis_url)
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + lifetime
    async with serve(handler, host, port, compression=None, max_queue=None) as server:
        bound = server.sockets[0].getsockname()
        print(f"thin relay listening on ws://{bound[0]}:{bound[1]}/", flush=True)
        last_id = b"$"
        while loop.time() < stop_at:
            reply = await client.xread({stream: last_id}, count=1000, block=1000)
            for _key, entries in reply or ():
                for _entry_id, fields in entries:
                    broadcast(clients, fields[b"e"], text=True)
                last_id = entries[-1][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lifetime", type=float, default=3600.0, help="exit after SECONDS")
    args = parser.parse_args()
    asyncio.run(relay(args.redis_url, args.stream, args.host, args.port, args.lifetime))


if __name__ == "__main__":
    main()
