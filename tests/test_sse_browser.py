"""Server-Sent Events in a real headless Chromium, from a real Celery worker's task:
a bare EventSource follows it to its end, and the JS client falls back to event
streams when WebSocket upgrades fail, delivering every event once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from bridge_helpers import RestartableBridge
from browser_helpers import chromium
from celery import Celery
from helpers import events_of, wait_finished
from playwright.sync_api import Page

from taskcast.store import EventStore

FOLLOW_WITH_EVENTSOURCE = """
(operationId) => new Promise((resolve, reject) => {
  const seen = [];
  const source = new EventSource(`/api/operations/${operationId}/events`);
  const take = (message) => {
    const event = JSON.parse(message.data);
    seen.push([event.seq, event.event_type]);
    if (event.event_type === 'completed' || event.event_type === 'error') {
      source.close();
      resolve({seen, lastEventId: message.lastEventId});
    }
  };
  for (const type of ['status', 'progress', 'log', 'result', 'completed']) {
    source.addEventListener(type, take);
  }
  source.addEventListener('error', (message) => {
    if (typeof message.data === 'string') take(message);
    else if (source.readyState === EventSource.CLOSED) reject(new Error('stream refused'));
  });
})
"""

# The client is pointed at a path where no WebSocket is served, as behind a proxy that
# strips upgrades: every upgrade fails, and after three it uses event streams.
FOLLOW_WITH_CLIENT = """
async ([url, operationId]) => {
  const { TaskcastClient } = await import('/taskcast.js');
  const client = new TaskcastClient(url, { backoff: { baseMs: 50, capMs: 200 } });
  const transports = [];
  client.on('transport', (transport) => transports.push(transport));
  const seen = [];
  const done = new Promise((resolve) => client.on('*', (event) => {
    seen.push([event.seq, event.event_type]);
    if (event.event_type === 'completed') resolve();
  }));
  await client.connect();
  const reply = await client.subscribe(operationId);
  await done;
  const snapshot = await client.getOperation(operationId);
  client.disconnect();
  return { seen, transports, transport: client.transport, reply, status: snapshot.status };
}
"""


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    with chromium() as browser:
        context = browser.new_context()
        context.set_default_timeout(20_000)
        yield context.new_page()
        context.close()


def stored(store: EventStore, operation_id: str) -> list[list[object]]:
    return [[e["seq"], e["event_type"]] for e in events_of(store, operation_id)]


def test_an_eventsource_follows_a_task_to_its_end(
    page: Page, restartable_bridge: RestartableBridge, task_app: Celery, store: EventStore
) -> None:
    page.goto(f"http://127.0.0.1:{restartable_bridge.port}/")
    result = task_app.send_task("demo.generate_code", kwargs={"lines": 8, "delay": 0.05})
    followed = page.evaluate(FOLLOW_WITH_EVENTSOURCE, result.id)
    wait_finished(store, result.id)
    assert followed["seen"] == stored(store, result.id)
    epoch = store.snapshot(result.id)["epoch"]
    assert followed["lastEventId"] == f"{epoch}:{len(followed['seen'])}"


def test_the_js_client_falls_back_to_event_streams_when_upgrades_fail(
    page: Page, restartable_bridge: RestartableBridge, task_app: Celery, store: EventStore
) -> None:
    port = restartable_bridge.port
    page.goto(f"http://127.0.0.1:{port}/")
    result = task_app.send_task("demo.generate_code", kwargs={"lines": 8, "delay": 0.05})
    url = f"ws://127.0.0.1:{port}/no-websocket-here"
    followed = page.evaluate(FOLLOW_WITH_CLIENT, [url, result.id])
    wait_finished(store, result.id)
    assert followed["transports"] == ["sse"]
    assert followed["transport"] == "sse"
    assert followed["reply"]["status"] == "subscribed"
    assert followed["seen"] == stored(store, result.id)
    assert followed["status"] == "completed"
