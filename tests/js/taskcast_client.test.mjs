// The taskcast client against a real bridge: reconnect, resume with `since`, close codes.
//
// tests/test_js_client.py runs this with Redis and a bridge started for it:
//   TASKCAST_WS_URL      the bridge's WebSocket endpoint
//   TASKCAST_CONTROL_URL an HTTP server of the test driver, POST with a JSON body:
//     /emit         {operation_id, count, terminal?} stores `count` log events (then
//                   `completed` if terminal) in Redis -> {seqs: [...]}
//     /bridge/stop  SIGTERM: the bridge shuts down, closing connections with 1001
//     /bridge/kill  SIGKILL: connections drop without a close frame (1006)
//     /bridge/start starts the bridge again on the same port, returns once it is ready
//     /redis/stop   snapshots the bridge's Redis to disk, then stops it (the bridge answers
//                   `unavailable` to commands that need the store)
//     /redis/start  starts that Redis again on the same port, with the snapshot's data
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, describe, test } from 'node:test';

import { TaskcastClient } from '../../bridge/static/taskcast.js';
import { FAST_BACKOFF, NOT_DRIVEN, WS_URL, control, emit, range, until } from './driver.mjs';


/** A client that records what it delivers: seqs per operation, connection events. */
function recordingClient() {
  const client = new TaskcastClient(WS_URL, { backoff: FAST_BACKOFF });
  const seqs = new Map();
  const closes = [];
  const resumed = [];
  const resumeFailed = [];
  const opens = [];
  client.on('*', (event) => {
    if (event.seq === undefined) return;
    if (!seqs.has(event.operation_id)) seqs.set(event.operation_id, []);
    seqs.get(event.operation_id).push(event.seq);
  });
  client.on('close', ({ code }) => closes.push(code));
  client.on('resumed', (reply) => resumed.push(reply));
  client.on('resume_failed', (error) => resumeFailed.push(error));
  client.on('open', () => opens.push(Date.now()));
  const delivered = (operationId) => seqs.get(operationId) ?? [];
  return { client, delivered, closes, resumed, resumeFailed, opens };
}

describe('TaskcastClient against a real bridge', { skip: NOT_DRIVEN }, () => {
  const clients = [];
  after(() => clients.forEach(({ client }) => client.disconnect()));
  const connected = async () => {
    const recording = recordingClient();
    clients.push(recording);
    await recording.client.connect();
    return recording;
  };

  test('replays history then streams live events, from since when given', async () => {
    const { client, delivered } = await connected();
    const full = `js-${randomUUID()}`;
    const partial = `js-${randomUUID()}`;
    await emit(full, 3);
    await emit(partial, 4);
    const reply = await client.subscribe(full);
    assert.equal(reply.status, 'subscribed');
    assert.equal(reply.replayed, 3);
    assert.equal(reply.operation.last_seq, 3);
    const fromTwo = await client.subscribe(partial, { since: 2 });
    assert.equal(fromTwo.replayed, 2);
    await emit(full, 2);
    await until(() => delivered(full).length === 5 && delivered(partial).length === 2, 'history and live events');
    assert.deepEqual(delivered(full), range(1, 5));
    assert.deepEqual(delivered(partial), [3, 4]);
  });

  test('an operation that does not exist yet streams once it starts', async () => {
    const { client, delivered } = await connected();
    const operationId = `js-${randomUUID()}`;
    const reply = await client.subscribe(operationId);
    assert.equal(reply.operation, null);
    await emit(operationId, 2, true);
    await until(() => delivered(operationId).length === 3, 'events of the new operation');
    assert.deepEqual(delivered(operationId), [1, 2, 3]);
  });

  test('after an abnormal drop (1006) every subscription resumes from its own last seq', async () => {
    const { client, delivered, closes, resumed } = await connected();
    const [a, b] = [`js-${randomUUID()}`, `js-${randomUUID()}`];
    await emit(a, 3);
    await Promise.all([client.subscribe(a), client.subscribe(b), client.subscribeAll()]);
    await emit(b, 2);
    await until(() => delivered(a).length === 3 && delivered(b).length === 2, 'events before the drop');
    await control('/bridge/kill');
    await until(() => closes.length > 0, 'the connection to drop');
    await emit(a, 4);
    await emit(b, 1, true);
    await control('/bridge/start');
    await until(() => delivered(a).length === 7 && delivered(b).length === 4, 'the missed events');
    assert.equal(closes[0], 1006);
    assert.deepEqual(delivered(a), range(1, 7));
    assert.deepEqual(delivered(b), range(1, 4));
    assert.ok(resumed.some((reply) => reply.operation_id === '*'), 'monitor mode resumed');
    const operations = resumed.filter((reply) => reply.operation_id !== '*');
    const replayed = Object.fromEntries(operations.map((r) => [r.operation_id, [r.replayed, r.recovered]]));
    assert.deepEqual(replayed, { [a]: [4, true], [b]: [2, true] });
    const later = `js-${randomUUID()}`;
    await emit(later, 1);
    await until(() => delivered(later).length === 1, 'monitor mode to be resumed too');
  });

  test('a bridge shutting down (1001) is reconnected to and resumed', async () => {
    const { client, delivered, closes } = await connected();
    const operationId = `js-${randomUUID()}`;
    await client.subscribe(operationId);
    await emit(operationId, 2);
    await until(() => delivered(operationId).length === 2, 'events before the shutdown');
    await control('/bridge/stop');
    await until(() => closes.length > 0, 'the connection to close');
    await emit(operationId, 3, true);
    await control('/bridge/start');
    await until(() => delivered(operationId).length === 6, 'the events sent while the bridge was down');
    assert.equal(closes[0], 1001);
    assert.deepEqual(delivered(operationId), range(1, 6));
    assert.equal(client.state, 'open');
  });

  test('a resume refused while Redis is down (unavailable) is retried until Redis is back', async () => {
    const { client, delivered, closes, resumed, resumeFailed, opens } = await connected();
    const [resuming, late] = [`js-${randomUUID()}`, `js-${randomUUID()}`];
    await client.subscribe(resuming);
    await emit(resuming, 3);
    await until(() => delivered(resuming).length === 3, 'events before the outage');
    await control('/redis/stop');
    await control('/bridge/kill');
    await until(() => closes.length > 0, 'the connection to drop');
    await control('/bridge/start');
    await until(() => opens.length === 2, 'the client to reconnect');
    // Replies come in command order: once this one is in, the resume has been refused too.
    await assert.rejects(client.getOperation(resuming), { code: 'unavailable' });
    assert.deepEqual(resumeFailed, [], 'a refused resume is retried, not dropped');
    const lateOutcome = client.subscribe(late).catch((error) => error);
    await control('/redis/start');
    await emit(resuming, 3, true);
    const lateReply = await lateOutcome;
    assert.equal(lateReply.status, 'subscribed', 'a subscribe made during the outage waits for Redis');
    await emit(late, 2);
    await until(() => delivered(resuming).length === 7 && delivered(late).length === 2, 'events after the outage');
    assert.deepEqual(delivered(resuming), range(1, 7));
    assert.deepEqual(delivered(late), [1, 2]);
    assert.deepEqual(resumeFailed, []);
    assert.ok(resumed.some((reply) => reply.operation_id === resuming && reply.recovered), 'the resume succeeded');
    assert.equal(client.state, 'open');
  });

  test('error replies reject with the server error code and keep the connection', async () => {
    const { client } = await connected();
    await assert.rejects(client.getOperation(`js-${randomUUID()}`), { code: 'not_found' });
    await assert.rejects(client.listOperations({ limit: 'many' }), { code: 'bad_request' });
    const pong = await client.ping();
    assert.equal(pong.status, 'pong');
    assert.equal(client.state, 'open');
  });

  test('a frame over the inbound limit (1009) ends the connection for good', async () => {
    const { client, closes } = await connected();
    const reconnecting = [];
    client.on('reconnecting', (attempt) => reconnecting.push(attempt));
    await assert.rejects(client.subscribe('x'.repeat(70 * 1024)), { code: 'connection_closed', closeCode: 1009 });
    await until(() => client.state === 'closed', 'the client to give up');
    await new Promise((resolve) => setTimeout(resolve, 2 * FAST_BACKOFF.capMs));
    assert.deepEqual(closes, [1009]);
    assert.deepEqual(reconnecting, []);
    assert.equal(client.state, 'closed');
  });

  test('disconnect() rejects pending commands and does not reconnect', async () => {
    const { client, closes } = await connected();
    const pending = client.getStats();
    client.disconnect();
    await assert.rejects(pending, { code: 'disconnected' });
    await new Promise((resolve) => setTimeout(resolve, 2 * FAST_BACKOFF.capMs));
    assert.equal(client.state, 'closed');
    assert.deepEqual(closes, [1000]);
  });
});
