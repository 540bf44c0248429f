"""The OpenTelemetry span an event is produced in: PROTOCOL.md 1.1 ``trace_id``/``span_id``.

OpenTelemetry is optional (``taskcast[otel]``), and taskcast never imports it.
A span can only be current in a process that imported ``opentelemetry.trace``
(whoever started the span did), so that module already being in
``sys.modules`` is the whole test: without it, an event costs one dictionary
lookup and nothing is loaded. The lookup is per event, not cached at the first
one, because a process may set up tracing after it emitted its first event.
"""

from __future__ import annotations

import sys
from typing import TypeAlias

SpanIds: TypeAlias = tuple[str, str] | tuple[None, None]
NO_SPAN: SpanIds = (None, None)

# The last span context seen and its ids: a task emits many events in one span, and
# formatting two large integers as hex costs more than finding the span. Holding the
# context keeps it alive, so an identical identity is the same span.
_last: tuple[object, SpanIds] = (None, NO_SPAN)


def current_span_ids() -> SpanIds:
    """``(trace_id, span_id)`` of the current span as lowercase hex (32 and 16 characters),
    or ``(None, None)`` outside a valid span or without OpenTelemetry."""
    global _last
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return NO_SPAN
    context = trace.get_current_span().get_span_context()
    seen, ids = _last
    if context is seen:
        return ids
    ids = (f"{context.trace_id:032x}", f"{context.span_id:016x}") if context.is_valid else NO_SPAN
    _last = (context, ids)
    return ids
