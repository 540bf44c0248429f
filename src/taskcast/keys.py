"""The Redis key layout and how stored entries decode: the one place both sides read it.

Layout under the prefix (default ``taskcast:``)::

    op:{ID}          hash    the operation snapshot, JSON-encoded values, last_seq
    op:{ID}:events   stream  the operation's history, entry id ``{seq}-0``, field e
    events           stream  every event of every operation: o (id), s (seq),
                             t (operation type), p (epoch), e (event JSON)
    ops              zset    operation ids scored by their last update
    active           zset    the unfinished ones among them (listings and counts
                             of active operations read only these)
    type:NAME        zset    the operations of type NAME among them, scored alike
                             (listings filtered by type read only these)
    types            zset    every NAME with an index, all at score 0, so that a
                             prefix finds its names with ZRANGEBYLEX
    types:seen       zset    NAME -> its index's last write, to drop the index
                             once all its operations expired
    workers          zset    worker hostnames scored by their last heartbeat
    workers:started  hash    worker hostname -> when its running instance started
    op:{ID}:once:N   string  marker of an ingested Celery event, stored once (10 min)
    op:{ID}:members  hash    a group's or chord's aggregate (see taskcast.members)

The braces are a Redis Cluster hash tag: both keys of one operation share a slot.
With partitions (see :class:`Keys`) the shared keys are split and the tag is
the partition's: ``{pN}:op:ID``, ``{pN}:events``, ``{pN}:ops``, ``{pN}:active``,
``{pN}:type:NAME``, ``{pN}:types``, ``{pN}:types:seen``.
A stored event is the exact JSON clients receive, so readers forward bytes.
Nothing here talks to Redis (the writers are in :mod:`taskcast.store`, the
bridge's async reader in ``taskcast.bridge.reader``), so the bridge's pure hub
can use these types without importing a Redis client.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from taskcast.events import FINISHED_STATUSES

# Snapshot fields that are bookkeeping, not part of PROTOCOL.md's snapshot.
_INTERNAL_FIELDS = frozenset({"terminal", "created_at", "_type", "_indexed"})
SNAPSHOT_DEFAULTS: dict[str, Any] = {
    "operation_id": None,
    "operation_type": None,
    "epoch": None,
    "status": "queued",
    "progress": 0.0,
    "message": "",
    "started_at": None,
    "updated_at": None,
    "finished_at": None,
    "metadata": {},
    "event_count": 0,
    "last_seq": 0,
    "worker": None,
    "result": None,
    "error": None,
    "error_type": None,
    "trace_id": None,  # *1.1*: the latest OpenTelemetry trace an event of it was produced in
    "parent_id": None,
}


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix, shared by writers and readers.

    With ``partitions`` > 1 (``TASKCAST_LIVE_PARTITIONS``, for Redis Cluster) the
    live stream, the index and the active set are split in that many partitions,
    and an operation's keys carry its partition's hash tag ``{pN}`` instead of its
    id, so every key one append touches is in one Cluster slot. An operation's
    partition is the CRC-32 of its id modulo ``partitions``, the same for every
    writer and reader.
    """

    prefix: str = "taskcast:"
    partitions: int = 1

    def partition(self, operation_id: str) -> int:
        if self.partitions == 1:
            return 0  # no hashing on every append of the single-partition layout
        return zlib.crc32(operation_id.encode()) % self.partitions

    def _tag(self, operation_id: str) -> str:
        if self.partitions == 1:
            return f"op:{{{operation_id}}}"
        return f"{{p{self.partition(operation_id)}}}:op:{operation_id}"

    def _shared(self, name: str, partition: int) -> str:
        if self.partitions == 1:
            return f"{self.prefix}{name}"
        return f"{self.prefix}{{p{partition}}}:{name}"

    def snapshot(self, operation_id: str) -> str:
        return f"{self.prefix}{self._tag(operation_id)}"

    def history(self, operation_id: str) -> str:
        return f"{self.prefix}{self._tag(operation_id)}:events"

    def once(self, operation_id: str, name: str) -> str:
        """Marker that the event ``name`` of an operation was stored (expires after minutes)."""
        return f"{self.prefix}{self._tag(operation_id)}:once:{name}"

    def members(self, operation_id: str) -> str:
        """A group's or chord's aggregate of its members (see :mod:`taskcast.members`)."""
        return f"{self.prefix}{self._tag(operation_id)}:members"

    def live(self, operation_id: str) -> str:
        """The live stream (partition) an operation's events go to."""
        return self._shared("events", self.partition(operation_id))

    def index(self, operation_id: str) -> str:
        return self._shared("ops", self.partition(operation_id))

    def active(self, operation_id: str) -> str:
        return self._shared("active", self.partition(operation_id))

    def types(self, operation_id: str) -> str:
        """The type names of an operation's partition (see the module docstring)."""
        return self._shared("types", self.partition(operation_id))

    def types_seen(self, operation_id: str) -> str:
        """When each type's index in an operation's partition was last written."""
        return self._shared("types:seen", self.partition(operation_id))

    def type_index_prefix(self, operation_id: str) -> str:
        """What names a type's index in an operation's partition, before the type's name:
        the append script names the index from the type it finds in the snapshot."""
        return self._shared("type:", self.partition(operation_id))

    def type_indexes(self, names: Iterable[tuple[int, str]]) -> list[str]:
        """The indexes of types, each given as ``(partition, name)``."""
        return [self._shared(f"type:{name}", partition) for partition, name in names]

    @property
    def type_sets(self) -> list[str]:
        """Every partition's ``types``, for prefix lookups."""
        return [self._shared("types", n) for n in range(self.partitions)]

    @property
    def lives(self) -> list[str]:
        """Every live-stream partition, for the bridges' tails."""
        return [self._shared("events", n) for n in range(self.partitions)]

    @property
    def indexes(self) -> list[str]:
        return [self._shared("ops", n) for n in range(self.partitions)]

    @property
    def actives(self) -> list[str]:
        return [self._shared("active", n) for n in range(self.partitions)]

    def listing(self, status: str | None) -> list[str]:
        """The sorted sets a listing with ``status`` walks: only unfinished ids for ``active``."""
        return self.actives if status == "active" else self.indexes

    @property
    def workers(self) -> str:
        return f"{self.prefix}workers"

    @property
    def worker_starts(self) -> str:
        return f"{self.prefix}workers:started"

    @property
    def bridges(self) -> str:
        """Hash: ``host:pid`` -> JSON hub counters of that bridge process."""
        return f"{self.prefix}bridges"

    @property
    def bridges_seen(self) -> str:
        """Sorted set: ``host:pid`` -> when that bridge process last reported."""
        return f"{self.prefix}bridges:seen"

    @property
    def producers(self) -> str:
        """Hash: ``host:pid`` -> JSON counters of that process's producer (and ``at``)."""
        return f"{self.prefix}producers"


@dataclass(frozen=True)
class LiveEvent:
    """One entry of the live stream, as the bridge routes it without decoding JSON."""

    stream_id: bytes
    operation_id: str
    seq: int
    operation_type: str
    payload: bytes
    epoch: str = ""


def merge_newest(pages: Iterable[list[tuple[bytes, float]]], start: int, count: int) -> list[bytes]:
    """Ranks ``start`` to ``start + count - 1`` of several newest-first listings merged.

    Each page is the top ``start + count`` of one partition (``ZREVRANGE ...
    WITHSCORES``); ties keep a stable order, by partition.
    """
    merged = sorted(
        ((score, n, member) for n, page in enumerate(pages) for member, score in page),
        key=lambda item: (-item[0], item[1]),
    )
    return [member for _, _, member in merged[start : start + count]]


def score(timestamp: float) -> int:
    """A time as the index and active sets score it: integer microseconds (see the store)."""
    return int(timestamp * 1_000_000)


def decode_snapshot(raw: Mapping[bytes, bytes]) -> dict[str, Any] | None:
    """Turn a snapshot hash into PROTOCOL.md's operation object (None if absent)."""
    if not raw:
        return None
    snapshot = dict(SNAPSHOT_DEFAULTS)
    for key, value in raw.items():
        name = key.decode()
        if name not in _INTERNAL_FIELDS and not name.startswith("_"):
            snapshot[name] = orjson.loads(value)
    snapshot["event_count"] = snapshot["last_seq"]
    return snapshot


def producer_totals(raw: Mapping[bytes, bytes]) -> dict[str, int]:
    """The producer reports of every process, summed per counter, plus ``processes``."""
    totals: dict[str, int] = {"processes": len(raw)}
    for report in raw.values():
        for name, value in orjson.loads(report).items():
            if name != "at":
                totals[name] = totals.get(name, 0) + int(value)
    return totals


def decode_live(entries: Iterable[tuple[bytes, Mapping[bytes, bytes]]]) -> list[LiveEvent]:
    """Decode live-stream entries as returned by XREAD/XRANGE."""
    return [
        LiveEvent(
            stream_id=stream_id,
            operation_id=fields[b"o"].decode(),
            seq=int(fields[b"s"]),
            operation_type=fields[b"t"].decode(),
            payload=fields[b"e"],
            epoch=fields.get(b"p", b'""')[1:-1].decode(),
        )
        for stream_id, fields in entries
    ]


def decode_history(
    entries: Iterable[tuple[bytes, Mapping[bytes, bytes]]],
) -> list[tuple[int, bytes]]:
    """History entries as ``(seq, event JSON)`` pairs."""
    return [(int(entry_id.split(b"-", 1)[0]), fields[b"e"]) for entry_id, fields in entries]


def matches(
    snapshot: Mapping[str, Any], status: str | None, operation_type: str | None = None
) -> bool:
    """The ``list_operations`` filters: ``status`` (``active``, ``finished`` or one status
    name) and ``operation_type`` (a type, or a prefix ending in ``*``)."""
    return _status_matches(snapshot, status) and _type_matches(snapshot, operation_type)


def _status_matches(snapshot: Mapping[str, Any], status: str | None) -> bool:
    if status is None:
        return True
    finished = snapshot.get("status") in FINISHED_STATUSES
    if status == "active":
        return not finished
    if status == "finished":
        return finished
    return snapshot.get("status") == status


def _type_matches(snapshot: Mapping[str, Any], operation_type: str | None) -> bool:
    if operation_type is None:
        return True
    actual = snapshot.get("operation_type")
    if not isinstance(actual, str):
        return False
    prefix = type_prefix(operation_type)
    return actual == operation_type if prefix is None else actual.startswith(prefix)


def type_prefix(operation_type: str) -> str | None:
    """The prefix a ``list_operations`` type filter ending in ``*`` asks for; None for an
    exact type (a trailing ``*`` always means a prefix)."""
    return operation_type[:-1] if operation_type.endswith("*") else None


def lex_range(prefix: str) -> tuple[bytes, bytes]:
    """ZRANGEBYLEX bounds of the names that start with ``prefix`` (UTF-8 has no 0xff byte,
    so every such name sorts below ``prefix`` followed by one)."""
    raw = prefix.encode()
    return b"[" + raw, b"(" + raw + b"\xff"


def matching_types(
    keys: Keys, operation_type: str, found: Iterable[list[bytes]] | None = None
) -> list[str]:
    """The type indexes a type filter reads: an exact type's in every partition, or those
    of the names ``found`` in each partition's ``types`` by :func:`lex_range`."""
    if found is None:
        return keys.type_indexes((n, operation_type) for n in range(keys.partitions))
    return keys.type_indexes(
        (partition, name.decode()) for partition, names in enumerate(found) for name in names
    )


def history_start(since: int) -> str:
    """The exclusive XRANGE start for events after ``since``."""
    return f"({since}-0" if since > 0 else "-"


def is_recovered(since: int, history: list[tuple[int, bytes]], last_seq: int) -> bool:
    """Whether ``history`` holds every event after ``since`` (PROTOCOL.md's ``recovered``)."""
    if last_seq == 0:
        return since == 0
    if not history:
        return since >= last_seq
    return history[0][0] <= since + 1
