// What the node suites that run against a real bridge share: the URLs
// tests/test_js_client.py hands them, its control server, and polling.
import assert from 'node:assert/strict';

export const { TASKCAST_WS_URL: WS_URL, TASKCAST_CONTROL_URL: CONTROL_URL } = process.env;
export const FAST_BACKOFF = { baseMs: 50, capMs: 300 };
export const NOT_DRIVEN = !WS_URL || !CONTROL_URL
  ? 'TASKCAST_WS_URL and TASKCAST_CONTROL_URL are set by tests/test_js_client.py'
  : false;

/** POST a JSON body to the test driver's control server; its JSON reply. */
export async function control(path, body = {}) {
  const response = await fetch(new URL(path, CONTROL_URL), {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  assert.equal(response.status, 200, `${path}: ${await response.clone().text()}`);
  return response.json();
}

export const emit = (operationId, count, terminal = false) => control('/emit', { operation_id: operationId, count, terminal });
export const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
export const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Poll `check` every 10 ms until it holds; fail naming `what` after `timeoutMs`. */
export async function until(check, what, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await pause(10);
  }
}
