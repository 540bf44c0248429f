"""A steady event stream written straight into the store, timed through one bridge client.

This isolates the bridge path (store -> live tail -> WebSocket) from Celery:
the latency scenario reports it next to the worker figures, the connections
scenario measures it while thousands of idle clients are connected.
"""

from __future__ import annotations

import time
import uuid

from .context import Bench
from .fleet import Fleet, split
from .procs import Endpoint
from .produce import ProducerSpec
from .receive import ReceiverSpec
from .stats import Delivery


def probe(
    bench: Bench,
    bridge: Endpoint,
    fleet: Fleet,
    rate: float,
    seconds: float,
    operations: int = 10,
    producer_processes: int = 1,
) -> tuple[Delivery, dict[str, float]]:
    """``rate`` events/s over ``operations`` for ``seconds``; what one subscriber saw."""
    ops = [str(uuid.uuid4()) for _ in range(operations)]
    per_op = max(1, round(rate * seconds / len(ops)))
    deadline = time.time() + seconds + 30
    receivers = fleet.receivers(
        [ReceiverSpec(bridge.url, (tuple(ops),), dict.fromkeys(ops, per_op), deadline)]
    )
    if receivers.ready(timeout=30)[0] != 1:
        raise RuntimeError("the probe client could not subscribe")
    producers = fleet.producers(
        [
            ProducerSpec(bench.store.url, bench.prefix, part, rate / producer_processes, per_op)
            for part in split(ops, producer_processes)
        ]
    )
    producers.start()
    produced = producers.finish(timeout=seconds * 10 + 30)
    return receivers.finish(timeout=max(5.0, deadline - time.time()))["delivery"], produced
