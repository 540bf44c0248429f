"""Scenario 5: a bridge killed mid-stream, a new one on the same port, clients resume.

1,000 clients follow 100 operations (10 each) while a producer streams
events; the bridge gets SIGKILL part-way (a crash: no close frames), a new
bridge starts on the same port, and every client reconnects with jittered
back-off and resubscribes with ``since`` = its last seq. At the end each
client must hold every event of its operation exactly once, terminal
included. Reported: how long until the last client had resumed, counted from
the kill and from the new bridge's ready line.
"""

from __future__ import annotations

import time
import uuid

from .context import Bench
from .fleet import Fleet, split
from .produce import ProducerSpec
from .receive import ReceiverSpec
from .report import Row

CLIENT_PROCESSES = 2


def run(bench: Bench) -> list[Row]:
    sizes = bench.sizes
    ops = [str(uuid.uuid4()) for _ in range(sizes.recovery_ops)]
    per_op = max(2, round(sizes.recovery_rate * sizes.recovery_seconds / len(ops)))
    expected = dict.fromkeys(ops, per_op + 1)  # + the terminal ``completed``
    deadline = time.time() + sizes.recovery_seconds + 120
    follows = [(ops[i % len(ops)],) for i in range(sizes.recovery_clients)]
    bridge = bench.bridge()
    port = bridge.port
    try:
        with Fleet() as fleet:
            specs = [
                ReceiverSpec(bridge.url, tuple(chunk), expected, deadline, reconnect=True)
                for chunk in split(follows, CLIENT_PROCESSES)
            ]
            receivers = fleet.receivers(specs)
            connected, errors = receivers.ready(timeout=120)
            if connected != len(follows):
                raise RuntimeError(f"{connected}/{len(follows)} clients subscribed: {errors}")
            producers = fleet.producers(
                [
                    ProducerSpec(
                        bench.store.url,
                        bench.prefix,
                        tuple(ops),
                        sizes.recovery_rate,
                        per_op,
                        terminal=True,
                    )
                ]
            )
            started = producers.start()
            time.sleep(max(0.0, started + sizes.recovery_seconds / 3 - time.time()))
            killed_at = bench.procs.kill(bridge.child)
            bridge = bench.bridge(port)
            ready_at = time.time()
            producers.finish(timeout=sizes.recovery_seconds * 10 + 30)
            seen = receivers.finish(timeout=max(5.0, deadline - time.time()))
    finally:
        bench.procs.stop(bridge.child)
    resumed = seen["resumed_at"]
    delivery = seen["delivery"]
    last = resumed[-1] if resumed else float("nan")
    return [
        Row(
            "5 recovery",
            f"{len(follows):,} clients, bridge SIGKILL + restart",
            {
                "resumed": len(resumed),
                "all_resumed_after_kill_s": round(last - killed_at, 2),
                "all_resumed_after_ready_s": round(last - ready_at, 2),
                "restart_s": round(ready_at - killed_at, 2),
                "events": delivery.received,
            },
            lost=delivery.lost,
            duplicates=delivery.duplicates,
            goal="every client gets every event once",
            met=delivery.lost == 0 and delivery.duplicates == 0 and len(resumed) >= len(follows),
            note="; ".join(seen["errors"][:2]),
        )
    ]
