"""The dashboard with 10,000 operations, and its activity chart, in a real headless
Chromium fed by a real bridge.

What a user notices with a big list: it shows up quickly, scrolling reaches the
oldest operation, a burst of live events does not freeze the page, and the
filter and the detail view still work. The page is virtualised, so the number
of rows in the DOM stays small whatever the list's length: that is asserted;
the times are measured in the browser and printed (and written to
``test-artifacts/dashboard-scale.json``) with only generous bounds, since these
machines are noisy. BENCHMARKS.md quotes a run.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time

from bridge_helpers import RestartableBridge
from helpers import ROOT_DIR
from playwright.sync_api import Page, expect
from test_dashboard_browser import (
    browser,
    open_dashboard,
    page,
    page_url,
    row_of,
    screenshot,
    wait_state,
)

from taskcast.events import Event, status_data
from taskcast.store import EventStore

__all__ = ["browser", "page"]  # the browser tests' fixtures, used here by name

OPERATIONS = 10_000
BURST = 1_000
MAX_DOM_ROWS = 200
LOAD_TIMEOUT_MS = 60_000

# Long main-thread tasks (> 50 ms) as Chromium reports them: how long the page froze.
LONG_TASKS = """
window.__longTasks = [];
new PerformanceObserver((list) => window.__longTasks.push(...list.getEntries().map(
  (task) => ({start: task.startTime, duration: task.duration}))))
  .observe({entryTypes: ['longtask']});
"""

SCROLL_TO_BOTTOM = """
async (operationId) => {
  const list = document.getElementById('operations');
  const start = performance.now();
  list.scrollTop = list.scrollHeight;
  const selector = `[data-operation-id='${operationId}']`;
  while (!document.querySelector(selector) && performance.now() - start < 10000) {
    await new Promise(requestAnimationFrame);
  }
  return document.querySelector(selector) ? performance.now() - start : null;
}
"""


def op_id(number: int) -> str:
    return f"bulk-{number:05d}"


def is_running(number: int) -> bool:
    """Three in four are running, the rest completed."""
    return number % 4 != 0


def store_operations(store: EventStore, count: int) -> None:
    """``count`` operations, one a second back from now, newest last (the list's top)."""
    start = time.time() - count
    events = []
    for number in range(count):
        ts = start + number
        events.append(
            Event("status", op_id(number), status_data("running"), ts, operation_type="bulk.job")
        )
        if not is_running(number):
            events.append(Event("completed", op_id(number), {"duration": 0.5}, ts + 0.5))
    for first in range(0, len(events), 2000):
        store.append_many(events[first : first + 2000])


def dom_rows(page: Page) -> int:
    return page.locator("[data-testid=operation-row]").count()


def since_navigation(page: Page) -> float:
    return page.evaluate("performance.now()")


def test_ten_thousand_operations_stay_usable(
    page: Page, restartable_bridge: RestartableBridge, store: EventStore
) -> None:
    store_operations(store, OPERATIONS)
    page.add_init_script(LONG_TASKS)
    figures: dict[str, float | int | str] = {"operations": OPERATIONS, "load": load_average()}

    page.goto(page_url(restartable_bridge))
    page.locator("[data-testid=operation-row]").first.wait_for()
    figures["first_rows_ms"] = since_navigation(page)
    expect(page.locator("[data-testid=operation-row]").first).to_have_attribute(
        "data-operation-id", op_id(OPERATIONS - 1)
    )
    # Predicates as functions: the page's CSP forbids evaluating strings.
    page.wait_for_function(
        f"() => document.querySelector('[data-count=all]').textContent === '{OPERATIONS}'",
        timeout=LOAD_TIMEOUT_MS,
    )
    figures["all_listed_ms"] = since_navigation(page)
    expect(page.locator("[data-count=finished]")).to_have_text(str(OPERATIONS // 4))
    figures["dom_rows"] = dom_rows(page)
    assert figures["dom_rows"] < MAX_DOM_ROWS

    oldest = op_id(0)
    figures["scroll_to_bottom_ms"] = page.evaluate(SCROLL_TO_BOTTOM, oldest)
    assert figures["scroll_to_bottom_ms"] is not None, "scrolling never reached the oldest row"
    expect(page.locator(row_of(oldest))).to_be_in_viewport()
    assert dom_rows(page) < MAX_DOM_ROWS

    # The burst's last event moves a row in view, the others rows mostly not rendered.
    burst = [number for number in range(OPERATIONS) if is_running(number)][:BURST]
    page.evaluate("window.__burstStart = performance.now()")
    store.append_many(
        [Event("progress", op_id(number), {"progress": 0.5}) for number in reversed(burst)]
    )
    moved = row_of(op_id(burst[0]))
    wait_state(page, f"{moved}[data-progress='0.5']", LOAD_TIMEOUT_MS)
    figures["burst_applied_ms"] = page.evaluate("performance.now() - window.__burstStart")
    figures["longest_task_in_burst_ms"] = page.evaluate(
        "Math.max(0, ...window.__longTasks.filter((t) => t.start >= window.__burstStart)"
        ".map((t) => t.duration))"
    )
    figures["longest_task_ms"] = page.evaluate(
        "Math.max(0, ...window.__longTasks.map((t) => t.duration))"
    )
    expect(page.locator(f"{moved} [data-testid=operation-progress]")).to_have_attribute(
        "aria-valuenow", "50"
    )
    assert dom_rows(page) < MAX_DOM_ROWS

    page.get_by_test_id("filter-finished").click()  # back to the top, of finished ones only
    rows = page.locator("#operations > [data-testid=operation-row]")
    newest_finished = op_id(max(n for n in range(OPERATIONS) if not is_running(n)))
    expect(rows.first).to_have_attribute("data-operation-id", newest_finished)
    statuses = rows.evaluate_all("rows => rows.map(row => row.dataset.status)")
    assert set(statuses) == {"completed"} and len(statuses) < MAX_DOM_ROWS
    page.locator(f"{row_of(newest_finished)} .op-link").click()
    wait_state(page, f"#detail[data-operation-id='{newest_finished}'][data-status=completed]")
    expect(page.locator(row_of(newest_finished))).to_have_attribute("aria-current", "true")
    screenshot(page, "dashboard-scale.png")

    report(figures)
    assert figures["all_listed_ms"] < LOAD_TIMEOUT_MS


def test_the_chart_shows_events_per_second_while_events_flow(
    page: Page, restartable_bridge: RestartableBridge, store: EventStore
) -> None:
    running = [f"chart-{number}" for number in range(3)]
    for operation_id in running:
        store.append(Event("status", operation_id, status_data("running"), operation_type="t"))
    open_dashboard(page, page_url(restartable_bridge))
    chart = page.get_by_test_id("chart-events")
    expect(chart.locator(".chart-line")).to_have_attribute("d", re.compile("^M"))  # a first sample
    expect(chart).to_have_attribute("data-current", "0")

    stop = threading.Event()
    producer = threading.Thread(target=produce_progress, args=(store, running, stop))
    producer.start()
    try:
        page.wait_for_function(
            "() => Number(document.querySelector('[data-testid=chart-events]').dataset.current)"
            " >= 5"
        )
    finally:
        stop.set()
        producer.join()
    expect(page.get_by_test_id("chart-active")).to_have_attribute("data-current", "3")
    line = chart.locator(".chart-line").get_attribute("d") or ""
    heights = {float(point.split(",")[1]) for point in line.replace("M", "L").split("L")[1:]}
    assert len(heights) > 1, f"a flat line while events flowed: {line}"
    assert float(chart.get_attribute("data-peak") or 0) >= 5
    expect(chart.locator(".chart-value")).not_to_have_text("0")


def produce_progress(store: EventStore, operations: list[str], stop: threading.Event) -> None:
    """About 30 progress events a second over ``operations`` until ``stop``."""
    step = 0
    while not stop.is_set():
        step += 1
        for operation_id in operations:
            store.append(Event("progress", operation_id, {"progress": (step % 100) / 100}))
        stop.wait(0.1)


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} / {five:.2f} on {os.cpu_count()} cores"


def report(figures: dict[str, float | int | str]) -> None:
    """Printed (pytest -s shows it) and kept next to the screenshots."""
    shown = {k: round(v) if isinstance(v, float) else v for k, v in figures.items()}
    print("\ndashboard with", json.dumps(shown))
    artifacts = ROOT_DIR / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "dashboard-scale.json").write_text(json.dumps(shown, indent=2) + "\n")


def test_a_burst_of_new_operations_is_looked_up_without_hitting_the_rate_limit(
    page: Page, restartable_bridge: RestartableBridge, store: EventStore
) -> None:
    """400 operations the page never saw start at once: their snapshots (here: their type)
    arrive through a listing, not 400 get_operation commands the bridge would refuse past
    its command rate."""
    open_dashboard(page, page_url(restartable_bridge))
    count = 400
    store.append_many(
        [
            Event("status", f"burst-{n:04d}", status_data("queued"), operation_type="burst.job")
            for n in range(count)
        ]
    )
    expect(page.locator('[data-count="all"]')).to_have_text(str(count))
    newest = row_of(f"burst-{count - 1:04d}")
    expect(page.locator(f"{newest} .op-type")).to_have_text("burst.job")
    expect(page.get_by_test_id("toast")).to_be_hidden()
