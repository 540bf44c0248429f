"""Client and producer processes of one measurement step, and their results.

They run under the ``spawn`` start method so that no state of the
orchestrator (threads, sockets, an event loop) leaks into them, and every
wait on them has a timeout; :class:`Fleet` terminates whatever is still alive
when the step ends, whichever way it ends.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from collections.abc import Callable, Sequence
from typing import Any

from .produce import ProducerSpec, produce
from .receive import ReceiverSpec, receive
from .stats import Delivery


class Fleet:
    """The processes of one step; a context manager that reaps them."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.processes: list[multiprocessing.process.BaseProcess] = []

    def spawn(self, target: Callable[..., None], *args: Any) -> None:
        process = self.ctx.Process(target=target, args=args, daemon=True)
        process.start()
        self.processes.append(process)

    def receivers(self, specs: Sequence[ReceiverSpec], with_release: bool = False) -> Receivers:
        """Start one client process per spec (connections open in the background)."""
        return Receivers(self, specs, with_release)

    def producers(self, specs: Sequence[ProducerSpec]) -> Producers:
        """Start one producer process per spec; they wait for :meth:`Producers.start`."""
        return Producers(self, specs)

    def close(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        self.processes.clear()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _collect(results: Any, kind: str, count: int, timeout: float, what: str) -> list[Any]:
    """``count`` messages of ``kind`` from ``results`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    found: list[Any] = []
    while len(found) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{what}: {len(found)} of {count} reported {kind!r} in {timeout} s")
        try:
            message = results.get(timeout=remaining)
        except queue.Empty:
            continue
        if message[0] == kind:
            found.append(message[1:])
    return found


class Receivers:
    """Client processes; ``ready()`` once subscribed, ``finish()`` for what they received."""

    def __init__(self, fleet: Fleet, specs: Sequence[ReceiverSpec], with_release: bool) -> None:
        self.results = fleet.ctx.Queue()
        self.release = fleet.ctx.Event() if with_release else None
        self.specs = list(specs)
        for spec in self.specs:
            fleet.spawn(receive, spec, self.results, self.release)

    def ready(self, timeout: float) -> tuple[int, list[str]]:
        """Connections that are open and subscribed, and the first errors of those that are not."""
        reports = _collect(self.results, "ready", len(self.specs), timeout, "receivers")
        return sum(r[0] for r in reports), [e for r in reports for e in r[1]]

    def finish(self, timeout: float) -> dict[str, Any]:
        """Release idle connections (if any) and merge every process's report."""
        if self.release is not None:
            self.release.set()
        reports = [r[0] for r in _collect(self.results, "done", len(self.specs), timeout, "rx")]
        delivery = Delivery()
        for report in reports:
            delivery.merge(report["delivery"])
        return {
            "delivery": delivery,
            "unfinished": [pair for r in reports for pair in r["unfinished"]],
            "resumed_at": sorted(t for r in reports for t in r["resumed_at"]),
            "errors": [e for r in reports for e in r["errors"]],
            "error_count": sum(r["error_count"] for r in reports),
        }


class Producers:
    """Producer processes that start together on a shared clock time."""

    def __init__(self, fleet: Fleet, specs: Sequence[ProducerSpec]) -> None:
        self.results = fleet.ctx.Queue()
        self.go = fleet.ctx.Event()
        self.start_at = fleet.ctx.Value("d", 0.0)
        self.specs = list(specs)
        for spec in self.specs:
            fleet.spawn(produce, spec, self.go, self.start_at, self.results)

    def start(self, timeout: float = 30.0, lead: float = 0.2) -> float:
        """Wait until every producer is connected, then start all ``lead`` seconds from now."""
        _collect(self.results, "ready", len(self.specs), timeout, "producers")
        self.start_at.value = time.time() + lead
        self.go.set()
        return self.start_at.value

    def finish(self, timeout: float) -> dict[str, float]:
        """Events emitted, the emit window, and how far the slowest producer fell behind."""
        reports = [r[0] for r in _collect(self.results, "done", len(self.specs), timeout, "tx")]
        emitted = sum(r["emitted"] for r in reports)
        start = min(r["start"] for r in reports)
        end = max(r["end"] for r in reports)
        return {
            "emitted": emitted,
            "seconds": end - start,
            "rate": emitted / max(end - start, 1e-9),
            "worst_lag": max(r["worst_lag"] for r in reports),
        }


def split(items: Sequence[str], parts: int) -> list[tuple[str, ...]]:
    """``items`` dealt round-robin into ``parts`` non-empty tuples (fewer if too few items)."""
    parts = max(1, min(parts, len(items)))
    return [tuple(items[i::parts]) for i in range(parts)]
