"""Per-connection and per-process limits of PROTOCOL.md "Limits", as plain arithmetic.

No sockets and no clock of their own: the adapter passes ``time.monotonic()``
in, so each rule is tested directly.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import Counter
from pathlib import Path
from typing import Any, Generic, TypeVar

import psutil

K = TypeVar("K")

FD_RESERVE_FRACTION = 0.2  # handshakes being refused hold descriptors too
FD_RESERVE_MIN = 128
# Request heads in progress one address may hold (a browser opens six connections per
# host, and a head takes a round trip), and how long one may go without a byte.
HEADS_PER_ADDRESS = 32
IDLE_HEAD_TIMEOUT = 2.0
IDLE_HEAD_PREFERENCE = 0.5  # silent this long, a head is the first to make room
# The share of the machine's (or container's) memory all bridge processes of a host
# may hold for clients, and the least one process gets whatever the machine.
BUFFERED_MEMORY_FRACTION = 8
BUFFERED_MIN = 16 << 20
CGROUP_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")


class TokenBucket:
    """``rate`` commands per second on average, bursts of up to ``burst``."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False means the command is refused."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def default_max_connections(fd_limit: int | None = None) -> int:
    """What the file-descriptor limit allows, minus a reserve for Redis, HTTP and logs."""
    if fd_limit is None:
        fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    reserve = max(FD_RESERVE_MIN, int(fd_limit * FD_RESERVE_FRACTION))
    return max(1, fd_limit - reserve)


def memory_limit() -> int:
    """The memory this process may use: the machine's, or its cgroup's limit if lower."""
    total = int(psutil.virtual_memory().total)
    try:
        raw = CGROUP_MEMORY_MAX.read_text().strip()
    except OSError:
        return total
    return min(total, int(raw)) if raw.isdigit() else total


def default_max_buffered_bytes(processes: int = 1, memory: int | None = None) -> int:
    """TASKCAST_MAX_BUFFERED_BYTES when unset: an eighth of the memory, shared by the
    processes of ``taskcast serve --processes``, so a host's bridges together stay
    well inside it whatever their clients stop reading."""
    memory = memory_limit() if memory is None else memory
    return max(BUFFERED_MIN, memory // BUFFERED_MEMORY_FRACTION // max(1, processes))


class Heads(Generic[K]):
    """Connections still sending their request head, capped per address and in total.

    A head in progress holds a descriptor like a connection, and an attacker can hold
    many by never finishing them. Refusing newcomers at a cap would let that attacker
    lock everyone out (a liveness probe included), so a newcomer is always admitted
    and an old head makes room: at the per-address cap one of that address's, at the
    total cap one of the address holding the most heads: the oldest of those silent
    for ``IDLE_HEAD_PREFERENCE``, else the oldest that sent part of a head (a slow
    loris, or half a head). A client's request comes in one packet, so a connection
    whose bytes are still on their way is not one to drop: at the per-address cap
    none is (a thousand clients behind one address reconnecting after a restart all
    connect in the same instant, and each head goes silent, hence droppable, within
    ``IDLE_HEAD_PREFERENCE``); only the total cap, which guards the descriptors, drops
    the oldest of them when nothing else can go.
    A head idle for ``IDLE_HEAD_TIMEOUT`` is dropped anyway (``idle``), long before
    the slow-but-sending one's overall deadline. Pure: the adapter passes
    ``now`` in, and aborts the connections (``K``, any hashable) it is told to.
    """

    def __init__(self, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        # key -> [address, time of its last byte (or connection), whether it sent any]
        self._heads: dict[K, list[Any]] = {}
        self.by_address: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._heads)

    def __contains__(self, key: object) -> bool:
        return key in self._heads

    def start(self, key: K, address: str, now: float) -> K | None:
        """Count a new connection's head; the key of the head to drop for it, if any."""
        victim = None
        if self.by_address[address] >= self.per_address:
            victim = self._oldest(address, now, fresh=False)
        if victim is None and len(self._heads) >= self.total:
            busiest = max(self.by_address, key=self.by_address.__getitem__)
            victim = self._oldest(busiest, now, fresh=True)
        if victim is not None:
            self.done(victim)
        self._heads[key] = [address, now, False]
        self.by_address[address] += 1
        return victim

    def _oldest(self, address: str, now: float, fresh: bool) -> K | None:
        """The head of ``address`` to drop (heads are kept in the order they started);
        the oldest whose bytes may still be on their way only if ``fresh``."""
        partial = oldest = None
        for key, (held_by, last_byte, sent) in self._heads.items():
            if held_by != address:
                continue
            if now - last_byte >= IDLE_HEAD_PREFERENCE:
                return key
            if sent and partial is None:
                partial = key
            if oldest is None:
                oldest = key
        return partial if partial is not None or not fresh else oldest

    def progress(self, key: K, now: float) -> None:
        """A byte of the head arrived."""
        entry = self._heads.get(key)
        if entry is not None:
            entry[1] = now
            entry[2] = True

    def idle(self, key: K, now: float) -> float:
        """Seconds until ``key`` has been idle too long; 0 or less: drop it now."""
        entry = self._heads.get(key)
        return IDLE_HEAD_TIMEOUT - (now - entry[1]) if entry is not None else IDLE_HEAD_TIMEOUT

    def done(self, key: K) -> None:
        """The head is complete, or its connection gone; safe to call twice."""
        entry = self._heads.pop(key, None)
        if entry is not None:
            self.by_address[entry[0]] -= 1
            if self.by_address[entry[0]] <= 0:
                del self.by_address[entry[0]]


class ConnectionCaps:
    """Open connections, in total and per client address, against their caps."""

    def __init__(self, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        self.open: Counter[str] = Counter()
        self.count = 0
        # Connections still sending their request head (see Heads).
        self.heads: Heads[Any] = Heads(max(1, total // 8), min(per_address, HEADS_PER_ADDRESS))

    def refusal(self, address: str) -> int | None:
        """The HTTP status refusing one more connection from ``address``, or None."""
        if self.count >= self.total:
            return 503
        if self.open[address] >= self.per_address:
            return 429
        return None

    def opened(self, address: str) -> None:
        self.open[address] += 1
        self.count += 1

    def closed(self, address: str) -> None:
        self.count -= 1
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]


def client_address(connection: Any) -> str:
    """The peer's IP address (``remote_address`` of a websockets connection)."""
    remote = getattr(connection, "remote_address", None)
    return str(remote[0]) if remote else "unknown"


def client_address_of(transport: asyncio.BaseTransport) -> str:
    """The peer's IP address of a transport (before websockets has a connection)."""
    remote = transport.get_extra_info("peername")
    return str(remote[0]) if remote else "unknown"


class RateLimitedLog:
    """An asyncio exception handler logging at most one report per ``interval`` seconds."""

    def __init__(self, logger: logging.Logger, interval: float) -> None:
        self.logger = logger
        self.interval = interval
        self.last = float("-inf")
        self.suppressed = 0

    def loop_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            self.suppressed += 1
            return
        self.last = now
        more = f" ({self.suppressed} similar reports suppressed)" if self.suppressed else ""
        self.suppressed = 0
        self.logger.error(
            "%s%s",
            context.get("message", "event loop error"),
            more,
            exc_info=context.get("exception"),
        )
