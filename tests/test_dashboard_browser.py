"""The dashboard page in a real headless Chromium, fed by a real bridge and Celery worker.

What a user watching the page would notice: a running task's bar moving and
ending at 100 % completed, the detail view's event log matching what Redis
stored, and the page reconnecting after the bridge restarts mid-task without
losing or repeating an event. Screenshots go to ``test-artifacts/`` for a look.

A script added before the page's own code records, with MutationObservers,
every value the rows' ``data-progress`` and the indicator's ``data-state``
took and every log entry ever added, so the assertions see the whole history
rather than samples taken by polling.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest
from bridge_helpers import RestartableBridge
from browser_helpers import chromium
from celery import Celery
from helpers import ROOT_DIR, events_of, wait_finished
from playwright.sync_api import Browser, Page

from taskcast.store import EventStore

ARTIFACTS = ROOT_DIR / "test-artifacts"
TIMEOUT_MS = 15_000

RECORDER = """
window.__seen = {progress: {}, states: [], logAdded: []};
new MutationObserver((mutations) => {
  const seen = window.__seen;
  for (const m of mutations) {
    const el = m.target;
    if (m.type === 'attributes' && el.dataset.testid === 'operation-row') {
      const values = (seen.progress[el.dataset.operationId] ??= []);
      const value = Number(el.dataset.progress);
      if (values[values.length - 1] !== value) values.push(value);
    } else if (m.type === 'attributes' && el.id === 'connection') {
      seen.states.push(el.dataset.state);
    }
    for (const node of m.addedNodes) {
      if (node.dataset?.testid === 'log-entry') seen.logAdded.push(Number(node.dataset.seq));
    }
  }
}).observe(document, {
  subtree: true, childList: true, attributes: true,
  attributeFilter: ['data-progress', 'data-state'],
});
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page in a fresh context (no storage shared between tests), recording from the start."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(RECORDER)
    yield context.new_page()
    context.close()


def page_url(bridge: RestartableBridge, operation_id: str | None = None) -> str:
    query = f"?operation={operation_id}" if operation_id else ""
    return f"http://127.0.0.1:{bridge.port}/{query}"


def wait_state(page: Page, selector: str, timeout_ms: int = TIMEOUT_MS) -> None:
    page.locator(selector).wait_for(state="attached", timeout=timeout_ms)


def seen(page: Page) -> dict[str, Any]:
    return page.evaluate("window.__seen")


def log_entries(page: Page) -> list[tuple[int, str]]:
    """``(seq, event_type)`` of the detail view's log entries, in page order."""
    entries = page.eval_on_selector_all(
        "[data-testid=event-log] [data-testid=log-entry]",
        "items => items.map(li => [Number(li.dataset.seq), li.dataset.eventType])",
    )
    return [(seq, event_type) for seq, event_type in entries]


def stored(store: EventStore, operation_id: str) -> list[tuple[int, str]]:
    return [(e["seq"], e["event_type"]) for e in events_of(store, operation_id)]


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=path, animations="disabled")
    assert path.read_bytes().startswith(b"\x89PNG"), f"{path} is not a PNG"


def test_task_progress_shows_live_then_detail_log_matches_redis(
    page: Page, restartable_bridge: RestartableBridge, task_app: Celery, store: EventStore
) -> None:
    page.goto(page_url(restartable_bridge))
    wait_state(page, "#connection[data-state=open]")

    result = task_app.send_task("demo.generate_code", kwargs={"lines": 10, "delay": 0.12})
    row = f"[data-testid=operation-row][data-operation-id='{result.id}']"
    wait_state(page, f"{row}[data-status=completed][data-progress='1']")

    progress = seen(page)["progress"][result.id]
    intermediate = {value for value in progress if 0 < value < 1}
    assert len(intermediate) >= 2, f"the bar did not move while running: {progress}"
    assert progress == sorted(progress), f"the bar went backwards: {progress}"
    assert page.get_attribute(f"{row} [data-testid=operation-progress]", "aria-valuenow") == "100"
    assert page.text_content(f"{row} [data-testid=operation-status]") == "completed"
    assert page.text_content(f"{row} [data-testid=operation-message]")
    screenshot(page, "restartable_bridge.png")

    wait_finished(store, result.id)
    events = stored(store, result.id)
    page.goto(page_url(restartable_bridge, result.id))
    wait_state(page, f"#detail[data-operation-id='{result.id}'][data-status=completed]")
    wait_state(page, f"[data-testid=log-entry][data-seq='{len(events)}']")
    assert [seq for seq, _ in events] == list(range(1, len(events) + 1))
    assert log_entries(page) == events
    assert page.get_attribute("#detail", "data-progress") == "1"
    screenshot(page, "dashboard-detail.png")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_page_reconnects_after_bridge_restart_and_shows_every_event_once(
    page: Page,
    restartable_bridge: RestartableBridge,
    task_app: Celery,
    store: EventStore,
    signum: signal.Signals,
) -> None:
    result = task_app.send_task("demo.generate_code", kwargs={"lines": 25, "delay": 0.12})
    page.goto(page_url(restartable_bridge, result.id))
    wait_state(page, "#connection[data-state=open]")
    wait_state(page, "#detail[data-status=processing]:not([data-progress='0'])")

    restartable_bridge.stop(signum)
    seq_at_stop = store.snapshot(result.id)["last_seq"]
    wait_state(page, "#connection:not([data-state=open])")
    restartable_bridge.start()
    assert store.snapshot(result.id)["last_seq"] > seq_at_stop, "no event while the bridge was down"

    wait_state(page, "#connection[data-state=open]")
    wait_state(page, "#detail[data-status=completed][data-progress='1']")
    wait_finished(store, result.id)
    events = stored(store, result.id)
    wait_state(page, f"[data-testid=log-entry][data-seq='{len(events)}']")

    assert log_entries(page) == events
    history = seen(page)
    assert sorted(history["logAdded"]) == list(range(1, len(events) + 1)), "shown twice or lost"
    states = history["states"]
    assert states[-1] == "open" and "open" in states[:-1], f"no reconnect seen: {states}"
    assert set(states[states.index("open") :]) - {"open"}, f"never left open: {states}"
