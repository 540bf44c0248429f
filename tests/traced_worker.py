"""A Celery app traced by OpenTelemetry's Celery instrumentation, for tests/test_tracing.py.

Set up the way a traced project sets up its worker: a tracer provider (exporting
nowhere: the test reads the ids from taskcast's events), then
``CeleryInstrumentor().instrument()``, then the app and ``taskcast.instrument(app)``.
In that order OpenTelemetry's signal handlers run before taskcast's, so even
``running`` (``task_prerun``) is produced inside the task's span. Run with
``celery -A traced_worker worker`` and ``tests/`` on ``PYTHONPATH``.
"""

from __future__ import annotations

from celery import Celery
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import TracerProvider

import taskcast
from taskcast import ProgressTask
from taskcast.worker_config import celery_config, load_settings

trace.set_tracer_provider(TracerProvider())
CeleryInstrumentor().instrument()

app = Celery("taskcast_traced_tests")
app.conf.update(celery_config(load_settings()))
taskcast.instrument(app)


@app.task(bind=True, base=ProgressTask, name="test.traced")
def traced(self: ProgressTask) -> dict[str, str | None]:
    """Reports progress and returns the ids of the span it ran in, as OpenTelemetry sees it."""
    self.progress(0.5, "half way")
    context = trace.get_current_span().get_span_context()
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }
