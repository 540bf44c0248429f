// The taskcast client's tokens against a real bridge that requires them (PROTOCOL.md "Access control").
//
// tests/test_js_client.py runs this with a bridge started with TASKCAST_AUTH_SECRET:
//   TASKCAST_WS_URL      the bridge's WebSocket endpoint
//   TASKCAST_CONTROL_URL an HTTP server of the test driver, POST with a JSON body:
//     /emit   {operation_id, count, terminal?} stores `count` log events (then `completed`
//             if terminal) in Redis -> {seqs: [...]}
//     /token  {ops, scopes?, ttl?, kind?} mints a token for `ops` (a list, or "*") with
//             `scopes` (default ["read"]) living `ttl` seconds (the `exp` claim is whole
//             seconds, rounded up, so it lives between ttl and ttl + 1); kind "forged" signs it with
//             another key, "expired" makes one that expired 5 s ago -> {token}
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, describe, test } from 'node:test';

import { TaskcastClient } from '../../bridge/static/taskcast.js';
import { FAST_BACKOFF, NOT_DRIVEN, WS_URL, control, emit, pause, range, until } from './driver.mjs';

const mint = async (ops, options = {}) => (await control('/token', { ops, ...options })).token;
const expClaim = (token) => JSON.parse(Buffer.from(token.split('.')[1], 'base64url')).exp;

/** A client that records what it delivers and every connection and token event. */
function recordingClient(options = {}) {
  const client = new TaskcastClient(WS_URL, { backoff: FAST_BACKOFF, ...options });
  const record = { client, seqs: new Map(), closes: [], opens: 0, resumed: [], resumeFailed: [], reconnecting: [], tokens: [], tokenErrors: [] };
  client.on('*', (event) => {
    if (event.seq === undefined) return;
    if (!record.seqs.has(event.operation_id)) record.seqs.set(event.operation_id, []);
    record.seqs.get(event.operation_id).push(event.seq);
  });
  client.on('close', ({ code }) => record.closes.push(code));
  client.on('open', () => { record.opens += 1; });
  client.on('resumed', (reply) => record.resumed.push(reply));
  client.on('resume_failed', (error) => record.resumeFailed.push(error));
  client.on('reconnecting', (attempt) => record.reconnecting.push(attempt));
  client.on('token', (token) => record.tokens.push(token));
  client.on('token_error', (error) => record.tokenErrors.push(error));
  record.delivered = (operationId) => record.seqs.get(operationId) ?? [];
  return record;
}

/** A getToken that mints a token for `ops` on every call and remembers each one. */
function tokenSource(ops, options) {
  const minted = [];
  const getToken = async () => {
    minted.push(await mint(ops, options));
    return minted.at(-1);
  };
  return { minted, getToken };
}

/** Stores one event of `operationId` every `intervalMs` until `done()`, then `completed`; the total count. */
async function produce(operationId, done, intervalMs = 100) {
  let count = 0;
  while (!done()) {
    await emit(operationId, 1);
    count += 1;
    await pause(intervalMs);
  }
  await emit(operationId, 1, true);
  return count + 2;
}

describe('TaskcastClient on a bridge that requires tokens', { skip: NOT_DRIVEN }, () => {
  const clients = [];
  after(() => clients.forEach(({ client }) => client.disconnect()));
  const recording = (options) => {
    const record = recordingClient(options);
    clients.push(record);
    return record;
  };

  test('a token in the URL grants what it names and nothing else; without one only ping works', async () => {
    const [mine, other] = [`js-${randomUUID()}`, `js-${randomUUID()}`];
    const { client, delivered } = recording({ token: await mint([mine]) });
    assert.deepEqual(client.scopes, ['read']);
    assert.ok(client.allows('read', mine));
    assert.ok(!client.allows('read', other) && !client.allows('monitor') && !client.allows('cancel', mine));
    await client.connect();
    await emit(mine, 2);
    assert.equal((await client.subscribe(mine)).status, 'subscribed');
    await until(() => delivered(mine).length === 2, 'the history of the operation the token names');
    await assert.rejects(client.subscribe(other), { code: 'forbidden' });
    await assert.rejects(client.subscribeAll(), { code: 'forbidden' });
    await assert.rejects(client.cancel(mine), { code: 'forbidden' });
    assert.equal(client.state, 'open');

    const anonymous = recording();
    assert.equal(anonymous.client.scopes, null);
    await anonymous.client.connect();
    await assert.rejects(anonymous.client.subscribe(mine), { code: 'unauthorized' });
    await assert.rejects(anonymous.client.listOperations(), { code: 'unauthorized' });
    assert.equal((await anonymous.client.ping()).status, 'pong');

    const reply = await anonymous.client.authenticate(await mint('*', { scopes: ['monitor', 'cancel'] }));
    assert.equal(reply.status, 'authenticated');
    assert.deepEqual(anonymous.client.scopes, ['cancel', 'monitor']);
    assert.ok(anonymous.client.allows('monitor') && anonymous.client.allows('cancel', other));
    assert.ok((await anonymous.client.listOperations()).some((operation) => operation.operation_id === mine));
  });

  test('with getToken the token is renewed with auth before it expires, on the same connection', async () => {
    const operationId = `js-${randomUUID()}`;
    const { minted, getToken } = tokenSource([operationId], { ttl: 3 });
    const record = recording({ getToken });
    const { client, delivered, closes, tokens, tokenErrors } = record;
    await client.connect();
    assert.equal(minted.length, 1, 'the first token comes from getToken');
    const firstExpiry = expClaim(minted[0]);
    await client.subscribe(operationId);
    const total = await produce(operationId, () => minted.length >= 3 && Date.now() / 1000 > firstExpiry + 0.5);
    await until(() => delivered(operationId).length === total, 'every event');
    assert.deepEqual(delivered(operationId), range(1, total));
    assert.deepEqual(closes, [], 'the bridge never closed the connection');
    assert.equal(record.opens, 1);
    assert.equal(client.state, 'open');
    assert.deepEqual(tokenErrors, []);
    assert.ok(tokens.length >= 3, `renewed ${tokens.length - 1} times`);
    assert.equal(client.token, minted.at(-1));
    assert.equal(client.expiresAt, expClaim(minted.at(-1)));
    assert.ok(client.expiresAt > firstExpiry);
  });

  test('after 4401 the client calls getToken and reconnects, with no gap and no repeat', async () => {
    const operationId = `js-${randomUUID()}`;
    const { minted, getToken: fresh } = tokenSource([operationId], { ttl: 2 });
    let calls = 0;
    // The first token has expired already: the bridge refuses it at connect with 4401 too.
    const getToken = async () => (++calls === 1 ? mint([operationId], { kind: 'expired' }) : fresh());
    const record = recording({ getToken, refresh: false });
    const { client, delivered, closes, resumed, resumeFailed, tokenErrors } = record;
    const connected = client.connect();
    await until(() => closes.length === 1, 'the expired token to be refused');
    assert.deepEqual(closes, [4401]);
    assert.equal(record.opens, 0);
    await connected;
    await client.subscribe(operationId);
    const total = await produce(operationId, () => closes.filter((code) => code === 4401).length >= 3);
    await until(() => delivered(operationId).length === total && client.state === 'open', 'every event');
    assert.deepEqual(delivered(operationId), range(1, total));
    assert.deepEqual(new Set(closes), new Set([4401]));
    assert.ok(record.opens >= 3, `connections: ${record.opens}`);
    assert.ok(minted.length >= 3, `fresh tokens: ${minted.length}`);
    assert.ok(resumed.length >= 2 && resumed.every((reply) => reply.recovered), 'each resume recovered the gap');
    assert.deepEqual(resumeFailed, []);
    assert.deepEqual(tokenErrors, []);
  });

  test('a getToken that returns the same token again is reported, then 4401 fetches a fresh one', async () => {
    const operationId = `js-${randomUUID()}`;
    const { minted, getToken: fresh } = tokenSource([operationId], { ttl: 3 });
    let calls = 0;
    const getToken = async () => (++calls <= 2 ? minted[0] ?? fresh() : fresh());
    const record = recording({ getToken });
    const { client, delivered, closes, tokenErrors } = record;
    await client.connect();
    await client.subscribe(operationId);
    const total = await produce(operationId, () => record.opens >= 2);
    await until(() => delivered(operationId).length === total && client.state === 'open', 'every event');
    assert.deepEqual(delivered(operationId), range(1, total));
    assert.deepEqual(tokenErrors.map((error) => error.code), ['token_not_renewed']);
    assert.deepEqual(closes, [4401]);
    assert.equal(calls, 3, 'one renewal that brought nothing new, then one fresh token after 4401');
  });

  test('a long-lived token is renewed when it is due, not at once', async () => {
    const { minted, getToken } = tokenSource('*', { ttl: 10 * 365 * 86400 });
    const { client, tokenErrors } = recording({ getToken });
    await client.connect();
    await client.ping();
    await pause(100); // a renewal timer that overflowed would have fired by now
    assert.equal(minted.length, 1);
    assert.deepEqual(tokenErrors, []);
  });

  test('without getToken, 4401 ends the client with a token_expired error', async () => {
    const operationId = `js-${randomUUID()}`;
    const { client, closes, reconnecting, tokenErrors } = recording({ token: await mint([operationId], { ttl: 2 }) });
    await client.connect();
    await client.subscribe(operationId);
    await until(() => client.state === 'closed', 'the token to expire');
    assert.deepEqual(closes, [4401]);
    assert.deepEqual(reconnecting, []);
    assert.equal(tokenErrors.length, 1);
    assert.equal(tokenErrors[0].code, 'token_expired');
    assert.match(tokenErrors[0].message, /token expired/);

    const stale = recording({ token: await mint([operationId], { kind: 'expired' }) });
    await assert.rejects(stale.client.connect(), { code: 'token_expired', closeCode: 4401 });
    assert.equal(stale.client.state, 'closed');
    assert.deepEqual(stale.reconnecting, []);
  });

  test('a forged token (1008) is not retried, not even with getToken', async () => {
    const operationId = `js-${randomUUID()}`;
    const forged = recording({ token: await mint([operationId], { kind: 'forged' }) });
    await assert.rejects(forged.client.connect(), { code: 'closed', closeCode: 1008 });

    let calls = 0;
    const getToken = async () => {
      calls += 1;
      return mint([operationId], { kind: 'forged' });
    };
    const renewing = recording({ getToken });
    await assert.rejects(renewing.client.connect(), { code: 'closed', closeCode: 1008 });
    await pause(2 * FAST_BACKOFF.capMs); // long enough for a reconnect, had one been scheduled
    for (const { client, closes, reconnecting } of [forged, renewing]) {
      assert.deepEqual(closes, [1008]);
      assert.deepEqual(reconnecting, []);
      assert.equal(client.state, 'closed');
    }
    assert.equal(calls, 1);
  });
});
