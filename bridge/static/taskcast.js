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
 * @example
 * import { TaskcastClient } from '/taskcast.js';
 * const client = new TaskcastClient();
 * client.on('progress', (event) => console.log(event.operation_id, event.data.progress));
 * await client.connect();
 * await client.subscribe(taskId);
 *
 * @module taskcast
 */

/**
 * An event frame as the bridge sends it.
 * @typedef {object} TaskcastEvent
 * @property {string} event_type `connected`, `status`, `progress`, `log`, `result`, `completed` or `error`.
 * @property {string} operation_id The operation (Celery task id); `"system"` for `connected`.
 * @property {number} [seq] Per-operation sequence number, from 1; absent on `connected`.
 * @property {number} timestamp Seconds since the epoch when the event was produced.
 * @property {object} data Event-specific payload.
 */

/**
 * A subscription the client keeps across reconnects.
 * @typedef {object} Subscription
 * @property {string} operationId The operation it follows.
 * @property {number} [since] The `since` the caller asked for (undefined: the whole history).
 * @property {boolean} confirmed Whether the server has accepted it; from then on it resumes from the ledger.
 * @property {number} retries `unavailable` refusals in a row, for the backoff before asking again.
 */

/** The error code of a bridge that cannot reach its event store (Redis) right now: worth asking again. */
const UNAVAILABLE = 'unavailable';

/** Event types after which an operation is finished (until Celery runs it again). */
const TERMINAL_EVENTS = new Set(['completed', 'error']);

/** Close codes after which a reconnect can succeed: going away, transient server trouble, abnormal loss. */
const RECONNECT_CODES = new Set([1000, 1001, 1005, 1006, 1011, 1012, 1013, 1014]);

/**
 * Whether a connection closed with `code` should be re-established.
 * Reconnects after 1000, 1001, 1005, 1006, 1011-1014 and the 4000-4499
 * range (e.g. 4008 slow consumer, 4401 token expired); gives up after
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
 * A `subscribe` command; `since` is left out when there is nothing to skip.
 * @param {string} operationId
 * @param {number} [since]
 * @returns {object}
 */
export function subscribeCommand(operationId, since) {
  return since > 0
    ? { command: 'subscribe', operation_id: operationId, since }
    : { command: 'subscribe', operation_id: operationId };
}

/**
 * Last delivered `seq` per operation: the client delivers an event only if
 * its seq is above that, so nothing is delivered twice, and resumes ask for
 * exactly what follows it.
 */
export class SeqLedger {
  #last = new Map();

  /**
   * @param {string} operationId
   * @returns {number} The last seq delivered for the operation, 0 if none.
   */
  last(operationId) {
    return this.#last.get(operationId) ?? 0;
  }

  /**
   * Records `event` as delivered unless it is not newer than the last one.
   * Events without a seq (`connected`) are always accepted.
   * @param {TaskcastEvent} event
   * @returns {boolean} Whether to deliver it.
   */
  accept(event) {
    if (typeof event.seq !== 'number') return true;
    if (event.seq <= this.last(event.operation_id)) return false;
    this.#last.set(event.operation_id, event.seq);
    return true;
  }

  /**
   * Restarts an operation at `since`, for a subscription that asked for history again.
   * @param {string} operationId
   * @param {number} [since]
   */
  reset(operationId, since = 0) {
    this.#last.set(operationId, since);
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
 * `'state'` (the new {@link TaskcastClient#state}), `'open'`, `'close'`
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
 * whose `code` is the server's error code (`not_found`, `bad_request`, ...),
 * or `not_connected` when no connection is open, `connection_closed` when it
 * closes before the reply (`closeCode` tells why), `disconnected` after
 * {@link TaskcastClient#disconnect}.
 */
export class TaskcastClient {
  /**
   * @param {string} [url] WebSocket URL of the bridge; defaults to `/ws` on the page's host.
   * @param {{backoff?: {baseMs?: number, capMs?: number}}} [options] Reconnect backoff (default 500 ms doubling up to 30 s).
   */
  constructor(url = defaultUrl(), { backoff } = {}) {
    /** @type {string} */
    this.url = url;
    /** @type {{baseMs?: number, capMs?: number}} */
    this.backoff = { ...backoff };
    /** @type {'closed'|'connecting'|'open'|'reconnecting'} */
    this.state = 'closed';
  }

  #ws = null;
  #wanted = false;
  #attempt = 0;
  #timer = null;
  #nextRequestId = 1;
  /** @type {Map<number, {resolve: Function, reject: Function, entry?: object}>} */
  #pending = new Map();
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
    clearTimeout(this.#timer);
    this.#cancelRetries();
    this.#ws?.close(1000);
    this.#ws = null;
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
   * @param {{since?: number}} [options]
   * @returns {Promise<object>} The `subscribed` reply (`operation` snapshot or null, `recovered`, `replayed`).
   */
  subscribe(operationId, { since } = {}) {
    cancelWaiter(this.#subscriptions.get(operationId), 'replaced by a new subscribe()');
    const subscription = { operationId, since, confirmed: false, retries: 0 };
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
   * @param {{status?: string, limit?: number}} [filter] `status`: `active`, `finished` or a status name; `limit` up to 1000 (default 50).
   * @returns {Promise<object[]>} Snapshots, most recently updated first.
   */
  listOperations({ status, limit } = {}) {
    return this.#request({ command: 'list_operations', status, limit }).then((r) => r.operations);
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

  #open() {
    clearTimeout(this.#timer);
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (error) {
      this.#wanted = false;
      this.#setState('closed');
      this.#rejectWaiters(error);
      return;
    }
    this.#ws = ws;
    this.#setState('connecting');
    ws.onopen = () => this.#ws === ws && this.#onOpen();
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
    const pending = this.#pending.get(frame.request_id);
    if (!pending) return;
    this.#pending.delete(frame.request_id);
    if (frame.status === 'error') {
      pending.reject(Object.assign(codedError(frame.code, frame.message), { reply: frame }));
      return;
    }
    this.#confirm(pending.entry, frame.operation_id);
    pending.resolve(frame);
  }

  #deliver(event) {
    if (event.event_type === 'connected') this.#attempt = 0;
    if (!this.#ledger.accept(event)) return;
    this.#emit(event.event_type, event);
    this.#emit('*', event);
    if (TERMINAL_EVENTS.has(event.event_type) && !this.#subscriptions.has(event.operation_id)) {
      this.#ledger.forget(event.operation_id);
    }
  }

  #onClose(code, reason) {
    this.#ws = null;
    this.#cancelRetries();
    this.#rejectPending(Object.assign(codedError('connection_closed', `connection closed (${code})`), { closeCode: code }));
    const reconnect = this.#wanted && shouldReconnect(code);
    this.#emit('close', { code, reason, reconnect });
    if (reconnect) {
      const delay = backoffDelay(this.#attempt++, this.backoff);
      this.#setState('reconnecting');
      this.#emit('reconnecting', { attempt: this.#attempt, delay, code });
      this.#timer = setTimeout(() => this.#open(), delay);
      return;
    }
    this.#wanted = false;
    this.#setState('closed');
    this.#rejectWaiters(Object.assign(codedError('closed', `connection closed for good (${code})`), { closeCode: code }));
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
    return subscribeCommand(entry.operationId, resumeSince(entry, this.#ledger.last(entry.operationId)));
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
  #confirm(entry, operationId) {
    if (entry?.confirmed !== false || this.#subscriptions.get(operationId) !== entry) return;
    this.#ledger.reset(operationId, entry.since);
    entry.confirmed = true;
  }

  /** A refused subscription is not kept, so reconnects do not repeat it. */
  #drop(entry) {
    for (const [operationId, subscription] of this.#subscriptions) {
      if (subscription === entry) this.#subscriptions.delete(operationId);
    }
    if (this.#monitor === entry) this.#monitor = null;
  }

  #ifOpen(command) {
    return this.state === 'open' ? this.#request(command) : Promise.resolve(undefined);
  }

  #request(command, entry) {
    if (this.state !== 'open') return Promise.reject(codedError('not_connected', 'not connected'));
    const requestId = this.#nextRequestId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(requestId, { resolve, reject, entry });
      this.#ws.send(JSON.stringify({ ...command, request_id: requestId }));
    });
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
