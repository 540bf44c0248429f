"""A group on the dashboard, in a real headless Chromium fed by a real bridge and worker:
one row with the combined bar, expanding to its members, which are not rows of their own."""

from __future__ import annotations

from bridge_helpers import RestartableBridge
from celery import Celery, group
from helpers import wait_finished
from playwright.sync_api import Page, expect
from test_dashboard_browser import (
    browser,
    open_dashboard,
    page,
    page_url,
    screenshot,
    seen,
    wait_state,
)
from test_groups import steps

from taskcast.store import EventStore

__all__ = ["browser", "page"]  # the browser tests' fixtures, used here by name


def test_a_group_is_one_row_with_a_combined_bar_that_expands_to_its_members(
    page: Page,
    restartable_bridge: RestartableBridge,
    worker_process,
    task_app: Celery,
    store: EventStore,
) -> None:
    worker = worker_process(concurrency=3)
    open_dashboard(page, page_url(restartable_bridge))

    members = [
        steps(task_app, worker.queue, count=5, delay=0.1)
        for _ in range(5)
    ]
    result = group(members).apply_async()
    row = f"#operations > [data-testid=operation-row][data-operation-id='{result.id}']"
    wait_state(page, f"{row}[data-status=completed][data-progress='1']")
    wait_finished(store, result.id)

    progress = seen(page)["progress"][result.id]
    assert progress == sorted(progress) and len({v for v in progress if 0 < v < 1}) >= 2, progress
    expand = page.locator(f"{row} > [data-testid=operation-expand]")
    expect(expand).to_have_text("5 tasks")
    nested = page.locator(f"{row} [data-testid=operation-members] > [data-testid=operation-row]")
    expect(nested).to_have_count(5)
    expect(nested.first).to_be_hidden()
    expand.click()
    expect(nested.first).to_be_visible()
    children = [child.id for child in result.results]
    ids = nested.evaluate_all("rows => rows.map(row => row.dataset.operationId)")
    assert ids == children
    for child in children:
        expect(nested.locator(f"xpath=self::*[@data-operation-id='{child}']")).to_have_attribute(
            "data-status", "completed"
        )
        top = page.locator(f"#operations > [data-operation-id='{child}']")
        expect(top).to_have_count(0)
    screenshot(page, "dashboard-group.png")
