/**
 * taskcast client: follow Celery task progress streamed by a taskcast bridge
 * (wire protocol version 1). Dependency-free ES module for browsers and for
 * Node 20+ (`node --experimental-websocket`, or Node 22+).
 *
 * The client keeps its subscriptions across connection losses: it reconnects
 * with exponential backoff and full jitter, and resumes every subscription
 * from the last `seq` it delivered, so an operation's events reach listeners
 * once each, in order.
 *
 * On a bridge that requires tokens (PROTOCOL.md "Access control") give it a
 * `token`, or a `getToken` function: then it renews the token before it
 * expires (an `auth` command on the same connection), and if the bridge
 * closes with 4401 (token expired) it fetches a fresh one and reconnects,
 * resuming as after any other loss.
 *
 * @example
 * import { TaskcastClient } from '/taskcast.js';
 * const client = new TaskcastClient();
 * client.on('progress', (event) => console.log(event.operation_id, event.data.progress));
 * await client.connect();
 * await client.subscribe(taskId);
 *
 * @example
 * // A page whose server mints short tokens for its user:
 * const getToken = () => fetch('/my-app/taskcast-token').then((r) => r.text());
 * const client = new TaskcastClient('wss://bridge.example/ws', { getToken });
 *
 * @module taskcast
 */

/**
 * An event frame as the bridge sends it.
 * @typedef {object} TaskcastEvent
 * @property {string} event_type `connected`, `status`, `progress`, `log`, `result`, `completed` or `error`.
 * @property {string} operation_id The operation (Celery task id); `"system"` for `connected`.
 * @property {number} [seq] Per-operation sequence number, from 1; absent on `connected`.
 * @property {string} [epoch] The history epoch `seq` counts in; seqs start over with a new one.
 * @property {number} timestamp Seconds since the epoch when the event was produced.
 * @property {object} data Event-specific payload.
 */

/**
 * A subscription the client keeps across reconnects.
 * @typedef {object} Subscription
 * @property {string} operationId The operation it follows.
 * @property {number} [since] The `since` the caller asked for (undefined: the whole history).
 * @property {string} [epoch] The history epoch the caller's `since` counts in, if given.
 * @property {boolean} confirmed Whether the server has accepted it; from then on it resumes from the ledger.
 * @property {number} retries `unavailable` refusals in a row, for the backoff before asking again.
 */

/** The error code of a bridge that cannot reach its event store (Redis) right now: worth asking again. */
const UNAVAILABLE = 'unavailable';

/** Event types after which an operation is finished (until Celery runs it again). */
const TERMINAL_EVENTS = new Set(['completed', 'error']);
/** Event types an event stream carries (`error` is handled apart: EventSource uses the name too). */
const STREAM_EVENTS = ['status', 'progress', 'log', 'result', 'completed'];

/** Close codes after which a reconnect can succeed: going away, transient server trouble, abnormal loss. */
const RECONNECT_CODES = new Set([1000, 1001, 1005, 1006, 1011, 1012, 1013, 1014]);

/** The bridge refused the connection (bad token, no token in time, origin): never reconnect. */
export const CLOSE_POLICY = 1008;

/** The connection's token expired: reconnect only with a fresh token. */
export const CLOSE_TOKEN_EXPIRED = 4401;

/** Scopes a token without a `scopes` claim has (PROTOCOL.md "Access control"). */
const DEFAULT_SCOPES = ['read'];

/** setTimeout's largest delay: a longer one fires at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Whether a connection closed with `code` should be re-established.
 * Reconnects after 1000, 1001, 1005, 1006, 1011-1014 and the 4000-4499
 * range (e.g. 4008 slow consumer, 4401 token expired: the client reconnects
 * after 4401 only when it can fetch a fresh token); gives up after
 * everything else, notably 1008 (refused), 1009 (frame too large) and
 * 4500-4999, where retrying would fail the same way.
 * @param {number} code WebSocket close code.
 * @returns {boolean}
 */
export function shouldReconnect(code) {
  return RECONNECT_CODES.has(code) || (code >= 4000 && code <= 4499);
}

/**
 * Backoff before reconnect attempt `attempt` (0-based), with full jitter:
 * uniformly random in [0, min(capMs, baseMs * 2^attempt)).
 * @param {number} attempt Failed attempts so far.
 * @param {{baseMs?: number, capMs?: number}} [backoff]
 * @param {() => number} [random] Source of uniform numbers in [0, 1).
 * @returns {number} Delay in milliseconds.
 */
export function backoffDelay(attempt, { baseMs = 500, capMs = 30000 } = {}, random = Math.random) {
  return random() * Math.min(capMs, baseMs * 2 ** attempt);
}

/**
 * The bridge endpoint for a page: same host, path `/ws`, `wss:` under https.
 * @param {{protocol: string, host: string}} [location] Defaults to the page's location.
 * @returns {string}
 */
export function defaultUrl(location = globalThis.location) {
  if (!location) throw new Error('TaskcastClient needs a url when not running in a page');
  return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/ws`;
}

/**
 * The claims of a JWT, read from its payload (base64url JSON) without
 * verifying anything: the bridge verifies, the client only reads `exp`,
 * `scopes` and `ops` to plan renewals and to tell a page what it may offer.
 * @param {string} token
 * @returns {object|null} The claims; null when the token is not a readable JWT.
 */
export function tokenClaims(token) {
  const payload = typeof token === 'string' ? token.split('.')[1] : undefined;
  if (!payload) return null;
  try {
    const base64 = payload.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(payload.length / 4) * 4, '=');
    const claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(base64), (c) => c.charCodeAt(0))));
    return claims !== null && typeof claims === 'object' && !Array.isArray(claims) ? claims : null;
  } catch {
    return null;
  }
}

/**
 * When to renew a token that expires at `expiresAt`: once about four fifths
 * of its remaining lifetime have passed, but not earlier than 30 s before
 * it expires (a 5-minute token is renewed 30 s before its end, a 10-second
 * one after 8 s).
 * @param {number} expiresAt The `exp` claim, seconds since the epoch.
 * @param {number} now The (server's) time now, seconds since the epoch.
 * @returns {number} Delay in milliseconds, 0 when it is due already.
 */
export function refreshDelay(expiresAt, now) {
  const remaining = expiresAt - now;
  return Math.max(0, remaining * 0.8, remaining - 30) * 1000;
}

/**
 * The WebSocket URL carrying `token` as its `token` query parameter.
 * @param {string} url
 * @param {string|null} [token]
 * @returns {string} `url` itself without a token, or when it is not a URL (the WebSocket will say so).
 */
export function urlWithToken(url, token) {
  if (!token) return url;
  try {
    const withToken = new URL(url);
    withToken.searchParams.set('token', token);
    return withToken.href;
  } catch {
    return url;
  }
}

/**
 * The `since` to send when (re)subscribing: what the caller asked for until
 * the server has confirmed the subscription, then the last delivered seq.
 * @param {Subscription} subscription
 * @param {number} lastDelivered Last seq delivered for the operation (0: none).
 * @returns {number|undefined}
 */
export function resumeSince(subscription, lastDelivered) {
  return subscription.confirmed ? lastDelivered : subscription.since;
}

/**
 * A `subscribe` command; `since` is left out when there is nothing to skip, and
 * `epoch` (the history epoch `since` counts in) is sent with it when known.
 * @param {string} operationId
 * @param {number} [since]
 * @param {string} [epoch]
 * @returns {object}
 */
export function subscribeCommand(operationId, since, epoch) {
  if (!(since > 0)) return { command: 'subscribe', operation_id: operationId };
  return epoch
    ? { command: 'subscribe', operation_id: operationId, since, epoch }
    : { command: 'subscribe', operation_id: operationId, since };
}

/**
 * The bridge's HTTP origin for its WebSocket URL (`ws://h:p/ws` -> `http://h:p`),
 * where its event streams and JSON API answer.
 * @param {string} url
 * @returns {string}
 */
export function httpBase(url) {
  const parsed = new URL(url);
  parsed.protocol = parsed.protocol === 'wss:' ? 'https:' : 'http:';
  return parsed.origin;
}

/**
 * The URL of an event stream (PROTOCOL.md "Server-Sent Events"): one operation's, or
 * the monitor stream's when `operationId` is null. `since`/`epoch` resume the first
 * request; EventSource's own reconnects resume with `Last-Event-ID`.
 * @param {string} base {@link httpBase}
 * @param {string|null} operationId
 * @param {{since?: number, epoch?: string, operationType?: string, token?: string|null}} [options]
 * @returns {string}
 */
export function streamUrl(base, operationId, { since, epoch, operationType, token } = {}) {
  const path = operationId === null ? '/api/events' : `/api/operations/${encodeURIComponent(operationId)}/events`;
  const url = new URL(path, base);
  if (since > 0) url.searchParams.set('since', String(since));
  if (since > 0 && epoch) url.searchParams.set('epoch', epoch);
  if (operationType) url.searchParams.set('operation_type', operationType);
  if (token) url.searchParams.set('token', token);
  return url.href;
}

/**
 * Last delivered `seq` per operation, and the history epoch it counts in: the
 * client delivers an event only if its seq is above that, so nothing is
 * delivered twice, and resumes ask for exactly what follows it. seqs start
 * over with a new epoch (Redis lost the history), so an event of another
 * epoch starts the operation's count again instead of being taken for old.
 */
export class SeqLedger {
  #last = new Map();

  /**
   * @param {string} operationId
   * @returns {number} The last seq delivered for the operation, 0 if none.
   */
  last(operationId) {
    return this.#last.get(operationId)?.seq ?? 0;
  }

  /**
   * @param {string} operationId
   * @returns {string|undefined} The epoch of the last delivered seq, if known.
   */
  epoch(operationId) {
    return this.#last.get(operationId)?.epoch;
  }

  /**
   * Records `event` as delivered unless it is not newer than the last one.
   * Events without a seq (`connected`) are always accepted.
   * @param {TaskcastEvent} event
   * @returns {boolean} Whether to deliver it.
   */
  accept(event) {
    if (typeof event.seq !== 'number') return true;
    const known = this.#last.get(event.operation_id);
    const epoch = event.epoch ?? known?.epoch;
    const sameEpoch = !known?.epoch || !event.epoch || known.epoch === event.epoch;
    if (sameEpoch && event.seq <= (known?.seq ?? 0)) return false;
    this.#last.set(event.operation_id, { seq: event.seq, epoch });
    return true;
  }

  /**
   * Restarts an operation at `since` of `epoch`, for a subscription that asked
   * for history again or was told its epoch changed.
   * @param {string} operationId
   * @param {number} [since]
   * @param {string} [epoch]
   */
  reset(operationId, since = 0, epoch = undefined) {
    this.#last.set(operationId, { seq: since, epoch });
  }

  /** @param {string} operationId */
  forget(operationId) {
    this.#last.delete(operationId);
  }
}

/**
 * @param {string} code
 * @param {string} message
 * @returns {Error & {code: string}}
 */
function codedError(code, message) {
  return Object.assign(new Error(message), { code });
}

/**
 * A connection to a taskcast bridge.
 *
 * Listen with {@link TaskcastClient#on}: to an event type (`progress`,
 * `status`, ...), to `'*'` for every server event, or to a connection event:
 * `'state'` (the new {@link TaskcastClient#state}), `'open'` (the bridge
 * accepted the connection: its `connected` frame arrived), `'close'`
 * (`{code, reason, reconnect}`), `'reconnecting'` (`{attempt, delay, code}`),
 * `'resumed'` (the server's `subscribed` reply to a subscription re-sent after
 * a reconnect: `replayed` counts the missed events that follow, `recovered`
 * is false if some had expired) and `'resume_failed'` (the Error of such a
 * subscription the server refused; the subscription is dropped).
 *
 * A subscription the bridge refuses as `unavailable` (it is up but cannot
 * reach Redis yet, e.g. both are restarting) is not dropped: while the
 * connection stays open the client asks again with the reconnect backoff
 * until it is accepted, and then reports `'resumed'` or settles the
 * subscribe() promise; a new connection asks again at once. A Redis outage
 * therefore only delays events, none is lost or delivered twice.
 *
 * Commands return promises for the server's reply. They reject with an Error
 * whose `code` is the server's error code (`not_found`, `bad_request`,
 * `unauthorized`, `forbidden`, ...), or `not_connected` when no connection is
 * open, `connection_closed` when it closes before the reply (`closeCode`
 * tells why), `disconnected` after {@link TaskcastClient#disconnect}.
 *
 * Tokens: the connection carries the current token in its URL. With
 * `getToken`, the client renews it before it expires (see
 * {@link refreshDelay}) with an `auth` command, keeping the connection, and
 * after a close with 4401 it calls `getToken` and reconnects. Without
 * `getToken`, 4401 ends the client like 1008 does: connect() rejects with
 * code `token_expired`, and `'token_error'` reports the same Error. Two more
 * connection events: `'token'` (`{scopes, expiresAt, operations}`, a new
 * token is in use) and `'token_error'` (an Error: `token_expired`, or
 * `get_token_failed` when `getToken` threw, or the bridge's `unauthorized`
 * when it refused a renewed token). {@link TaskcastClient#scopes} and
 * {@link TaskcastClient#allows} tell what the current token allows.
 *
 * Without WebSocket (`transport: 'sse'`, or `auto` after three failed
 * upgrades in a row while the bridge answers plain HTTP, reported with a
 * `'transport'` event; a bridge that is down does not count): each subscription
 * is an EventSource on the bridge's event stream, resumed the same way, and
 * commands go to the JSON API with the same replies. An operation's stream
 * ends after its terminal event, so in this mode a task run again under the
 * same id is not followed further.
 */
export class TaskcastClient {
  /**
   * @param {string} [url] WebSocket URL of the bridge; defaults to `/ws` on the page's host.
   * @param {object} [options]
   * @param {{baseMs?: number, capMs?: number}} [options.backoff] Reconnect backoff (default 500 ms doubling up to 30 s).
   * @param {string} [options.token] A token (JWT) for a bridge that requires one.
   * @param {() => string|Promise<string>} [options.getToken] Returns a fresh token: called before connecting without
   *   `token`, before the current token expires, and after the bridge closed with 4401.
   * @param {boolean} [options.refresh] With `getToken`: renew before expiry on the open connection (default true);
   *   false waits for the bridge's 4401 and reconnects with a fresh token instead.
   * @param {'auto'|'websocket'|'sse'} [options.transport] `sse`: Server-Sent Events (EventSource) and the HTTP API
   *   instead of a WebSocket; `auto` (default): WebSocket, and SSE once `sseAfter` upgrades in a row failed
   *   (a proxy that strips them, a network that blocks them).
   * @param {number} [options.sseAfter] Failed WebSocket upgrades in a row before `auto` switches to SSE (default 3).
   */
  constructor(url = defaultUrl(), { backoff, token, getToken, refresh = true, transport = 'auto', sseAfter = 3 } = {}) {
    /** @type {string} */
    this.url = url;
    /** @type {{baseMs?: number, capMs?: number}} */
    this.backoff = { ...backoff };
    /** @type {'closed'|'connecting'|'open'|'reconnecting'} */
    this.state = 'closed';
    if (getToken !== undefined && typeof getToken !== 'function') throw new TypeError('getToken must be a function');
    this.#getToken = getToken ?? null;
    this.#refresh = Boolean(refresh);
    this.#useToken(token ?? null);
    if (!['auto', 'websocket', 'sse'].includes(transport)) throw new TypeError(`unknown transport ${transport}`);
    this.#fallback = transport === 'auto' ? sseAfter : Infinity;
    /** @type {'websocket'|'sse'} The transport in use (`auto` starts with `websocket`). */
    this.transport = transport === 'sse' ? 'sse' : 'websocket';
  }

  /** @type {string|null} The token the connection uses (null: none). */
  token = null;
  /** @type {string[]|null} The current token's scopes (`read`, `monitor`, `cancel`); null without a token. */
  scopes = null;
  /** @type {string[]|null} The operations the current token names (`ops`, `["*"]` for all); null without a token. */
  operations = null;
  /** @type {number|null} When the current token expires (`exp`, seconds since the epoch); null if unknown. */
  expiresAt = null;

  #getToken = null;
  #refresh = true;
  #refreshTimer = null;
  /** The bridge said the token expired (4401): fetch a fresh one before reconnecting. */
  #tokenStale = false;
  /** Server clock minus ours, in seconds, from the `connected` frame: token expiry is the server's clock. */
  #clockOffset = 0;
  /** Bumped by disconnect(): a token fetch that resolves after it must not open a connection. */
  #generation = 0;

  #ws = null;
  /** Whether the current WebSocket got its `connected` frame (else its close is a failed upgrade). */
  #accepted = false;
  /** Failed WebSocket upgrades in a row, and how many make `auto` switch to SSE. */
  #failedUpgrades = 0;
  #fallback = Infinity;
  /** @type {Map<object, EventSource>} With SSE: the event stream of each subscription (and of monitor mode). */
  #streams = new Map();
  #wanted = false;
  #attempt = 0;
  #timer = null;
  #nextRequestId = 1;
  /** @type {Map<number, {resolve: Function, reject: Function, entry?: object}>} */
  #pending = new Map();
  #pingTimer = undefined;
  /** @type {Array<{resolve: Function, reject: Function}>} */
  #connectWaiters = [];
  /** @type {Map<string, Subscription & {waiter?: object}>} */
  #subscriptions = new Map();
  /** @type {{operationType?: string, retries: number, waiter?: object}|null} */
  #monitor = null;
  #ledger = new SeqLedger();
  /** Timers of subscriptions waiting to ask again after `unavailable`; a closing connection cancels them. */
  #retries = new Set();
  /** @type {Map<string, Set<Function>>} */
  #listeners = new Map();

  /**
   * Opens the connection (at once, also while waiting to reconnect) and
   * keeps it open until {@link TaskcastClient#disconnect}. Resolves when it is
   * open, after retrying as long as needed; rejects if the server closes it
   * for good (e.g. 1008) or on disconnect().
   * @returns {Promise<void>}
   */
  connect() {
    this.#wanted = true;
    if (this.state === 'open') return Promise.resolve();
    const opened = new Promise((resolve, reject) => this.#connectWaiters.push({ resolve, reject }));
    if (this.state !== 'connecting') this.#open();
    return opened;
  }

  /**
   * Closes the connection and stops reconnecting. Pending commands reject.
   * Subscriptions are kept: a later connect() resumes them.
   */
  disconnect() {
    this.#wanted = false;
    this.#generation++;
    clearTimeout(this.#timer);
    clearTimeout(this.#refreshTimer);
    this.#cancelRetries();
    this.#ws?.close(1000);
    this.#ws = null;
    this.#closeStreams();
    const error = codedError('disconnected', 'disconnect() was called');
    this.#rejectPending(error);
    this.#rejectWaiters(error);
    if (this.state !== 'closed') {
      this.#setState('closed');
      this.#emit('close', { code: 1000, reason: error.message, reconnect: false });
    }
  }

  /**
   * Follows one operation: the server replays its stored history (only the
   * events after `since` when given), then streams live events. The
   * subscription survives reconnects. Asking again for history already
   * delivered (e.g. by monitor mode) delivers those events again: an
   * explicit subscribe restarts the operation's seq ledger at `since`.
   * Made while not connected, it is sent when the connection opens. While
   * the bridge answers `unavailable` (Redis unreachable) it is retried, and
   * the promise waits: it settles with the first other reply.
   * @param {string} operationId
   * `epoch` is the history epoch `since` counts in (the `epoch` of the
   * snapshot or of the events the caller had): if the operation's history has
   * a new epoch, the server replays all of it with `recovered: false`.
   * @param {string} operationId
   * @param {{since?: number, epoch?: string}} [options]
   * @returns {Promise<object>} The `subscribed` reply (`operation` snapshot or null, `recovered`, `replayed`).
   */
  subscribe(operationId, { since, epoch } = {}) {
    cancelWaiter(this.#subscriptions.get(operationId), 'replaced by a new subscribe()');
    const subscription = { operationId, since, epoch, confirmed: false, retries: 0 };
    this.#subscriptions.set(operationId, subscription);
    return this.#establish(subscription);
  }

  /**
   * Stops following an operation.
   * @param {string} operationId
   * @returns {Promise<object|undefined>} The `unsubscribed` reply; undefined when not connected.
   */
  unsubscribe(operationId) {
    cancelWaiter(this.#subscriptions.get(operationId), 'unsubscribed before connecting');
    this.#subscriptions.delete(operationId);
    if (!this.#monitor) this.#ledger.forget(operationId);
    return this.#ifOpen({ command: 'unsubscribe', operation_id: operationId });
  }

  /**
   * Monitor mode: every live event of every operation (optionally of one
   * operation type). Kept across reconnects; events emitted while
   * disconnected are not replayed in this mode.
   * @param {string} [operationType]
   * @returns {Promise<object>} The `subscribed` reply for `"*"`.
   */
  subscribeAll(operationType) {
    cancelWaiter(this.#monitor, 'replaced by a new subscribeAll()');
    this.#monitor = { operationType, retries: 0 };
    return this.#establish(this.#monitor);
  }

  /**
   * Leaves monitor mode.
   * @returns {Promise<object|undefined>} The `unsubscribed` reply; undefined when not connected.
   */
  unsubscribeAll() {
    cancelWaiter(this.#monitor, 'unsubscribed before connecting');
    this.#monitor = null;
    return this.#ifOpen({ command: 'unsubscribe_all' });
  }

  /**
   * @param {string} operationId
   * @returns {Promise<object>} The operation snapshot; rejects with code `not_found` for an unknown id.
   */
  getOperation(operationId) {
    return this.#request({ command: 'get_operation', operation_id: operationId }).then((r) => r.operation);
  }

  /**
   * @param {{status?: string, limit?: number, offset?: number, operationType?: string}} [filter] `status`: `active`,
   *   `finished` or a status name; `limit` up to 1000 (default 50); `offset`: how many of the newest to skip, for the
   *   next page (default 0); `operationType`: one type, or every type starting with a prefix (`reports.*`).
   * @returns {Promise<object[]>} Snapshots, most recently updated first.
   */
  listOperations({ status, limit, offset, operationType } = {}) {
    const command = { command: 'list_operations', status, limit, offset, operation_type: operationType };
    return this.#request(command).then((r) => r.operations);
  }

  /** @returns {Promise<object>} Server statistics (`connected_clients`, `active_operations`, ...). */
  getStats() {
    return this.#request({ command: 'get_stats' }).then((r) => r.stats);
  }

  /** @returns {Promise<object>} The `pong` reply. */
  ping() {
    return this.#request({ command: 'ping' });
  }

  /**
   * Asks the bridge to cancel an operation (revoke its Celery task); the
   * operation then ends with an `error` event whose `data.status` is
   * `revoked`. Needs a token with the `cancel` scope for that operation.
   * @param {string} operationId
   * @param {{terminate?: boolean}} [options] `terminate`: also stop a task that is already running (default false).
   * @returns {Promise<object>} The `cancelling` reply; rejects with `forbidden`, `not_found`, ...
   */
  cancel(operationId, { terminate = false } = {}) {
    return this.#request({ command: 'cancel', operation_id: operationId, terminate: Boolean(terminate) });
  }

  /**
   * Switches to another token: on an open connection with an `auth` command
   * (the connection stays), otherwise for the next connection.
   * @param {string} token
   * @returns {Promise<object|undefined>} The `authenticated` reply (`expires_at`, `scopes`); undefined when not
   *   connected. Rejects with `unauthorized` for a token the bridge refuses; the previous token stays in use.
   */
  async authenticate(token) {
    if (this.state !== 'open') {
      this.#useToken(token);
      return undefined;
    }
    const reply = await this.#request({ command: 'auth', token });
    this.#useToken(token, reply);
    this.#scheduleRefresh();
    return reply;
  }

  /**
   * Whether the current token allows `scope`, for `operationId` when given
   * (`read`, `cancel`: the operations the token names; `monitor`: all). A
   * client without a token answers true: an open bridge allows everything,
   * and one that requires tokens answers `unauthorized`.
   * @param {'read'|'monitor'|'cancel'} scope
   * @param {string} [operationId]
   * @returns {boolean}
   */
  allows(scope, operationId) {
    if (this.scopes === null) return true;
    if (scope === 'read' && this.scopes.includes('monitor')) return true;
    if (!this.scopes.includes(scope)) return false;
    if (scope === 'monitor' || operationId === undefined) return true;
    return this.operations.includes('*') || this.operations.includes(operationId);
  }

  /**
   * @param {string} type An event type, `'*'`, or a connection event (`state`, `open`, `close`, `reconnecting`, `resumed`, `resume_failed`).
   * @param {(payload: any) => void} callback
   * @returns {() => void} A function that removes the listener.
   */
  on(type, callback) {
    if (!this.#listeners.has(type)) this.#listeners.set(type, new Set());
    this.#listeners.get(type).add(callback);
    return () => this.off(type, callback);
  }

  /**
   * @param {string} type
   * @param {(payload: any) => void} callback
   */
  off(type, callback) {
    this.#listeners.get(type)?.delete(callback);
  }

  /** The token becomes the one in use; `reply` is the bridge's `authenticated` answer for it, if any. */
  #useToken(token, reply) {
    const claims = token ? tokenClaims(token) : null;
    this.token = token || null;
    this.scopes = !token ? null : [...(reply?.scopes ?? claims?.scopes ?? DEFAULT_SCOPES)];
    this.operations = !token ? null : Array.isArray(claims?.ops) ? [...claims.ops] : [];
    const expiresAt = reply?.expires_at ?? claims?.exp;
    this.expiresAt = typeof expiresAt === 'number' ? expiresAt : null;
    this.#tokenStale = false;
  }

  /** Whether to call getToken before dialling: no token yet, the bridge said it expired, or our clock does. */
  #needsToken() {
    if (!this.#getToken) return false;
    if (!this.token || this.#tokenStale) return true;
    return this.expiresAt !== null && this.expiresAt <= Date.now() / 1000 + this.#clockOffset + 1;
  }

  /** Calls getToken; resolves with the token, or rejects with code `get_token_failed`. */
  async #fetchToken() {
    try {
      const token = await this.#getToken();
      if (typeof token !== 'string' || !token) throw new TypeError(`getToken returned ${typeof token}, not a token`);
      return token;
    } catch (cause) {
      throw Object.assign(codedError('get_token_failed', `getToken failed: ${cause?.message ?? cause}`), { cause });
    }
  }

  #open() {
    clearTimeout(this.#timer);
    if (!this.#needsToken()) {
      this.#dial();
      return;
    }
    const generation = this.#generation;
    this.#setState('connecting');
    this.#fetchToken().then(
      (token) => {
        if (generation !== this.#generation || !this.#wanted) return;
        this.#useToken(token);
        this.#emitToken();
        this.#dial();
      },
      (error) => {
        if (generation !== this.#generation || !this.#wanted) return;
        this.#emit('token_error', error);
        this.#reconnectLater(0);
      },
    );
  }

  #dial() {
    if (this.transport === 'sse') {
      // Nothing to open: each subscription opens its own event stream.
      this.#onOpen();
      return;
    }
    let ws;
    try {
      ws = new WebSocket(urlWithToken(this.url, this.token));
    } catch (error) {
      this.#wanted = false;
      this.#setState('closed');
      this.#rejectWaiters(error);
      return;
    }
    this.#ws = ws;
    this.#accepted = false;
    if (this.state !== 'connecting') this.#setState('connecting');
    // Open is when the bridge has accepted the connection: its `connected` frame (see #deliver), which comes
    // after the token check, so a token refused at connect rejects connect() instead of resolving it.
    ws.onmessage = (message) => this.#ws === ws && this.#onMessage(message.data);
    ws.onclose = (close) => this.#ws === ws && this.#onClose(close.code, close.reason);
    // Browsers follow an error with a close event; Node 20 reports a failed handshake with the error alone.
    ws.onerror = () => setTimeout(() => this.#ws === ws && this.#onClose(1006, 'connection failed'));
  }

  #onOpen() {
    this.#setState('open');
    for (const subscription of this.#subscriptions.values()) this.#send(subscription);
    if (this.#monitor) this.#send(this.#monitor);
    for (const waiter of this.#connectWaiters.splice(0)) waiter.resolve();
    this.#emit('open');
  }

  #onMessage(text) {
    const frame = JSON.parse(text);
    if ('event_type' in frame) {
      this.#deliver(frame);
      return;
    }
    if (frame.request_id === undefined && frame.status === 'subscribed') {
      this.#renewed(frame);
      return;
    }
    const pending = this.#pending.get(frame.request_id);
    if (!pending) return;
    this.#pending.delete(frame.request_id);
    this.#droppedBefore(frame.request_id);
    if (frame.code === 'rate_limited') this.#pingLater();
    if (frame.status === 'error') {
      pending.reject(Object.assign(codedError(frame.code, frame.message), { reply: frame }));
      return;
    }
    this.#confirm(pending.entry, frame);
    pending.resolve(frame);
  }

  #deliver(event) {
    if (event.event_type === 'connected') {
      this.#attempt = 0;
      this.#accepted = true;
      this.#failedUpgrades = 0;
      if (typeof event.timestamp === 'number') this.#clockOffset = event.timestamp - Date.now() / 1000;
      if (this.state !== 'open') this.#onOpen();
      this.#scheduleRefresh();
    }
    if (!this.#ledger.accept(event)) return;
    this.#emit(event.event_type, event);
    this.#emit('*', event);
    if (TERMINAL_EVENTS.has(event.event_type) && !this.#subscriptions.has(event.operation_id)) {
      this.#ledger.forget(event.operation_id);
    }
  }

  #onClose(code, reason) {
    this.#ws = null;
    clearTimeout(this.#refreshTimer);
    this.#cancelRetries();
    this.#rejectPending(Object.assign(codedError('connection_closed', `connection closed (${code})`), { closeCode: code }));
    const expired = code === CLOSE_TOKEN_EXPIRED;
    if (expired) this.#tokenStale = true;
    const reconnect = this.#wanted && shouldReconnect(code) && (!expired || this.#getToken !== null);
    this.#emit('close', { code, reason, reconnect });
    if (!this.#accepted && code === 1006 && ++this.#failedUpgrades >= this.#fallback) this.#probeHttp();
    if (reconnect) {
      this.#reconnectLater(code);
      return;
    }
    const wanted = this.#wanted;
    this.#wanted = false;
    this.#setState('closed');
    const error = expired
      ? codedError('token_expired', 'the token expired (4401) and there is no getToken to renew it: connect with a fresh token')
      : codedError('closed', `connection closed for good (${code}${reason ? `: ${reason}` : ''})`);
    Object.assign(error, { closeCode: code, reason });
    if (expired && wanted) this.#emit('token_error', error);
    this.#rejectWaiters(error);
  }

  /**
   * Upgrades keep failing: switch to event streams only if the bridge answers plain HTTP
   * (a proxy strips upgrades), not when it is down (a restart must not change transports).
   * It asks /api/config, which answers pages on listed origins with CORS headers (the
   * probes /healthz and /readyz carry none).
   */
  #probeHttp() {
    if (typeof EventSource !== 'function' || this.transport === 'sse') return;
    const generation = this.#generation;
    fetch(`${httpBase(this.url)}/api/config`).then(
      (response) => {
        if (!response.ok || generation !== this.#generation || this.state === 'open' || this.transport === 'sse') return;
        this.transport = 'sse';
        this.#emit('transport', this.transport);
      },
      () => {},
    );
  }

  #reconnectLater(code) {
    const delay = backoffDelay(this.#attempt++, this.backoff);
    this.#setState('reconnecting');
    this.#emit('reconnecting', { attempt: this.#attempt, delay, code });
    this.#timer = setTimeout(() => this.#open(), delay);
  }

  /** With getToken, renews the token on this connection before the bridge closes it at expiry. */
  #scheduleRefresh() {
    clearTimeout(this.#refreshTimer);
    if (!this.#getToken || !this.#refresh || this.expiresAt === null || this.state !== 'open') return;
    const delay = refreshDelay(this.expiresAt, Date.now() / 1000 + this.#clockOffset);
    const ws = this.#ws;
    this.#refreshTimer = delay > MAX_TIMER_MS
      ? setTimeout(() => this.#scheduleRefresh(), MAX_TIMER_MS)
      : setTimeout(() => this.#renew(ws), delay);
  }

  /**
   * A failed renewal is reported, not retried here: the bridge then closes
   * with 4401 at expiry, and the reconnect calls getToken again.
   */
  async #renew(ws) {
    const before = this.expiresAt;
    try {
      const token = await this.#fetchToken();
      if (this.#ws !== ws || this.state !== 'open') return;
      await this.authenticate(token);
    } catch (error) {
      if (error.code !== 'connection_closed' && error.code !== 'not_connected') this.#emit('token_error', error);
      return;
    }
    this.#emitToken();
    if (this.expiresAt !== null && this.expiresAt <= before) {
      // Asking again would get the same token ever more often as it nears its end.
      clearTimeout(this.#refreshTimer);
      this.#emit('token_error', codedError('token_not_renewed', 'getToken returned a token that expires no later than the current one'));
    }
  }

  #emitToken() {
    this.#emit('token', { scopes: this.scopes, expiresAt: this.expiresAt, operations: this.operations });
  }

  /** Sends a subscription now if open; otherwise when the connection opens. */
  #establish(entry) {
    const reply = new Promise((resolve, reject) => {
      entry.waiter = { resolve, reject };
    });
    if (this.state === 'open') this.#send(entry);
    return reply;
  }

  /** The command that (re)establishes a subscription, resuming from the ledger once confirmed. */
  #commandFor(entry) {
    if (entry === this.#monitor) return monitorCommand(entry.operationType);
    const { operationId } = entry;
    const epoch = entry.confirmed ? this.#ledger.epoch(operationId) : entry.epoch;
    return subscribeCommand(operationId, resumeSince(entry, this.#ledger.last(operationId)), epoch);
  }

  /** Whether `entry` is still wanted: not unsubscribed or replaced since it was sent. */
  #isCurrent(entry) {
    return entry === this.#monitor || this.#subscriptions.get(entry.operationId) === entry;
  }

  /**
   * Sends a subscription command. It settles the caller's promise if one
   * waits; otherwise it is a resume, reported with 'resumed' or 'resume_failed'.
   */
  #send(entry) {
    const { waiter } = entry;
    delete entry.waiter;
    if (this.transport === 'sse') {
      this.#stream(entry, waiter);
      return;
    }
    this.#request(this.#commandFor(entry), entry).then(
      (reply) => {
        entry.retries = 0;
        if (waiter) waiter.resolve(reply);
        else this.#emit('resumed', reply);
      },
      (error) => this.#refused(entry, waiter, error),
    );
  }

  /**
   * `unavailable` is transient (the bridge is up, its Redis not yet): keep the
   * subscription and its waiter, and ask again later. Any other refusal is
   * final, so the subscription is dropped and reconnects do not repeat it.
   */
  #refused(entry, waiter, error) {
    if (error.code === UNAVAILABLE && this.#isCurrent(entry)) {
      if (waiter) entry.waiter = waiter;
      this.#retryLater(entry);
      return;
    }
    if (error.reply) this.#drop(entry);
    if (waiter) waiter.reject(error);
    else if (error.code !== 'connection_closed') this.#emit('resume_failed', error);
  }

  /** Asks again on the same connection after a backoff; a new connection asks at once in #onOpen. */
  #retryLater(entry) {
    const ws = this.#ws;
    const timer = setTimeout(() => {
      this.#retries.delete(timer);
      if (this.#ws === ws && this.state === 'open' && this.#isCurrent(entry)) this.#send(entry);
    }, backoffDelay(entry.retries++, this.backoff));
    this.#retries.add(timer);
  }

  #cancelRetries() {
    for (const timer of this.#retries) clearTimeout(timer);
    this.#retries.clear();
  }

  /** A subscription's reply: an explicit subscribe restarts the ledger where it asked. */
  #confirm(entry, reply) {
    const operationId = reply.operation_id;
    if (entry?.confirmed !== false || this.#subscriptions.get(operationId) !== entry) return;
    const epoch = reply.operation?.epoch ?? entry.epoch;
    const sameEpoch = !entry.epoch || epoch === entry.epoch;
    this.#ledger.reset(operationId, sameEpoch ? entry.since : 0, epoch);
    entry.confirmed = true;
  }

  /**
   * An unasked `subscribed` reply: the operation's history began a new epoch
   * (Redis lost it); its whole new history follows, so the ledger starts over.
   * Reported as `'resumed'`, with `recovered: false`.
   */
  #renewed(frame) {
    if (!this.#subscriptions.has(frame.operation_id)) return;
    this.#ledger.reset(frame.operation_id, 0, frame.operation?.epoch);
    this.#emit('resumed', frame);
  }

  /** A refused subscription is not kept, so reconnects do not repeat it. */
  #drop(entry) {
    for (const [operationId, subscription] of this.#subscriptions) {
      if (subscription === entry) this.#subscriptions.delete(operationId);
    }
    if (this.#monitor === entry) this.#monitor = null;
  }

  /**
   * With SSE: opens the event stream of a subscription (closing its previous one). The
   * stream's `subscribed` message settles the caller's promise, or reports `'resumed'`;
   * EventSource resumes by itself after a drop (`Last-Event-ID`), and the ledger drops
   * anything seen twice. A stream the browser gave up on (refused: no token, Redis down...)
   * is opened again with the backoff, from the ledger, with a fresh token when `getToken` is
   * given; one whose operation ended is closed, as the bridge ends it.
   */
  #stream(entry, waiter) {
    this.#streams.get(entry)?.close();
    const monitor = entry === this.#monitor;
    const command = this.#commandFor(entry);
    const url = streamUrl(httpBase(this.url), monitor ? null : entry.operationId, {
      since: command.since, epoch: command.epoch, operationType: entry.operationType, token: this.token,
    });
    const source = new EventSource(url);
    this.#streams.set(entry, source);
    let pending = waiter;
    const current = () => this.#streams.get(entry) === source;
    source.addEventListener('subscribed', (message) => {
      if (!current()) return;
      const reply = JSON.parse(message.data);
      entry.retries = 0;
      if (pending) {
        this.#confirm(entry, reply);
        pending.resolve(reply);
        pending = undefined;
      } else if (!monitor && reply.operation?.epoch && reply.operation.epoch !== this.#ledger.epoch(entry.operationId)) {
        this.#renewed(reply);
      } else {
        this.#confirm(entry, reply);
        this.#emit('resumed', reply);
      }
    });
    const onEvent = (message) => {
      if (!current()) return;
      const event = JSON.parse(message.data);
      this.#deliver(event);
      if (!monitor && TERMINAL_EVENTS.has(event.event_type)) this.#closeStream(entry);
    };
    for (const type of STREAM_EVENTS) source.addEventListener(type, onEvent);
    // `error` is both an event type and EventSource's report of a failed connection.
    source.addEventListener('error', (message) => {
      if (typeof message.data === 'string') onEvent(message);
      else if (current() && source.readyState === 2) this.#restream(entry, pending);
    });
  }

  #restream(entry, waiter) {
    this.#closeStream(entry);
    if (waiter) entry.waiter = waiter;
    const timer = setTimeout(async () => {
      this.#retries.delete(timer);
      if (this.transport !== 'sse' || this.state !== 'open' || !this.#isCurrent(entry)) return;
      if (this.#getToken) {
        try {
          this.#useToken(await this.#fetchToken());
          this.#emitToken();
        } catch (error) {
          this.#emit('token_error', error);
        }
      }
      if (this.state === 'open' && this.#isCurrent(entry)) this.#send(entry);
    }, backoffDelay(entry.retries++, this.backoff));
    this.#retries.add(timer);
  }

  #closeStream(entry) {
    this.#streams.get(entry)?.close();
    this.#streams.delete(entry);
  }

  #closeStreams() {
    for (const source of this.#streams.values()) source.close();
    this.#streams.clear();
  }

  /** With SSE, commands go to the JSON API (same replies); unsubscribing closes the stream. */
  async #http(command) {
    const operationId = command.operation_id;
    switch (command.command) {
      case 'unsubscribe':
      case 'unsubscribe_all':
        // The entry left #subscriptions (or #monitor) before this runs: close what it had open.
        for (const [entry] of this.#streams) if (!this.#isCurrent(entry)) this.#closeStream(entry);
        return { status: 'unsubscribed', operation_id: operationId ?? '*' };
      case 'auth': {
        // Streams take the new token when they next (re)open; the bridge ends them when the old one expires.
        const claims = tokenClaims(command.token);
        return { status: 'authenticated', expires_at: claims?.exp ?? null, scopes: claims?.scopes ?? DEFAULT_SCOPES };
      }
      case 'ping':
        await this.#fetchJson('/healthz');
        return { status: 'pong', timestamp: Date.now() / 1000 };
      case 'get_operation':
        return this.#fetchJson(`/api/operations/${encodeURIComponent(operationId)}`);
      case 'list_operations': {
        const query = new URLSearchParams();
        if (command.status) query.set('status', command.status);
        if (command.limit !== undefined) query.set('limit', String(command.limit));
        if (command.offset) query.set('offset', String(command.offset));
        if (command.operation_type) query.set('operation_type', command.operation_type);
        return this.#fetchJson(`/api/operations?${query}`);
      }
      case 'get_stats':
        return this.#fetchJson('/api/stats');
      case 'cancel':
        return this.#fetchJson(`/api/operations/${encodeURIComponent(operationId)}/cancel?terminate=${command.terminate}`, 'POST');
      default:
        throw codedError('bad_request', `${command.command} has no HTTP equivalent`);
    }
  }

  async #fetchJson(path, method = 'GET') {
    const headers = this.token ? { Authorization: `Bearer ${this.token}` } : {};
    // The bridge takes a POST (cancel) only as JSON or with a token: no form could send it.
    if (method === 'POST') headers['Content-Type'] = 'application/json';
    const response = await fetch(httpBase(this.url) + path, { method, headers });
    const body = await response.json();
    if (!response.ok) throw Object.assign(codedError(body.code, body.message), { reply: body });
    return body;
  }

  #ifOpen(command) {
    return this.state === 'open' ? this.#request(command) : Promise.resolve(undefined);
  }

  #request(command, entry) {
    if (this.state !== 'open') return Promise.reject(codedError('not_connected', 'not connected'));
    if (this.transport === 'sse') return this.#http(command);
    const requestId = this.#nextRequestId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(requestId, { resolve, reject, entry });
      this.#ws.send(JSON.stringify({ ...command, request_id: requestId }));
    });
  }

  // The bridge answers commands in order and only one a second over the rate limit:
  // a reply passing an unanswered request means that request was dropped.
  #droppedBefore(requestId) {
    for (const [earlier, pending] of this.#pending) {
      if (earlier >= requestId) continue;
      this.#pending.delete(earlier);
      pending.reject(codedError('rate_limited', 'dropped unanswered: too many commands'));
    }
  }

  // After a refusal, ask once more when the rate allows, so that requests dropped
  // behind it learn it from the ping's reply instead of waiting.
  #pingLater() {
    if (this.#pingTimer !== undefined) return;
    this.#pingTimer = setTimeout(() => {
      this.#pingTimer = undefined;
      if (this.#pending.size) this.#ifOpen({ command: 'ping' }).catch(() => {});
    }, 1000);
  }

  #rejectPending(error) {
    for (const pending of this.#pending.values()) pending.reject(error);
    this.#pending.clear();
  }

  #rejectWaiters(error) {
    for (const waiter of this.#connectWaiters.splice(0)) waiter.reject(error);
    for (const entry of [...this.#subscriptions.values(), this.#monitor]) {
      entry?.waiter?.reject(error);
      if (entry) delete entry.waiter;
    }
  }

  #setState(state) {
    this.state = state;
    this.#emit('state', state);
  }

  /** Listener errors are reported asynchronously so they cannot break the stream. */
  #emit(type, payload) {
    for (const callback of this.#listeners.get(type) ?? []) {
      try {
        callback(payload);
      } catch (error) {
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }
}

/**
 * @param {string} [operationType]
 * @returns {object} A `subscribe_all` command.
 */
function monitorCommand(operationType) {
  return operationType ? { command: 'subscribe_all', operation_type: operationType } : { command: 'subscribe_all' };
}

/**
 * Rejects the promise of a subscription that is replaced or withdrawn before it was sent.
 * @param {{waiter?: {reject: Function}}|null|undefined} entry
 * @param {string} reason
 */
function cancelWaiter(entry, reason) {
  entry?.waiter?.reject(codedError('unsubscribed', reason));
}

/**
 * An operation's `eta` (seconds left, PROTOCOL.md 1.1) as a person reads it: "~40 s left",
 * "~2 min left", "~3 h left", "~2 d left"; whole units rounded half up, the same words as
 * `taskcast watch`. Empty when there is no estimate.
 * @param {number|null|undefined} seconds
 * @returns {string}
 */
export function etaText(seconds) {
  if (typeof seconds !== 'number' || !Number.isFinite(seconds) || seconds < 0) return '';
  const units = [['s', 1, 59.5], ['min', 60, 89.5 * 60], ['h', 3600, 47.5 * 3600], ['d', 86400, Infinity]];
  const [unit, size] = units.find(([, , upto]) => seconds < upto);
  return `~${Math.max(1, Math.floor(seconds / size + 0.5))} ${unit} left`;
}
