"""The soak's clients: connections that follow one running operation after another.

Each connection asks the bridge for active operations, follows one from its
first event to its terminal one, then takes another, for the whole soak. When
the bridge dies it reconnects with jittered back-off and resumes the same
operation with ``since`` and ``epoch``, as PROTOCOL.md tells clients to. It
checks every event: a seq that is not the next one is a loss (skipped) or a
duplicate (seen again), counted per epoch (a new epoch starts the count over).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import asdict, dataclass
from multiprocessing.queues import Queue
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from taskcast.events import TERMINAL_EVENT_TYPES

from .procs import raise_nofile_limit

PICK_FROM = 20  # active operations listed per pick


@dataclass
class Tally:
    """What the connections of one client process saw."""

    connections: int = 0
    followed: int = 0  # operations followed to their terminal event
    events: int = 0
    lost: int = 0
    duplicates: int = 0
    reconnects: int = 0
    renewed: int = 0  # epoch changes announced with an unasked ``subscribed``

    def add(self, other: dict[str, int]) -> None:
        for name, value in other.items():
            setattr(self, name, getattr(self, name) + value)


@dataclass
class _Following:
    operation_id: str
    last: int = 0
    epoch: str | None = None


async def _pick(ws: ClientConnection, request_id: int) -> str | None:
    await ws.send(
        orjson.dumps(
            {
                "command": "list_operations",
                "status": "active",
                "limit": PICK_FROM,
                "request_id": request_id,
            }
        )
    )
    while True:
        frame = orjson.loads(await ws.recv())
        if frame.get("request_id") == request_id:
            operations = frame.get("operations") or []
            return random.choice(operations)["operation_id"] if operations else None


async def _follow(ws: ClientConnection, current: _Following, tally: Tally, rid: int) -> None:
    """Subscribe (resuming where ``current`` stopped) and read until its terminal event."""
    command: dict[str, Any] = {
        "command": "subscribe",
        "operation_id": current.operation_id,
        "request_id": rid,
    }
    if current.last:
        command.update(since=current.last, epoch=current.epoch)
    await ws.send(orjson.dumps(command))
    while True:
        frame = orjson.loads(await ws.recv())
        if frame.get("operation_id") != current.operation_id:
            continue
        if frame.get("status") == "subscribed":
            epoch = (frame.get("operation") or {}).get("epoch")
            if "request_id" not in frame:
                tally.renewed += 1
            if epoch and epoch != current.epoch:
                current.epoch, current.last = epoch, 0
            if frame.get("operation") is None and not frame.get("replayed"):
                return  # expired meanwhile: nothing to follow
            continue
        if "seq" not in frame:
            continue
        tally.events += 1
        if frame.get("epoch") and frame["epoch"] != current.epoch:
            current.epoch, current.last = frame["epoch"], 0
        seq = frame["seq"]
        if seq <= current.last:
            tally.duplicates += 1
            continue
        tally.lost += seq - current.last - 1
        current.last = seq
        if frame["event_type"] in TERMINAL_EVENT_TYPES:
            tally.followed += 1
            await ws.send(
                orjson.dumps({"command": "unsubscribe", "operation_id": current.operation_id})
            )
            return


async def _connection(url: str, stop_at: float, tally: Tally) -> None:
    current: _Following | None = None
    attempt = 0
    request_ids = iter(range(1, 1 << 62))
    while time.time() < stop_at:
        try:
            async with connect(url, open_timeout=10, max_size=1 << 22) as ws:
                await ws.recv()  # connected
                tally.connections += attempt == 0
                attempt = 0
                while time.time() < stop_at:
                    if current is None:
                        picked = await _pick(ws, next(request_ids))
                        if picked is None:
                            await asyncio.sleep(0.2)
                            continue
                        current = _Following(picked)
                    await _follow(ws, current, tally, next(request_ids))
                    current = None
        except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError):
            attempt += 1
            tally.reconnects += 1
            await asyncio.sleep(random.uniform(0, min(5.0, 0.25 * 2**attempt)))


async def _run(url: str, connections: int, stop_at: float) -> Tally:
    tally = Tally()
    tasks = []
    for _ in range(connections):
        tasks.append(asyncio.create_task(_connection(url, stop_at, tally)))
        await asyncio.sleep(0.002)  # no thundering herd of handshakes at start
    await asyncio.wait(tasks, timeout=max(0.0, stop_at - time.time()) + 30)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(BaseException):
            await task
    return tally


def run_clients(url: str, connections: int, stop_at: float, results: Queue) -> None:
    """Entry point of one client process: put its :class:`Tally` (as a dict) on ``results``."""
    raise_nofile_limit()
    results.put(asdict(asyncio.run(_run(url, connections, stop_at))))
