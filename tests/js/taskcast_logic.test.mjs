// The taskcast client's pure logic, no server needed: node --test tests/js/taskcast_logic.test.mjs
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import {
  SeqLedger,
  TaskcastClient,
  backoffDelay,
  defaultUrl,
  httpBase,
  refreshDelay,
  resumeSince,
  shouldReconnect,
  streamUrl,
  subscribeCommand,
  tokenClaims,
  urlWithToken,
} from '../../bridge/static/taskcast.js';

/** An unsigned JWT with `claims` (the client never verifies; the bridge does). */
const jwt = (claims) => ['{"alg":"HS256","typ":"JWT"}', JSON.stringify(claims)]
  .map((part) => Buffer.from(part).toString('base64url'))
  .concat('c2lnbmF0dXJl')
  .join('.');

const event = (operationId, seq, eventType = 'progress') => ({
  event_type: eventType,
  operation_id: operationId,
  seq,
  timestamp: 1735734000 + seq,
  data: {},
});

describe('backoffDelay', () => {
  test('the upper bound doubles from the base up to the cap', () => {
    const bounds = [0, 1, 2, 3, 4, 5, 6, 7].map((n) => backoffDelay(n, { baseMs: 100, capMs: 5000 }, () => 1));
    assert.deepEqual(bounds, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
  });

  test('full jitter scales the whole bound, down to zero', () => {
    assert.equal(backoffDelay(3, { baseMs: 100, capMs: 5000 }, () => 0), 0);
    assert.equal(backoffDelay(3, { baseMs: 100, capMs: 5000 }, () => 0.25), 200);
  });

  test('defaults are 500 ms doubling to 30 s, and huge attempt counts stay at the cap', () => {
    assert.equal(backoffDelay(0, {}, () => 1), 500);
    assert.equal(backoffDelay(2, undefined, () => 1), 2000);
    assert.equal(backoffDelay(5000, {}, () => 1), 30000);
  });

  test('with Math.random every delay lies in [0, bound) and they spread', () => {
    const delays = Array.from({ length: 2000 }, () => backoffDelay(4, { baseMs: 100, capMs: 60000 }));
    assert.ok(delays.every((d) => d >= 0 && d < 1600));
    assert.ok(Math.min(...delays) < 400 && Math.max(...delays) > 1200);
  });
});

describe('shouldReconnect', () => {
  test('reconnects after going-away, server trouble, abnormal loss and 4000-4499', () => {
    for (const code of [1000, 1001, 1005, 1006, 1011, 1012, 1013, 1014, 4000, 4008, 4401, 4499]) {
      assert.equal(shouldReconnect(code), true, `code ${code}`);
    }
  });

  test('gives up after policy, size, protocol errors and 4500-4999', () => {
    for (const code of [1002, 1003, 1007, 1008, 1009, 1010, 1015, 3000, 4500, 4999]) {
      assert.equal(shouldReconnect(code), false, `code ${code}`);
    }
  });
});

describe('SeqLedger', () => {
  test('delivers each seq once, in order, per operation', () => {
    const ledger = new SeqLedger();
    const delivered = [event('a', 1), event('a', 2), event('b', 1), event('a', 2), event('a', 1), event('b', 2)]
      .filter((e) => ledger.accept(e))
      .map((e) => `${e.operation_id}${e.seq}`);
    assert.deepEqual(delivered, ['a1', 'a2', 'b1', 'b2']);
    assert.equal(ledger.last('a'), 2);
    assert.equal(ledger.last('unknown'), 0);
  });

  test('drops anything at or below the last delivered seq, keeps gaps forward', () => {
    const ledger = new SeqLedger();
    assert.ok(ledger.accept(event('a', 5)));
    assert.ok(!ledger.accept(event('a', 5)));
    assert.ok(!ledger.accept(event('a', 3)));
    assert.ok(ledger.accept(event('a', 9)));
    assert.equal(ledger.last('a'), 9);
  });

  test('events without seq (connected) always pass and are not recorded', () => {
    const ledger = new SeqLedger();
    const connected = { event_type: 'connected', operation_id: 'system', timestamp: 1, data: {} };
    assert.ok(ledger.accept(connected));
    assert.ok(ledger.accept(connected));
    assert.equal(ledger.last('system'), 0);
  });

  test('reset restarts an operation at since, forget clears it', () => {
    const ledger = new SeqLedger();
    ledger.accept(event('a', 7));
    ledger.reset('a', 2);
    assert.equal(ledger.last('a'), 2);
    assert.ok(ledger.accept(event('a', 3)));
    ledger.reset('a');
    assert.ok(ledger.accept(event('a', 1)));
    ledger.forget('a');
    assert.equal(ledger.last('a'), 0);
  });

  test('a new epoch starts the count over instead of looking like old events', () => {
    const ledger = new SeqLedger();
    const inEpoch = (seq, epoch) => ({ ...event('a', seq), epoch });
    assert.ok(ledger.accept(inEpoch(56, 'e1')));
    assert.equal(ledger.epoch('a'), 'e1');
    assert.ok(ledger.accept(inEpoch(1, 'e2')), 'seq 1 of a new epoch is news');
    assert.ok(!ledger.accept(inEpoch(1, 'e2')));
    assert.ok(ledger.accept(inEpoch(2, 'e2')));
    assert.deepEqual([ledger.last('a'), ledger.epoch('a')], [2, 'e2']);
  });
});

describe('resuming subscriptions', () => {
  test('before the server confirms, the since the caller asked for is re-sent', () => {
    assert.equal(resumeSince({ since: undefined, confirmed: false }, 12), undefined);
    assert.equal(resumeSince({ since: 4, confirmed: false }, 12), 4);
  });

  test('once confirmed, resume from the last delivered seq', () => {
    assert.equal(resumeSince({ since: undefined, confirmed: true }, 12), 12);
    assert.equal(resumeSince({ since: 4, confirmed: true }, 4), 4);
  });

  test('subscribe commands carry since only when something was delivered', () => {
    assert.deepEqual(subscribeCommand('op', 12), { command: 'subscribe', operation_id: 'op', since: 12 });
    assert.deepEqual(subscribeCommand('op', 0), { command: 'subscribe', operation_id: 'op' });
    assert.deepEqual(subscribeCommand('op'), { command: 'subscribe', operation_id: 'op' });
    assert.deepEqual(subscribeCommand('op', 12, 'e1'), {
      command: 'subscribe', operation_id: 'op', since: 12, epoch: 'e1',
    });
    assert.deepEqual(subscribeCommand('op', 0, 'e1'), { command: 'subscribe', operation_id: 'op' });
  });

  test('a reconnect in the middle of a stream asks for exactly what follows', () => {
    const ledger = new SeqLedger();
    const subscription = { since: undefined, confirmed: true };
    [1, 2, 3].forEach((seq) => ledger.accept(event('op', seq)));
    const resume = subscribeCommand('op', resumeSince(subscription, ledger.last('op')));
    assert.equal(resume.since, 3);
    const replayed = [3, 4, 5].map((seq) => event('op', seq)).filter((e) => ledger.accept(e));
    assert.deepEqual(replayed.map((e) => e.seq), [4, 5]);
  });
});

describe('defaultUrl', () => {
  test('same host, path /ws, ws: or wss: by page protocol', () => {
    assert.equal(defaultUrl({ protocol: 'http:', host: 'example.test:8765' }), 'ws://example.test:8765/ws');
    assert.equal(defaultUrl({ protocol: 'https:', host: 'example.test' }), 'wss://example.test/ws');
  });

  test('outside a page a url is required', () => {
    assert.throws(() => new TaskcastClient(), /needs a url/);
  });
});

describe('TaskcastClient without a connection', () => {
  test('commands reject with not_connected', async () => {
    const client = new TaskcastClient('ws://127.0.0.1:9/ws');
    assert.equal(client.state, 'closed');
    await assert.rejects(client.getStats(), { code: 'not_connected' });
    await assert.rejects(client.ping(), { code: 'not_connected' });
  });

  test('subscriptions wait for a connection; disconnect rejects them', async () => {
    const client = new TaskcastClient('ws://127.0.0.1:9/ws');
    const subscribed = client.subscribe('op');
    const monitoring = client.subscribeAll();
    client.disconnect();
    await assert.rejects(subscribed, { code: 'disconnected' });
    await assert.rejects(monitoring, { code: 'disconnected' });
  });

  test('withdrawing a waiting subscription rejects it; unsubscribing resolves at once', async () => {
    const client = new TaskcastClient('ws://127.0.0.1:9/ws');
    const first = client.subscribe('op');
    const second = client.subscribe('op', { since: 3 });
    await assert.rejects(first, { code: 'unsubscribed' });
    assert.equal(await client.unsubscribe('op'), undefined);
    await assert.rejects(second, { code: 'unsubscribed' });
  });

  test('a url the WebSocket cannot open rejects connect() and leaves it closed', async () => {
    const client = new TaskcastClient('not a websocket url');
    const states = [];
    client.on('state', (state) => states.push(state));
    await assert.rejects(client.connect());
    assert.equal(client.state, 'closed');
    assert.deepEqual(states, ['closed']);
  });

  test('off() and the function on() returns remove listeners', async () => {
    const client = new TaskcastClient('not a websocket url');
    const seen = [];
    const listener = (state) => seen.push(state);
    client.on('state', listener);
    client.off('state', listener);
    client.on('state', listener)();
    await assert.rejects(client.connect());
    assert.deepEqual(seen, []);
  });
});

describe('tokens', () => {
  test('claims are read from the base64url payload, including - and _ and non-ASCII text', () => {
    const claims = { exp: 1735734000, ops: ['a>b?', '*'], scopes: ['monitor', 'cancel'], sub: 'Zoë ~~~???' };
    const token = jwt(claims);
    assert.match(token.split('.')[1], /[-_]/, 'the payload uses the URL-safe alphabet');
    assert.deepEqual(tokenClaims(token), claims);
  });

  test('anything that is not a readable JWT has no claims', () => {
    for (const token of ['', 'not.a.jwt', 'abc', 'a.!!!.c', `x.${Buffer.from('[1]').toString('base64url')}.y`, null, 42]) {
      assert.equal(tokenClaims(token), null, String(token));
    }
  });

  test('renewal comes after four fifths of the remaining lifetime, at most 30 s before expiry', () => {
    assert.equal(refreshDelay(1010, 1000), 8000);
    assert.equal(refreshDelay(1300, 1000), 270000);
    assert.equal(refreshDelay(1150, 1000), 120000);
    assert.equal(refreshDelay(1000, 1000), 0);
    assert.equal(refreshDelay(990, 1000), 0);
  });

  test('the token travels as the token query parameter, encoded', () => {
    assert.equal(urlWithToken('ws://h:1/ws', 'a.b+c/d'), 'ws://h:1/ws?token=a.b%2Bc%2Fd');
    assert.equal(urlWithToken('wss://h/ws?x=1&token=old', 't'), 'wss://h/ws?x=1&token=t');
    assert.equal(urlWithToken('ws://h:1/ws', null), 'ws://h:1/ws');
    assert.equal(urlWithToken('not a url', 't'), 'not a url');
  });

  test('a client tells what its token allows; without a token it leaves that to the bridge', () => {
    const open = new TaskcastClient('ws://127.0.0.1:9/ws');
    assert.equal(open.scopes, null);
    assert.ok(open.allows('monitor') && open.allows('cancel', 'any'));

    const reader = new TaskcastClient('ws://127.0.0.1:9/ws', { token: jwt({ exp: 2e9, ops: ['a'] }) });
    assert.deepEqual(reader.scopes, ['read'], 'read is the default scope');
    assert.deepEqual(reader.operations, ['a']);
    assert.equal(reader.expiresAt, 2e9);
    assert.ok(reader.allows('read', 'a') && !reader.allows('read', 'b'));
    assert.ok(!reader.allows('monitor') && !reader.allows('cancel', 'a'));

    const operator = new TaskcastClient('ws://127.0.0.1:9/ws', { token: jwt({ exp: 2e9, ops: ['*'], scopes: ['monitor', 'cancel'] }) });
    assert.ok(operator.allows('monitor') && operator.allows('read', 'b') && operator.allows('cancel', 'b'));

    const watcher = new TaskcastClient('ws://127.0.0.1:9/ws', { token: jwt({ exp: 2e9, ops: ['a'], scopes: ['monitor', 'cancel'] }) });
    assert.ok(watcher.allows('read', 'b') && watcher.allows('cancel', 'a') && !watcher.allows('cancel', 'b'));
  });

  test('getToken must be a function; cancel needs a connection', async () => {
    assert.throws(() => new TaskcastClient('ws://127.0.0.1:9/ws', { getToken: 'token' }), TypeError);
    await assert.rejects(new TaskcastClient('ws://127.0.0.1:9/ws').cancel('op'), { code: 'not_connected' });
  });

  test('a getToken that fails is reported and retried with the backoff; disconnect stops it', async () => {
    let calls = 0;
    const client = new TaskcastClient('ws://127.0.0.1:9/ws', {
      backoff: { baseMs: 1, capMs: 5 },
      getToken: () => {
        calls += 1;
        throw new Error('signed out');
      },
    });
    const errors = [];
    client.on('token_error', (error) => errors.push(error));
    const connecting = client.connect();
    while (calls < 3) await new Promise((resolve) => setTimeout(resolve, 5));
    client.disconnect();
    await assert.rejects(connecting, { code: 'disconnected' });
    assert.ok(errors.length >= 2 && errors.every((error) => error.code === 'get_token_failed'));
    assert.match(errors[0].message, /signed out/);
    const settled = calls;
    await new Promise((resolve) => setTimeout(resolve, 30));
    assert.equal(calls, settled, 'no call after disconnect()');
  });
});

describe('event streams (the SSE transport)', () => {
  test('the HTTP origin of a WebSocket URL', () => {
    assert.equal(httpBase('ws://127.0.0.1:8765/ws'), 'http://127.0.0.1:8765');
    assert.equal(httpBase('wss://bridge.example/ws?token=x'), 'https://bridge.example');
  });

  test('stream URLs resume with since and epoch, and carry the token', () => {
    const base = 'http://h:1';
    assert.equal(streamUrl(base, 'a b'), 'http://h:1/api/operations/a%20b/events');
    assert.equal(streamUrl(base, 'op', { since: 0, epoch: 'e1' }), 'http://h:1/api/operations/op/events');
    assert.equal(
      streamUrl(base, 'op', { since: 4, epoch: 'e1', token: 't' }),
      'http://h:1/api/operations/op/events?since=4&epoch=e1&token=t',
    );
    assert.equal(streamUrl(base, null, { operationType: 'report' }), 'http://h:1/api/events?operation_type=report');
  });

  test('an unknown transport is refused', () => {
    assert.throws(() => new TaskcastClient('ws://h:1/ws', { transport: 'carrier-pigeon' }), TypeError);
    assert.equal(new TaskcastClient('ws://h:1/ws', { transport: 'sse' }).transport, 'sse');
    assert.equal(new TaskcastClient('ws://h:1/ws').transport, 'websocket');
  });
});
