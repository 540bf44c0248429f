"""A bridge SIGKILLed and restarted under 1,000 connected clients: every event once, in order."""

from __future__ import annotations

import asyncio
import signal
import threading

import orjson
from bridge_helpers import RestartableBridge, follow_seqs, http_get, produce_numbered

OPERATIONS = 20
CLIENTS_PER_OPERATION = 50
EVENTS = 150  # per operation, after ``queued``


async def test_1000_clients_lose_and_repeat_nothing_through_a_bridge_sigkill_and_restart(
    stack_factory,
) -> None:
    stack = stack_factory()
    bridge = RestartableBridge(stack.env(TASKCAST_MAX_CONNECTIONS_PER_IP="5000"))
    bridge.start()
    operations = [f"fault-a-{n}" for n in range(OPERATIONS)]
    started = threading.Event()
    producer = threading.Thread(
        target=produce_numbered, args=(stack.store, operations, started, EVENTS, 0.04)
    )
    producer.start()
    try:
        readies = [asyncio.Event() for _ in range(OPERATIONS * CLIENTS_PER_OPERATION)]
        watchers = [
            asyncio.create_task(follow_seqs(bridge.url, operations[n % OPERATIONS], ready))
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
