"""A Server-Sent Events client for tests, reading the stream as EventSource does.

It speaks raw HTTP/1.1 over asyncio streams, so the tests see exactly what a
browser or ``curl -N`` would: the status line, the headers, every message (id,
event, data) and the keep-alive comments, and when the bridge ends the stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson


@dataclass
class SseMessage:
    event: str
    data: Any
    id: str | None


class SseStream:
    """One event-stream request; messages are collected in the background until it ends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self.messages: list[SseMessage] = []
        self.comments = 0
        self.ended = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, headers: dict[str, str] | None = None) -> SseStream:
        """GET ``url`` (``http://host:port/path?query``); returns once the head is read."""
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", "Accept: text/event-stream"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        stream = cls(reader, writer)
        await stream._read_head()
        stream._task = asyncio.create_task(stream._read_body())
        return stream

    async def _read_head(self) -> None:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        status_line, *fields = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split(" ")[1])
        for line in fields:
            name, sep, value = line.partition(":")
            if sep:
                self.headers[name.strip().lower()] = value.strip()

    async def _read_body(self) -> None:
        fields: dict[str, str] = {}
        try:
            while raw := await self.reader.readline():
                self.body += raw
                line = raw.decode().rstrip("\n")
                if line.startswith(":"):
                    self.comments += 1
                elif line:
                    name, _, value = line.partition(":")
                    fields[name] = value[1:] if value.startswith(" ") else value
                elif "data" in fields:
                    data = orjson.loads(fields["data"])
                    event = fields.get("event", "message")
                    self.messages.append(SseMessage(event, data, fields.get("id")))
                    fields = {}
        except ConnectionError:
            pass
        finally:
            self.ended.set()

    def events(self) -> list[SseMessage]:
        """Messages that carry an event (with an id), in arrival order."""
        return [m for m in self.messages if m.id is not None]

    def seqs(self) -> list[int]:
        return [m.data["seq"] for m in self.events()]

    @property
    def last_event_id(self) -> str | None:
        ids = [m.id for m in self.events()]
        return ids[-1] if ids else None

    async def wait_for(self, check: Callable[[SseStream], Any], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while not (result := check(self)):
            if self.ended.is_set() or time.monotonic() > deadline:
                raise AssertionError(
                    f"condition not met (ended={self.ended.is_set()}): {self.messages[-5:]}"
                )
            await asyncio.sleep(0.005)
        return result

    async def wait_ended(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.ended.wait(), timeout)

    async def close(self) -> None:
        self.writer.close()
        if self._task is not None:
            await self._task
