"""A bridge SIGKILLed and restarted under 1,000 connected clients: every event once, in order."""

from __future__ import annotations

import asyncio
import signal
import threading
from typing import Any

import orjson
from bridge_helpers import RestartableBridge, http_get

from taskcast.client import TaskcastClient
from taskcast.events import Event, log_data, status_data

OPERATIONS = 20
CLIENTS_PER_OPERATION = 50
EVENTS = 150  # per operation, after ``queued``


def produce(stack: Any, operations: list[str], started: threading.Event) -> None:
    """Log events round-robin over the operations, then end each; about 6 s in all."""
    store = stack.store
    for op in operations:
        store.append(Event("status", op, status_data("queued"), operation_type="fault.a"))
    started.wait()
    for number in range(1, EVENTS + 1):
        for op in operations:
            store.append(Event("log", op, log_data("info", str(number))))
        threading.Event().wait(0.04)
    for op in operations:
        store.append(Event("completed", op, {"result": None}))


async def watch(url: str, operation_id: str, ready: asyncio.Event) -> list[int]:
    client = TaskcastClient(url, max_reconnect_time=60)
    await client.connect()
    seqs: list[int] = []
    try:
        events = client.watch(operation_id)
        first = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0)
        ready.set()
        seqs.append((await first)["seq"])
        async for event in events:
            seqs.append(event["seq"])
    finally:
        await client.close()
    return seqs


async def test_1000_clients_lose_and_repeat_nothing_through_a_bridge_sigkill_and_restart(
    stack_factory,
) -> None:
    stack = stack_factory()
    bridge = RestartableBridge(stack.env(TASKCAST_MAX_CONNECTIONS_PER_IP="5000"))
    bridge.start()
    operations = [f"fault-a-{n}" for n in range(OPERATIONS)]
    started = threading.Event()
    producer = threading.Thread(target=produce, args=(stack, operations, started))
    producer.start()
    try:
        readies = [asyncio.Event() for _ in range(OPERATIONS * CLIENTS_PER_OPERATION)]
        watchers = [
            asyncio.create_task(watch(bridge.url, operations[n % OPERATIONS], ready))
            for n, ready in enumerate(readies)
        ]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 60)
        started.set()
        # Kill the bridge a third of the way through the stream, and start a new one.
        while stack.store.snapshot(operations[0])["last_seq"] < EVENTS // 3:
            await asyncio.sleep(0.05)
        bridge.stop(signal.SIGKILL)
        at_kill = stack.store.snapshot(operations[0])["last_seq"]
        bridge.start()
        received = await asyncio.wait_for(asyncio.gather(*watchers), 120)
        status, _, body = http_get(f"http://127.0.0.1:{bridge.port}/api/stats")
    finally:
        started.set()
        producer.join()
        bridge.stop(signal.SIGKILL)
    assert at_kill < EVENTS, "the stream had ended before the kill"
    assert status == 200 and orjson.loads(body)["stats"]["connections_total"] >= len(received)
    expected = list(range(1, EVENTS + 3))  # queued, the logs, completed
    wrong = [n for n, seqs in enumerate(received) if seqs != expected]
    assert not wrong, f"{len(wrong)} clients got other seqs, e.g. {received[wrong[0]][:10]}..."
