"""The hostile harness's schedule: which misbehaviour runs when, for how long, how hard.

Pure (no I/O, no clock): one seed always gives the same plan, so a run that
found something is replayed from its seed alone, and the unit tests check
plans without a bridge. Every plan holds each kind of misbehaviour at least
once (a seed varies how, when and how hard, never whether a class of attack
is tried); the rest of the connection budget goes to more of them at random.
Each action carries a seed of its own for the choices it makes while it runs
(which surface, which forged token), so those replay too.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from enum import Enum

DEFAULT_CONNECTIONS = 300
LATEST_START = 0.7  # share of the run after which no action starts: each gets time to bite
SHORTEST_ACTION = 3.0  # seconds


class Kind(str, Enum):
    """A class of misbehaviour; the harness runs each as one asyncio task per action."""

    SILENT_COMMANDS = "silent-commands"  # write commands, never read (4 KiB SO_RCVBUF)
    HALF_HEADS = "half-heads"  # a request head cut short, held open, re-opened when dropped
    SLOWLORIS = "slowloris"  # a request head trickled a byte at a time
    CHURN = "churn"  # handshakes opened and dropped as fast as they go
    HUGE_FRAMES = "huge-frames"  # one frame over the inbound limit
    FRAGMENTS = "fragments"  # a message in many continuation frames
    FOREIGN_ORIGIN = "foreign-origin"  # Origin: https://evil.example on HTTP, SSE and WS
    REBOUND_HOST = "rebound-host"  # Host: rebind.evil.example (DNS rebinding)
    TOKEN_ABUSE = "token-abuse"  # forged, expired, alg none, wrong scope (keyed bridge only)
    SSE_STALL = "sse-stall"  # an event stream opened and never read
    HISTORY_STALL = "history-stall"  # subscribe to a big history, never read
    PIPELINED = "pipelined"  # several HTTP requests in one write
    HUGE_EVENT = "huge-event"  # a task emits an oversized field into the canary's operation


COMMANDS = ("ping", "subscribe", "list_operations", "get_stats", "garbage", "unknown")
HEAD_PATHS = ("/healthz", "/ws", "/api/operations", "/api/operations/big/events")
CHURN_VARIANTS = ("abort", "close", "command-then-abort")
HUGE_FRAME_VARIANTS = ("text", "binary", "declared-only")
FRAGMENT_VARIANTS = ("tiny", "over-limit", "endless")
ACCESS_SURFACES = ("http-list", "http-operation", "sse", "ws")
BAD_TOKENS = ("forged", "expired", "alg-none", "wrong-scope", "garbage")
SSE_VARIANTS = ("operation", "monitor")
# Fields of an event a task controls: capped ones (message, details) and others.
HUGE_FIELDS = ("status", "status-message", "status-details", "log-level", "log-message")

# kind -> (fewest, most) connections of one action at DEFAULT_CONNECTIONS; scaled by the budget.
CONNECTIONS: dict[Kind, tuple[int, int]] = {
    Kind.SILENT_COMMANDS: (5, 40),
    Kind.HALF_HEADS: (20, 120),
    Kind.SLOWLORIS: (10, 60),
    Kind.CHURN: (1, 4),
    Kind.HUGE_FRAMES: (1, 5),
    Kind.FRAGMENTS: (1, 5),
    Kind.FOREIGN_ORIGIN: (1, 3),
    Kind.REBOUND_HOST: (1, 3),
    Kind.TOKEN_ABUSE: (1, 5),
    Kind.SSE_STALL: (2, 20),
    Kind.HISTORY_STALL: (2, 20),
    Kind.PIPELINED: (1, 3),
    Kind.HUGE_EVENT: (0, 0),
}
# Kinds drawn again once each has run: the ones that load the bridge.
EXTRA_WEIGHTS: dict[Kind, int] = {
    Kind.SILENT_COMMANDS: 4,
    Kind.HALF_HEADS: 3,
    Kind.SLOWLORIS: 2,
    Kind.HISTORY_STALL: 3,
    Kind.SSE_STALL: 2,
    Kind.CHURN: 1,
    Kind.FRAGMENTS: 1,
    Kind.FOREIGN_ORIGIN: 1,
    Kind.REBOUND_HOST: 1,
}


@dataclass(frozen=True)
class Action:
    """One misbehaviour: ``connections`` sockets from hostile source ``source`` (an index),
    from ``start`` for ``duration`` seconds.

    ``count``, ``size`` and ``variant`` mean what the kind makes of them (frames
    written per connection, a frame's bytes, a head's prefix length...);
    ``commands`` is the silent writers' mix; ``token`` whether it presents a
    valid token (on a keyed bridge); ``seed`` drives its choices while it runs.
    """

    kind: Kind
    start: float
    duration: float
    connections: int
    source: int
    count: int
    size: int
    variant: str
    commands: tuple[str, ...]
    token: bool
    seed: int

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True)
class Plan:
    """A whole run: the bridge keyed or not, the actions (by start time)."""

    seed: int
    seconds: float
    keyed: bool
    sources: int
    actions: tuple[Action, ...]

    @property
    def connections(self) -> int:
        return sum(action.connections for action in self.actions)

    def kinds(self) -> Counter[str]:
        return Counter(action.kind.value for action in self.actions)


def _parameters(kind: Kind, rng: random.Random) -> tuple[int, int, str, tuple[str, ...]]:
    """``(count, size, variant, commands)`` of one action of ``kind``."""
    if kind is Kind.SILENT_COMMANDS:
        commands = tuple(sorted(rng.sample(COMMANDS, rng.randint(1, len(COMMANDS)))))
        return rng.randint(1_000, 20_000), 0, rng.choice(("burst", "paced")), commands
    if kind is Kind.HALF_HEADS:
        return 0, 0, rng.choice(HEAD_PATHS), ()
    if kind is Kind.SLOWLORIS:  # size: milliseconds between two bytes
        return 0, rng.randint(100, 2_000), rng.choice(HEAD_PATHS), ()
    if kind is Kind.CHURN:
        return 0, 0, rng.choice(CHURN_VARIANTS), ()
    if kind is Kind.HUGE_FRAMES:
        size = rng.randint(65 * 1024, 4 << 20)
        return rng.randint(1, 8), size, rng.choice(HUGE_FRAME_VARIANTS), ()
    if kind is Kind.FRAGMENTS:
        return rng.randint(100, 5_000), rng.randint(1, 64), rng.choice(FRAGMENT_VARIANTS), ()
    if kind in (Kind.FOREIGN_ORIGIN, Kind.REBOUND_HOST, Kind.TOKEN_ABUSE):
        return rng.randint(4, 20), 0, "", ()
    if kind is Kind.SSE_STALL:
        return 0, 0, rng.choice(SSE_VARIANTS), ()
    if kind is Kind.HISTORY_STALL:
        return rng.randint(1, 50), 0, "", ()
    if kind is Kind.PIPELINED:
        return rng.randint(2, 20), 0, "", ()
    return rng.randint(1, 3), rng.randint(100_000, 2_000_000), rng.choice(HUGE_FIELDS), ()


def _action(
    kind: Kind, rng: random.Random, seconds: float, scale: float, sources: int
) -> Action:
    low, high = CONNECTIONS[kind]
    start = round(rng.uniform(0, seconds * LATEST_START), 2)
    left = seconds - start
    duration = round(min(left, max(SHORTEST_ACTION, rng.uniform(0.2, 1.0) * left)), 2)
    count, size, variant, commands = _parameters(kind, rng)
    return Action(
        kind=kind,
        start=start,
        duration=duration,
        connections=rng.randint(low, max(low, round(high * scale))),
        source=rng.randrange(sources),
        count=count,
        size=size,
        variant=variant,
        commands=commands,
        token=rng.random() < 0.5,
        seed=rng.getrandbits(32),
    )


def make_plan(
    seed: int, seconds: float, connections: int = DEFAULT_CONNECTIONS, sources: int = 4
) -> Plan:
    """The plan of seed ``seed``: about ``connections`` hostile sockets over ``seconds``."""
    if seconds <= SHORTEST_ACTION or connections < 1 or sources < 1:
        raise ValueError(f"need seconds > {SHORTEST_ACTION}, connections >= 1, sources >= 1")
    rng = random.Random(seed)
    keyed = rng.random() < 0.5
    scale = connections / DEFAULT_CONNECTIONS
    kinds = [kind for kind in Kind if keyed or kind is not Kind.TOKEN_ABUSE]
    actions = [_action(kind, rng, seconds, scale, sources) for kind in kinds]
    extra, weights = list(EXTRA_WEIGHTS), list(EXTRA_WEIGHTS.values())
    while sum(action.connections for action in actions) < connections:
        kind = rng.choices(extra, weights)[0]
        actions.append(_action(kind, rng, seconds, scale, sources))
    actions.sort(key=lambda action: (action.start, action.kind.value))
    return Plan(seed, seconds, keyed, sources, tuple(actions))
