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
from typing import Any

FD_RESERVE_FRACTION = 0.2  # handshakes being refused hold descriptors too
FD_RESERVE_MIN = 128


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


class ConnectionCaps:
    """Open connections, in total and per client address, against their caps."""

    def __init__(self, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        self.open: Counter[str] = Counter()
        self.count = 0
        # Connections still sending their request head, held to the same caps: a
        # client that never finishes its head holds a descriptor all the same.
        self.heads: Counter[str] = Counter()
        self.head_count = 0

    def head_started(self, address: str) -> bool:
        """Count a new connection's head; False (not counted) when over the caps.

        Heads get their own caps, not the open connections' (a full bridge must still
        read a request to answer it 503, or ``/healthz``): per address the same, in
        total an eighth of the connections', which the descriptor reserve of the default
        cap (see default_max_connections) holds with room to spare.
        """
        if self.head_count >= max(1, self.total // 8) or self.heads[address] >= self.per_address:
            return False
        self.heads[address] += 1
        self.head_count += 1
        return True

    def head_done(self, address: str) -> None:
        self.head_count -= 1
        self.heads[address] -= 1
        if self.heads[address] <= 0:
            del self.heads[address]

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
