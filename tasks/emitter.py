"""Emitting events for work that is not a Celery task (the original ``ws_manager`` API).

A script, a web request handler or an asyncio service can report progress
exactly like a task does: create an operation, emit progress/status/log,
then a result and completion or an error. :class:`Emitter` is the blocking
flavour; :class:`AsyncEmitter` runs the same calls in a worker thread so the
event loop never waits on Redis. Event building lives only in
:class:`Emitter`; ``ProgressTask`` uses it too.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import time
import traceback as traceback_module
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Any

from taskcast.events import (
    Event,
    Parent,
    bounded_result,
    error_data,
    log_data,
    progress_data,
    status_data,
)
from taskcast.tasks.canvas import parent_of
from taskcast.tasks.runtime import get_producer
from taskcast.tasks.tracker import ProgressTracker
from taskcast.tracing import current_span_ids

if TYPE_CHECKING:
    from taskcast.tasks.producer import Producer


class Emitter:
    """Blocking event emission through a producer (default: the current one, see ``runtime``).

    Like every producer call, nothing here raises because Redis is down;
    invalid arguments (an unknown log level) do raise ``ValueError``.
    """

    def __init__(self, producer: Producer | None = None) -> None:
        self._producer = producer

    @property
    def producer(self) -> Producer:
        """The fixed producer, else the one ``taskcast.tasks.configure`` set last."""
        if self._producer is not None:
            return self._producer
        return get_producer()

    def emit(
        self,
        event_type: str,
        operation_id: str,
        data: dict[str, Any],
        operation_type: str | None = None,
        metadata: dict[str, Any] | None = None,
        parent: Parent | None = None,
    ) -> int:
        """Emit one event; the seq it got, or 0 (held back, dropped or after the end).

        The event carries the caller's current OpenTelemetry span, taken here and not
        when it is stored: a held-back progress value is stored later, by another thread.
        Without ``parent``, a task this process runs as a group member names its group.
        """
        trace_id, span_id = current_span_ids()
        return self.producer.emit(
            Event(
                event_type,
                operation_id,
                data,
                time.time(),
                operation_type,
                metadata,
                trace_id=trace_id,
                span_id=span_id,
                parent=parent or parent_of(operation_id),
            )
        )

    def create_operation(
        self,
        operation_type: str,
        metadata: dict[str, Any] | None = None,
        operation_id: str | None = None,
    ) -> str:
        """Record a new operation as ``queued`` and return its id."""
        operation_id = operation_id or str(uuid.uuid4())
        self.emit("status", operation_id, status_data("queued"), operation_type, metadata)
        return operation_id

    def emit_running(
        self,
        operation_id: str,
        operation_type: str | None = None,
        metadata: dict[str, Any] | None = None,
        worker: str | None = None,
    ) -> None:
        """Record that the work started (this also reopens an operation that ended)."""
        details = {"worker": worker or socket.gethostname()}
        self.emit(
            "status",
            operation_id,
            status_data("running", details=details),
            operation_type,
            metadata,
        )

    def emit_progress(
        self,
        operation_id: str,
        progress: float | None = None,
        message: str = "",
        details: dict[str, Any] | None = None,
        *,
        current: float | None = None,
        total: float | None = None,
    ) -> int:
        """Progress as a 0.0-1.0 fraction or as ``current``/``total`` counts (coalesced).

        Like every ``emit_*``: the seq, 0 if held back or dropped, ``ENDED`` if the
        operation has ended."""
        return self.emit(
            "progress", operation_id, progress_data(progress, message, details, current, total)
        )

    def emit_status(
        self,
        operation_id: str,
        status: str,
        message: str = "",
        details: dict[str, Any] | None = None,
    ) -> int:
        return self.emit("status", operation_id, status_data(status, message, details))

    def emit_log(self, operation_id: str, level: str, message: str) -> int:
        """A log line for watchers; ``level`` is debug, info, warning or error."""
        return self.emit("log", operation_id, log_data(level, message))

    def emit_result(self, operation_id: str, result: Any) -> None:
        """The return value, truncated as PROTOCOL.md allows when too large or not JSON."""
        limit = self.producer.settings.result_max_bytes
        self.emit("result", operation_id, bounded_result(result, limit))

    def emit_completed(self, operation_id: str, duration: float | None = None) -> None:
        """Terminal success; ``duration`` is seconds from running to done."""
        self.emit("completed", operation_id, {"status": "completed", "duration": duration})

    def emit_error(
        self,
        operation_id: str,
        error: str,
        error_type: str = "Error",
        status: str = "failed",
        traceback: str | None = None,
    ) -> None:
        """Terminal failure; ``status`` is failed, revoked or lost."""
        self.emit("error", operation_id, error_data(error, error_type, status, traceback))

    def finish(self, operation_id: str, result: Any = None, duration: float | None = None) -> None:
        """Emit ``result`` (unless None) then ``completed``."""
        if result is not None:
            self.emit_result(operation_id, result)
        self.emit_completed(operation_id, duration)

    def emit_exception(self, operation_id: str, exc: BaseException) -> None:
        """Terminal failure from an exception; the traceback only if settings allow it."""
        trace = None
        if self.producer.settings.send_traceback:
            trace = "".join(traceback_module.format_exception(type(exc), exc, exc.__traceback__))
        self.emit_error(
            operation_id, str(exc) or type(exc).__name__, type(exc).__name__, "failed", trace
        )

    def operation(
        self,
        operation_type: str,
        metadata: dict[str, Any] | None = None,
        operation_id: str | None = None,
    ) -> Operation:
        """A context manager: ``running`` on entry, ``completed`` or ``error`` on exit."""
        return Operation(self, operation_type, metadata, operation_id)


class Operation:
    """One operation of an :class:`Emitter`, bound to its id.

    ``with emitter.operation("report") as op:`` emits ``running`` on entry;
    when the block ends, ``completed`` with its duration, or, when it raises,
    ``error`` and the exception goes on. :meth:`finish` inside the block
    emits the result and completion early; the exit then adds nothing.
    """

    def __init__(
        self,
        emitter: Emitter,
        operation_type: str,
        metadata: dict[str, Any] | None = None,
        operation_id: str | None = None,
    ) -> None:
        self.emitter = emitter
        self.operation_type = operation_type
        self.metadata = metadata
        self.id = operation_id or str(uuid.uuid4())
        self.started = time.monotonic()
        self.ended = False

    def progress(
        self,
        progress: float | None = None,
        message: str = "",
        details: dict[str, Any] | None = None,
        *,
        current: float | None = None,
        total: float | None = None,
    ) -> Any:
        return self.emitter.emit_progress(
            self.id, progress, message, details, current=current, total=total
        )

    def status(self, status: str, message: str = "", details: dict[str, Any] | None = None) -> Any:
        return self.emitter.emit_status(self.id, status, message, details)

    def log(self, level: str, message: str) -> Any:
        return self.emitter.emit_log(self.id, level, message)

    def result(self, result: Any) -> Any:
        return self.emitter.emit_result(self.id, result)

    def tracker(self, total_steps: int) -> ProgressTracker:
        """A step tracker whose ``complete(result)`` calls :meth:`finish`."""
        return ProgressTracker(self.progress, total_steps, finish=self.finish)

    def duration(self) -> float:
        return round(time.monotonic() - self.started, 6)

    def start(self) -> None:
        self.started = time.monotonic()
        self.emitter.emit_running(self.id, self.operation_type, self.metadata)

    def finish(self, result: Any = None) -> Any:
        """Emit ``result`` (unless None) and ``completed``; returns ``result``."""
        self.ended = True
        self.emitter.finish(self.id, result, self.duration())
        return result

    def fail(self, exc: BaseException) -> None:
        self.ended = True
        self.emitter.emit_exception(self.id, exc)

    def __enter__(self) -> Operation:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.ended:
            return
        if exc is None:
            self.finish()
        else:
            self.fail(exc)


def _in_thread(name: str) -> Callable[..., Awaitable[Any]]:
    """The :class:`Emitter` method ``name`` as a coroutine that runs it in a thread."""
    sync_method = getattr(Emitter, name)

    @functools.wraps(sync_method)
    async def method(self: AsyncEmitter, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(getattr(self.sync, name), *args, **kwargs)

    return method


class AsyncEmitter:
    """The :class:`Emitter` API as coroutines; each call runs in a thread.

    The store call may wait up to the emit timeout (or a lock held by the
    progress flusher), which must never stall an event loop.
    """

    def __init__(self, producer: Producer | None = None) -> None:
        self.sync = Emitter(producer)

    create_operation = _in_thread("create_operation")
    emit_running = _in_thread("emit_running")
    emit_progress = _in_thread("emit_progress")
    emit_status = _in_thread("emit_status")
    emit_log = _in_thread("emit_log")
    emit_result = _in_thread("emit_result")
    emit_completed = _in_thread("emit_completed")
    emit_error = _in_thread("emit_error")
    emit_exception = _in_thread("emit_exception")
    finish = _in_thread("finish")

    def operation(
        self,
        operation_type: str,
        metadata: dict[str, Any] | None = None,
        operation_id: str | None = None,
    ) -> AsyncOperation:
        """An ``async with`` context manager; its methods are awaited."""
        return AsyncOperation(self, operation_type, metadata, operation_id)  # type: ignore[arg-type]


class AsyncOperation(Operation):
    """:class:`Operation` for an :class:`AsyncEmitter`: ``async with``, awaited methods."""

    emitter: AsyncEmitter  # type: ignore[assignment]

    async def start(self) -> None:  # type: ignore[override]
        self.started = time.monotonic()
        await self.emitter.emit_running(self.id, self.operation_type, self.metadata)

    async def finish(self, result: Any = None) -> Any:
        self.ended = True
        await self.emitter.finish(self.id, result, self.duration())
        return result

    async def fail(self, exc: BaseException) -> None:  # type: ignore[override]
        self.ended = True
        await self.emitter.emit_exception(self.id, exc)

    async def __aenter__(self) -> AsyncOperation:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.ended:
            return
        if exc is None:
            await self.finish()
        else:
            await self.fail(exc)


ws_manager = AsyncEmitter()
"""The original design's module-level emitter, following ``taskcast.tasks.configure``."""

_streaming: ContextVar[AsyncOperation] = ContextVar("taskcast_streaming")


class StreamingMixin:
    """Streaming for any class with async methods (the original ``StreamingMixin``).

    ``async with self.stream_operation("process_data", {...}):`` then
    ``await self.emit_progress(0.5, "Processing")`` inside the block; the
    operation is per asyncio task, so concurrent calls do not mix.
    """

    streaming_emitter: AsyncEmitter = ws_manager

    @asynccontextmanager
    async def stream_operation(
        self, operation_type: str, metadata: dict[str, Any] | None = None
    ) -> AsyncIterator[AsyncOperation]:
        async with self.streaming_emitter.operation(operation_type, metadata) as op:
            token = _streaming.set(op)
            try:
                yield op
            finally:
                _streaming.reset(token)

    async def emit_progress(
        self, progress: float | None = None, message: str = "", details: dict | None = None
    ) -> None:
        await _streaming.get().progress(progress, message, details)

    async def emit_status(
        self, status: str, message: str = "", details: dict | None = None
    ) -> None:
        await _streaming.get().status(status, message, details)

    async def emit_log(self, level: str, message: str) -> None:
        await _streaming.get().log(level, message)

    async def emit_result(self, result: Any) -> None:
        await _streaming.get().result(result)
