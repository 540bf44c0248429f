"""The demo's example long-running tasks, declared as a reusable app's tasks are.

``@shared_task`` registers them with whichever app imports this module: the
demo's (``taskcast.demo.worker``) and the test suite's. Each looks like real
work and together they show every event type. Every pause is the ``delay``
argument (seconds per step), so tests run them at full speed and the demo
slowly enough to watch.
"""

from __future__ import annotations

import time
from typing import Any

from celery import shared_task

from taskcast.tasks import ProgressTask


class CodeValidationError(Exception):
    """Raised by ``demo.flaky`` to show a task failing partway."""


@shared_task(bind=True, base=ProgressTask, name="demo.generate_code")
def generate_code(
    self: ProgressTask, request: str = "a sorting function", lines: int = 40, delay: float = 0.0
) -> dict[str, Any]:
    """Write ``lines`` lines of code, then validate them."""
    self.status("processing", f"Planning code for {request!r}")
    code: list[str] = ["def generated():"]
    for i in range(1, lines + 1):
        time.sleep(delay)
        code.append(f"    step_{i} = {i} * 2")
        self.progress(
            0.8 * i / lines,
            f"Generated {i}/{lines} lines of code",
            {"step": "code_generation", "lines_generated": i},
        )
    code.append("    return step_1")
    self.status("validating", "Validating generated code")
    source = "\n".join(code)
    compile(source, "<generated>", "exec")
    self.log("info", "Successfully validated code")
    self.progress(1.0, "Code validation complete", {"lines_validated": len(code), "issues": 0})
    return {"code": source, "validation_passed": True, "lines": len(code)}


@shared_task(bind=True, base=ProgressTask, name="demo.web_search")
def web_search(
    self: ProgressTask, topic: str = "celery progress", queries: int = 3, delay: float = 0.0
) -> dict[str, Any]:
    """Run ``queries`` searches about ``topic`` and collect the results."""
    self.status("searching", f"Searching the web for {topic!r}", {"queries": queries})
    results: list[dict[str, str]] = []
    for q in range(1, queries + 1):
        time.sleep(delay)
        found = [
            {"title": f"{topic} result {q}.{n}", "url": f"https://example.org/{q}/{n}"}
            for n in range(1, q + 2)
        ]
        results.extend(found)
        self.log("info", f"Query {q}: {len(found)} results")
        self.progress(
            current=q,
            total=queries,
            message=f"Ran query {q}/{queries}",
            details={"query": f"{topic} #{q}", "results_found": len(results)},
        )
    self.status("processing", "Processing search results", {"results_found": len(results)})
    time.sleep(delay)
    return {"topic": topic, "results": results}


@shared_task(bind=True, base=ProgressTask, name="demo.orchestrate")
def orchestrate(self: ProgressTask, steps: int = 5, delay: float = 0.0) -> dict[str, Any]:
    """A multi-step pipeline reported with the step tracker."""
    names = ["Initialize", "Fetch inputs", "Process", "Validate", "Generate output", "Cleanup"]
    tracker = self.tracker(total_steps=steps)
    done: list[str] = []
    for i in range(steps):
        name = names[i % len(names)]
        tracker.step(f"Step {i + 1}: {name}")
        time.sleep(delay)
        self.log("debug", f"{name} finished")
        done.append(name)
    return tracker.complete({"steps": done})


@shared_task(bind=True, base=ProgressTask, name="demo.flaky")
def flaky(self: ProgressTask, steps: int = 10, fail_at: float = 0.6, delay: float = 0.0) -> None:
    """Make progress, then fail once ``fail_at`` (a fraction of the steps) is reached."""
    for i in range(1, steps + 1):
        time.sleep(delay)
        if i / steps >= fail_at:
            self.log("error", f"Validation failed at step {i}")
            raise CodeValidationError(f"Code validation failed at step {i} of {steps}")
        self.progress(current=i, total=steps, message=f"Step {i}/{steps}")


@shared_task(bind=True, base=ProgressTask, name="demo.retry_once", max_retries=3)
def retry_once(self: ProgressTask, countdown: float = 0.1, delay: float = 0.0) -> dict[str, Any]:
    """Fail the first attempt with a transient error, succeed on the retry."""
    attempt = self.request.retries + 1
    self.progress(0.3, f"Attempt {attempt}: calling the upstream service")
    time.sleep(delay)
    if attempt == 1:
        try:
            raise ConnectionError("upstream service timed out")
        except ConnectionError as exc:
            raise self.retry(exc=exc, countdown=countdown) from exc
    self.progress(1.0, f"Attempt {attempt}: upstream answered")
    return {"attempts": attempt}
