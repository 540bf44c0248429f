"""The dashboard page in a real headless Chromium, fed by a real bridge and Celery worker.

What a user watching the page would notice: a running task's bar moving and
ending at 100 % completed, its time left while it runs, the detail view's
event log matching what Redis stored, and the page reconnecting after the
bridge restarts mid-task without losing or repeating an event. On a bridge
that requires tokens: a monitor token from the link works like an open bridge
(and leaves the address bar), no token or a refused one is explained on the
page instead of an empty list, and only a token with the cancel scope gets
Cancel buttons, which revoke the task. Screenshots go to ``test-artifacts/``
for a look.

A script added before the page's own code records, with MutationObservers,
every value the rows' ``data-progress`` and the indicator's ``data-state``
took and every log entry ever added, so the assertions see the whole history
rather than samples taken by polling.
"""

from __future__ import annotations

import re
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from bridge_helpers import RestartableBridge
from browser_helpers import chromium
from celery import Celery
from helpers import AUTH_SECRET, ROOT_DIR, events_of, wait_finished
from playwright.sync_api import Browser, Page, expect

from taskcast import mint_token
from taskcast.events import Event, status_data
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




def token(*scopes: str, ops: list[str] | str = "*", ttl: float = 300) -> str:
    return mint_token(ops, scopes=scopes, ttl=ttl, secret=AUTH_SECRET)


def page_url(
    bridge: RestartableBridge, operation_id: str | None = None, token: str | None = None
) -> str:
    query = f"?operation={operation_id}" if operation_id else ""
    fragment = f"#token={token}" if token else ""
    return f"http://127.0.0.1:{bridge.port}/{query}{fragment}"


def wait_state(page: Page, selector: str, timeout_ms: int = TIMEOUT_MS) -> None:
    page.locator(selector).wait_for(state="attached", timeout=timeout_ms)


def open_dashboard(page: Page, url: str) -> None:
    """Load the dashboard at ``url`` and wait until its connection is open."""
    page.goto(url)
    wait_state(page, "#connection[data-state=open]")


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
    open_dashboard(page, page_url(restartable_bridge))

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
    open_dashboard(page, page_url(restartable_bridge, result.id))
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


def test_a_running_task_shows_its_time_left_until_it_ends(
    page: Page, restartable_bridge: RestartableBridge, task_app: Celery
) -> None:
    """``test.sleep``: 40 steps of 0.1 s; once its pace is known the row and the detail
    view say "~3 s left" or so, and nothing once it completed."""
    result = task_app.send_task("test.sleep", kwargs={"seconds": 4.0, "steps": 40})
    page.goto(page_url(restartable_bridge, result.id))
    row_eta = page.locator(f"{row_of(result.id)} [data-testid=operation-eta]")
    expect(row_eta).to_have_text(re.compile(r"^~[1-6] s left$"))
    expect(page.get_by_test_id("detail-eta")).to_have_text(re.compile(r"^~[1-6] s left$"))
    screenshot(page, "dashboard-eta.png")
    wait_state(page, "#detail[data-status=completed]")
    expect(row_eta).to_have_text("")
    expect(page.get_by_test_id("detail-eta")).to_have_text("")


def test_the_type_box_narrows_the_list_to_a_type_or_a_prefix(
    page: Page, restartable_bridge: RestartableBridge, store: EventStore
) -> None:
    """What finds operations by task name on the page: the list keeps the rows of the
    type typed (or of the types starting with a prefix ending in ``*``), live ones too."""
    for op, kind in (("r1", "reports.daily"), ("m1", "mail.send"), ("r2", "reports.weekly")):
        store.append(Event("status", op, status_data("running"), operation_type=kind))
    open_dashboard(page, page_url(restartable_bridge))
    rows = page.locator("#operations > [data-testid=operation-row]")
    box = page.get_by_test_id("type-filter")

    def shown(*ids: str) -> None:
        expect(rows).to_have_count(len(ids))
        assert rows.evaluate_all("rows => rows.map(row => row.dataset.operationId)") == list(ids)

    shown("r2", "m1", "r1")
    box.fill("reports.*")
    shown("r2", "r1")
    store.append(Event("status", "r3", status_data("running"), operation_type="reports.monthly"))
    store.append(Event("status", "m2", status_data("running"), operation_type="mail.send"))
    shown("r3", "r2", "r1")
    screenshot(page, "dashboard-type-filter.png")
    box.fill("mail.send")
    shown("m2", "m1")
    box.fill("reports")  # no such type: a prefix needs its *
    shown()
    expect(page.get_by_test_id("operations-empty")).to_have_text("No operations of type reports.")
    box.fill("")
    shown("m2", "r3", "r2", "m1", "r1")


# --- access control -------------------------------------------------------------------


def row_of(operation_id: str) -> str:
    return f"[data-testid=operation-row][data-operation-id='{operation_id}']"


def test_a_monitor_token_from_the_link_follows_a_task_to_completion(
    page: Page, secured_bridge: RestartableBridge, task_app: Celery, store: EventStore
) -> None:
    monitor = token("monitor")
    open_dashboard(page, page_url(secured_bridge, token=monitor))
    assert "token" not in page.url, f"the token stayed in the address bar: {page.url}"
    assert page.evaluate("sessionStorage.getItem('taskcast.token')") == monitor
    expect(page.get_by_test_id("access-scopes")).to_have_text("monitor")
    expect(page.get_by_test_id("access-panel")).to_be_hidden()

    result = task_app.send_task("demo.generate_code", kwargs={"lines": 10, "delay": 0.12})
    row = row_of(result.id)
    wait_state(page, f"{row}[data-status=processing]")
    expect(page.locator(f"{row} [data-testid=operation-cancel]")).to_be_hidden()
    wait_state(page, f"{row}[data-status=completed][data-progress='1']")
    progress = seen(page)["progress"][result.id]
    assert len({value for value in progress if 0 < value < 1}) >= 2, f"no live bar: {progress}"
    assert progress == sorted(progress), f"the bar went backwards: {progress}"
    expect(page.locator(f"{row} [data-testid=operation-status]")).to_have_text("completed")
    wait_state(page, "[data-testid=stat-total_operations]:not(:text-is('–'))")
    screenshot(page, "dashboard-token-monitor.png")

    page.reload()  # the token is kept for this tab, without the link
    wait_state(page, "#connection[data-state=open]")
    wait_state(page, f"{row}[data-status=completed]")
    expect(page.get_by_test_id("access-panel")).to_be_hidden()


REFUSALS = {
    # kind: (token in the link, the panel's reason, what its title says)
    "no-token": (None, "required", "This bridge requires an access token"),
    "forged": (
        lambda: mint_token("*", scopes=["monitor"], secret="another-key-" + "k" * 32),
        "refused",
        "The bridge refused the access token",
    ),
    "expired": (
        lambda: jwt.encode(
            {"exp": int(time.time()) - 5, "ops": ["*"], "scopes": ["monitor"]}, AUTH_SECRET
        ),
        "expired",
        "The access token has expired",
    ),
}


@pytest.mark.parametrize("kind", sorted(REFUSALS))
def test_without_a_usable_token_the_page_says_why_and_takes_a_new_one(
    page: Page, secured_bridge: RestartableBridge, store: EventStore, kind: str
) -> None:
    make, reason, title = REFUSALS[kind]
    operation_id = f"op-{uuid.uuid4()}"
    store.append(Event("status", operation_id, status_data("running"), operation_type="t"))
    page.goto(page_url(secured_bridge, token=make() if make else None))

    panel = page.get_by_test_id("access-panel")
    expect(panel).to_be_visible()
    expect(panel).to_have_attribute("data-reason", reason)
    expect(page.get_by_test_id("access-title")).to_have_text(title)
    expect(page.get_by_test_id("operations")).to_be_hidden()
    expect(page.get_by_test_id("operations-empty")).to_be_hidden()
    expect(page.get_by_test_id("toast")).to_be_hidden()
    if kind == "forged":
        expect(page.get_by_test_id("access-message")).to_contain_text("invalid token")
    screenshot(page, f"dashboard-token-{kind}.png")

    page.get_by_test_id("token-input").fill("not a token")
    page.get_by_test_id("token-submit").click()
    expect(page.get_by_test_id("token-error")).to_be_visible()

    page.get_by_test_id("token-input").fill(token("monitor"))
    page.get_by_test_id("token-submit").click()
    wait_state(page, "#connection[data-state=open]")
    wait_state(page, f"{row_of(operation_id)}[data-status=running]")
    expect(panel).to_be_hidden()
    assert "token" not in page.url


def test_a_token_without_monitor_says_so_and_still_follows_its_operation(
    page: Page, secured_bridge: RestartableBridge, store: EventStore
) -> None:
    operation_id = f"op-{uuid.uuid4()}"
    store.append(Event("status", operation_id, status_data("running"), operation_type="t"))
    page.goto(page_url(secured_bridge, operation_id, token=token("read", ops=[operation_id])))
    expect(page.get_by_test_id("access-panel")).to_have_attribute("data-reason", "forbidden")
    expect(page.get_by_test_id("access-message")).to_contain_text("monitor scope")
    expect(page.get_by_test_id("monitor-toggle")).to_be_disabled()
    wait_state(page, "#detail[data-status=running]")
    wait_state(page, "[data-testid=log-entry][data-seq='1']")
    expect(page.get_by_test_id("toast")).to_be_hidden()


def test_only_a_token_with_cancel_shows_cancel_buttons_for_running_tasks(
    browser: Browser, page: Page, secured_bridge: RestartableBridge, task_app: Celery
) -> None:
    watcher = browser.new_context()
    watcher.set_default_timeout(TIMEOUT_MS)
    watching = watcher.new_page()
    try:
        page.goto(page_url(secured_bridge, token=token("monitor", "cancel")))
        watching.goto(page_url(secured_bridge, token=token("monitor")))
        for each in (page, watching):
            wait_state(each, "#connection[data-state=open]")
        result = task_app.send_task("demo.generate_code", kwargs={"lines": 15, "delay": 0.12})
        row = row_of(result.id)
        for each in (page, watching):
            wait_state(each, f"{row}[data-status=processing]")
        expect(page.locator(f"{row} [data-testid=operation-cancel]")).to_be_visible()
        expect(watching.locator(f"{row} [data-testid=operation-cancel]")).to_be_hidden()
        screenshot(page, "dashboard-token-cancel.png")
        page.locator(f"{row} .op-link").click()
        expect(page.get_by_test_id("detail-cancel")).to_be_visible()
        screenshot(page, "dashboard-token-cancel-detail.png")
        wait_state(page, f"{row}[data-status=completed]")
        expect(page.locator(f"{row} [data-testid=operation-cancel]")).to_be_hidden()
        expect(page.get_by_test_id("detail-cancel")).to_be_hidden()
    finally:
        watcher.close()


def test_clicking_cancel_revokes_the_running_task(
    page: Page, secured_bridge: RestartableBridge, task_app: Celery, store: EventStore
) -> None:
    operator = token("monitor", "cancel")
    open_dashboard(page, page_url(secured_bridge, token=operator))
    result = task_app.send_task("demo.generate_code", kwargs={"lines": 150, "delay": 0.1})
    row = row_of(result.id)
    wait_state(page, f"{row}[data-status=processing]:not([data-progress='0'])")
    page.locator(f"{row} [data-testid=operation-cancel]").click()
    wait_state(page, f"{row}[data-status=revoked]")
    expect(page.locator(f"{row} [data-testid=operation-cancel]")).to_be_hidden()
    expect(page.get_by_test_id("toast")).to_be_hidden()
    assert float(page.get_attribute(row, "data-progress") or 0) < 1
    screenshot(page, "dashboard-token-cancelled.png")
    last = events_of(store, result.id)[-1]
    assert (last["event_type"], last["data"]["status"]) == ("error", "revoked")
