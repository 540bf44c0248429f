// The taskcast dashboard: a live list of operations, one operation's event log, server stats and
// a chart of the last minutes' activity. Model updates happen as events arrive; the DOM is redrawn
// at most once per animation frame, and the list is virtualised: only the rows in and near the
// visible part of it exist, so ten thousand operations cost the page no more DOM than twenty.
//
// On a bridge that requires tokens it uses one with the monitor scope (and cancel, for the Cancel
// buttons): from the address's fragment (`/#token=...`, removed from the address bar once read) or
// pasted into the page, kept in this tab's sessionStorage. Without one, or when the bridge refuses
// or expires it, the page says so and asks for one instead of showing an empty list.
import { TaskcastClient, etaText, tokenClaims } from '/static/taskcast.js';

const KNOWN_STATUSES = new Set(['queued', 'running', 'retrying', 'completed', 'failed', 'revoked', 'lost']);
const FINISHED_STATUSES = new Set(['completed', 'failed', 'revoked', 'lost']);
const GROUP_TYPES = new Set(['celery.group', 'celery.chord']);
const STATIC_FIELDS = ['operation_type', 'started_at', 'metadata', 'worker'];
const LIST_PAGE = 1000; // the most the bridge lists per list_operations call
const LIST_LIMIT = 10000; // how many of the most recently updated operations the page loads on connecting
const LIST_REFRESH_LIMIT = 100; // what it polls for when monitor mode is off
const LOOKUP_DELAY_MS = 250; // new operations seen within this are looked up together
const TYPE_FILTER_DELAY_MS = 300; // typing in the type box asks the bridge once it pauses this long
const LOOKUP_ONE_BY_ONE = 20; // up to this many with get_operation, more with one listing
// Past MAX_OPERATIONS the oldest finished operations are forgotten, down to KEEP_OPERATIONS in one go
// (one pass over the list now and then, not one per event).
const MAX_OPERATIONS = 12000;
const KEEP_OPERATIONS = 10000;
const OVERSCAN_PX = 600; // rows kept rendered above and below the visible part of the list
const ROW_HEIGHT_GUESS = 78; // until a row has been measured
const CHART_SECONDS = 120;
const CHART_HEIGHT = 40;
const MAX_LOG_ENTRIES = 2000;
const STATS_INTERVAL_MS = 5000;
const QUIET_ERRORS = new Set(['not_connected', 'connection_closed', 'disconnected', 'unsubscribed']);
const TOKEN_KEY = 'taskcast.token';
const CLOSE_POLICY = 1008;
const CLOSE_TOKEN_EXPIRED = 4401;

const $ = (id) => document.getElementById(id);
const list = $('operations');
const spacers = [...list.querySelectorAll('.spacer')];
const log = $('event-log');
const monitorToggle = $('monitor');
const timeFormat = new Intl.DateTimeFormat(undefined, {
  hour: '2-digit', minute: '2-digit', second: '2-digit', fractionalSecondDigits: 3, hour12: false,
});
const dateFormat = new Intl.DateTimeFormat(undefined, {
  month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false,
});

const client = new TaskcastClient(undefined, { token: takeToken() });
/**
 * operation id -> entry: `model` (the snapshot fields of PROTOCOL.md), `firstSeen`, `row` (its element
 * while rendered, else null), `height` (measured), `expanded` (a group's members shown), `finished`
 * (as last counted), `nested` (shown inside its group's row), `top` and `pass` (its place in `layout`).
 */
const operations = new Map();
/** Every entry, newest first by when it was first seen: rows never move once shown. */
let order = [];
/** The list's rows: entries that are not members of a known group and match the filter, with their offsets. */
const layout = { items: [], total: 0, pass: 0 };
/** The entries whose rows are in the list now (a slice of `layout.items`). */
let rendered = [];
let finishedCount = 0;
let rowHeight = ROW_HEIGHT_GUESS;
let layoutDirty = false;
let windowDirty = false;
/** Where the list must be scrolled to once the next window is in place (keeps the rows in view still). */
let pendingScroll = null;
/** The followed operation: its id and the seqs already in the log. */
let detail = null;
let filter = 'all';
/** The type box: an operation type, or a prefix ending in `*` (PROTOCOL.md's `operation_type`); '' shows every type. */
let typeFilter = '';
let typeFilterTimer = null;
let clockOffset = 0;
let reconnectAt = 0;
let lastCloseCode = null;
/** Why the page cannot show operations (a key of ACCESS), or null. */
let access = null;
/** Operations whose Cancel was clicked, until they finish or the bridge refuses. */
const cancelling = new Set();
const dirty = new Set();
let frameRequested = false;
/** Per second over the last CHART_SECONDS, oldest first. */
const activity = { events: [], active: [] };
let eventsSinceSample = 0;
let lastSampleAt = performance.now();

const serverNow = () => Date.now() / 1000 + clockOffset;
const isFinished = (model) => FINISHED_STATUSES.has(model.status);
const isGroup = (model) => GROUP_TYPES.has(model.operation_type);
const statusKind = (status) => (KNOWN_STATUSES.has(status) ? status : status ? 'custom' : 'waiting');

function formatDuration(seconds) {
  if (seconds == null || Number.isNaN(seconds)) return '–';
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor(s / 60) % 60).padStart(2, '0')}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor(s / 3600) % 24}h`;
}

function elapsed(model) {
  if (!model.started_at) return null;
  return (model.finished_at ?? (isFinished(model) ? model.updated_at : serverNow())) - model.started_at;
}

const percent = (progress) => Math.round(Math.min(1, Math.max(0, progress ?? 0)) * 100);

function reportError(error) {
  if (QUIET_ERRORS.has(error.code)) return;
  if (accessRefused(error)) return;
  showToast(error);
}

function showToast(error) {
  console.error(error);
  const toast = $('toast');
  toast.textContent = error.code ? `${error.code}: ${error.message}` : String(error.message ?? error);
  toast.hidden = false;
  clearTimeout(showToast.timer);
  showToast.timer = setTimeout(() => { toast.hidden = true; }, 6000);
}

// ---- model ----------------------------------------------------------------

function entryFor(operationId, firstSeen) {
  let entry = operations.get(operationId);
  if (!entry) {
    entry = {
      model: { operation_id: operationId, last_seq: 0 },
      firstSeen: firstSeen ?? 0,
      row: null,
      height: null,
      expanded: false,
      finished: false,
      nested: false,
      top: 0,
      pass: 0,
    };
    operations.set(operationId, entry);
    order.splice(insertionIndex(entry.firstSeen), 0, entry);
    relayout();
  }
  return entry;
}

/** Where an operation first seen at `firstSeen` goes in `order`: after every one seen at the same time or later. */
function insertionIndex(firstSeen) {
  let low = 0;
  let high = order.length;
  while (low < high) {
    const middle = (low + high) >> 1;
    if (order[middle].firstSeen >= firstSeen) low = middle + 1;
    else high = middle;
  }
  return low;
}

function createRow(entry) {
  const operationId = entry.model.operation_id;
  const row = $('row-template').content.firstElementChild.cloneNode(true);
  row.dataset.operationId = operationId;
  const link = row.querySelector('.op-link');
  link.href = linkTo(operationId);
  link.addEventListener('click', (click) => {
    if (click.button !== 0 || click.metaKey || click.ctrlKey || click.shiftKey) return;
    click.preventDefault();
    navigate(operationId);
  });
  row.querySelector('.op-cancel').addEventListener('click', () => cancelOperation(operationId));
  row.querySelector('.op-expand').addEventListener('click', () => toggleMembers(entry));
  row.querySelector('.op-parent').addEventListener('click', (click) => {
    click.preventDefault();
    navigate(entry.model.parent_id);
  });
  return row;
}

/** Takes an entry's row (and its members' rows) out of the page; it is built again when shown. */
function dropRow(entry) {
  if (!entry.row) return;
  entry.row.remove();
  entry.row = null;
  for (const member of membersOf(entry)) dropRow(member);
}

/** The known members of a group or chord, in the order of its `children`. */
function membersOf(entry) {
  return (entry.model.children ?? []).map((id) => operations.get(id)).filter(Boolean);
}

/** Keeps the finished count and, when the filter depends on it, the list's rows in step with the model. */
function noteFinished(entry) {
  const finished = isFinished(entry.model);
  if (finished === entry.finished) return;
  entry.finished = finished;
  finishedCount += finished ? 1 : -1;
  if (filter !== 'all') relayout();
}

/**
 * A page left open in monitor mode forgets the oldest finished operations (never the followed one),
 * with their members, once there are more than MAX_OPERATIONS.
 */
function trimOperations() {
  if (operations.size <= MAX_OPERATIONS) return;
  for (let index = order.length - 1; index >= 0 && operations.size > KEEP_OPERATIONS; index -= 1) {
    const entry = order[index];
    if (entry.finished && !entry.nested && entry.model.operation_id !== detail?.id) forget(entry);
  }
  order = order.filter((entry) => operations.has(entry.model.operation_id));
  relayout();
}

function forget(entry) {
  for (const member of membersOf(entry)) forget(member);
  dropRow(entry);
  operations.delete(entry.model.operation_id);
  if (entry.finished) finishedCount -= 1;
}

/** Shows or hides a group's members; its row's height changes, so the list is laid out again. */
function toggleMembers(entry) {
  entry.expanded = !entry.expanded;
  invalidate(entry.model.operation_id);
  relayout();
}

function applySnapshot(snapshot) {
  const { model } = entryFor(snapshot.operation_id, snapshot.started_at ?? snapshot.updated_at);
  const fresh = (snapshot.last_seq ?? 0) >= model.last_seq;
  for (const field of fresh ? Object.keys(snapshot) : STATIC_FIELDS) {
    if (snapshot[field] !== undefined) model[field] = snapshot[field];
  }
  relayout(); // its children or parent may be new
  invalidate(snapshot.operation_id);
}

/** Operations whose snapshot the page wants (first seen through an event), asked for together. */
const wanted = new Set();
let lookupTimer = null;

/**
 * Asks for an operation's snapshot soon: a burst of new operations must not become a
 * burst of commands, which the bridge rate-limits. A few are asked for one by one; more
 * at once come from one listing of the most recently updated operations, where new
 * ones are.
 */
function lookUp(operationId) {
  wanted.add(operationId);
  lookupTimer ??= setTimeout(lookUpWanted, LOOKUP_DELAY_MS);
}

function lookUpWanted() {
  lookupTimer = null;
  const ids = [...wanted];
  wanted.clear();
  if (ids.length <= LOOKUP_ONE_BY_ONE) {
    for (const id of ids) client.getOperation(id).then(applySnapshot, reportError);
    return;
  }
  const limit = Math.min(LIST_PAGE, ids.length + LOOKUP_ONE_BY_ONE);
  client.listOperations({ limit }).then((snapshots) => snapshots.forEach(applySnapshot), reportError);
}

function applyEvent(event) {
  if (event.event_type === 'connected') {
    if (typeof event.timestamp === 'number') clockOffset = event.timestamp - Date.now() / 1000;
    return;
  }
  eventsSinceSample += 1;
  if (event.operation_id === detail?.id) addLogEntry(event);
  const known = operations.has(event.operation_id);
  const { model } = entryFor(event.operation_id, event.timestamp);
  if (!known) lookUp(event.operation_id);
  if (event.seq <= model.last_seq) return;
  const data = event.data ?? {};
  switch (event.event_type) {
    case 'status':
      model.status = data.status;
      if (data.status === 'running') model.started_at ??= event.timestamp;
      if (data.status === 'queued' || data.status === 'running') model.eta = null;
      if (data.message) model.message = data.message;
      if (!FINISHED_STATUSES.has(data.status)) model.finished_at = null;
      break;
    case 'progress':
      if (typeof data.progress === 'number') model.progress = data.progress;
      if (data.message) model.message = data.message;
      model.eta = data.eta ?? null;
      if (isGroup(model) && data.details?.total > (model.children?.length ?? 0)) lookUp(event.operation_id);
      break;
    case 'result':
      model.result = data.result;
      break;
    case 'completed':
      model.status = 'completed';
      model.progress = 1;
      model.finished_at = event.timestamp;
      break;
    case 'error':
      model.status = data.status ?? 'failed';
      model.error = data;
      model.finished_at = event.timestamp;
      break;
  }
  if (event.trace_id) model.trace_id = event.trace_id;
  model.last_seq = event.seq;
  model.event_count = Math.max(model.event_count ?? 0, event.seq);
  model.updated_at = event.timestamp;
  invalidate(event.operation_id);
}

// ---- rendering --------------------------------------------------------------

function invalidate(operationId) {
  dirty.add(operationId);
  requestFrame();
}

/** Something changed which operations are rows of the list, or their order or heights. */
function relayout() {
  layoutDirty = true;
  requestFrame();
}

function requestFrame() {
  if (frameRequested) return;
  frameRequested = true;
  requestAnimationFrame(renderFrame);
}

/** One redraw for everything that changed since the last: per event only its own row, if it is shown. */
function renderFrame() {
  frameRequested = false;
  for (const id of dirty) {
    const entry = operations.get(id);
    if (entry) noteChange(entry);
  }
  trimOperations();
  if (layoutDirty) computeLayout();
  if (windowDirty) renderWindow();
  for (const id of dirty) {
    const entry = operations.get(id);
    if (entry?.row) renderRow(entry);
  }
  if (detail && dirty.has(detail.id)) renderDetail();
  dirty.clear();
  renderCounts();
  if (detail && $('follow').checked) log.scrollTop = log.scrollHeight;
}

/** A change inside an open group can change the group row's height: measured again with the window. */
function noteChange(entry) {
  noteFinished(entry);
  const group = entry.nested ? operations.get(entry.model.parent_id) : entry;
  if (entry.row && group?.expanded) windowDirty = true;
}

/**
 * Which operations are rows of the list and where each sits. A member of a group or chord is shown
 * inside its parent's row (in the order of the parent's `children`), not as a row of its own,
 * whichever of the two the page learns of first. Rows keep the first one in view where it is.
 */
function computeLayout() {
  layoutDirty = false;
  const anchor = scrollAnchor();
  const members = new Set();
  for (const entry of order) {
    // A member of a group the type box hides is a row of its own, if its own type is shown.
    if (isGroup(entry.model) && matchesType(entry.model)) entry.model.children?.forEach((id) => members.add(id));
  }
  layout.pass += 1;
  layout.items = [];
  let top = 0;
  for (const entry of order) {
    entry.nested = members.has(entry.model.operation_id);
    if (entry.nested || !matchesFilter(entry.model)) continue;
    entry.top = top;
    entry.pass = layout.pass;
    layout.items.push(entry);
    top += heightOf(entry);
  }
  layout.total = top;
  if (anchor?.entry.pass === layout.pass) pendingScroll = anchor.entry.top + anchor.past;
  windowDirty = true;
}

const heightOf = (entry) => entry.height ?? rowHeight;

/** The row at the top of the list's visible part and how far it is scrolled past; none at the very top. */
function scrollAnchor() {
  const offset = list.scrollTop;
  if (offset <= 0 || !layout.items.length) return null;
  const entry = layout.items[indexAt(offset)];
  return { entry, past: offset - entry.top };
}

/** The index in `layout.items` of the row at `offset` pixels down the list. */
function indexAt(offset) {
  let low = 0;
  let high = layout.items.length - 1;
  while (low < high) {
    const middle = (low + high + 1) >> 1;
    if (layout.items[middle].top <= offset) low = middle;
    else high = middle - 1;
  }
  return Math.max(0, low);
}

/**
 * Puts the rows in and near the visible part of the list in the page, between two spacers as tall as
 * the rows before and after them, so the scrollbar is that of the whole list.
 */
function renderWindow() {
  windowDirty = false;
  const scrollTop = pendingScroll ?? list.scrollTop;
  const { items } = layout;
  const shown = items.length
    ? items.slice(indexAt(scrollTop - OVERSCAN_PX), indexAt(scrollTop + list.clientHeight + OVERSCAN_PX) + 1)
    : [];
  const keep = new Set(shown);
  for (const entry of rendered) if (!keep.has(entry)) dropRow(entry);
  rendered = shown;
  for (const entry of shown) {
    entry.row ??= createRow(entry);
    renderRow(entry);
  }
  const [above, below] = spacers;
  arrange(list, [above, ...shown.map((entry) => entry.row), below]);
  const last = shown.at(-1);
  above.style.height = `${shown[0]?.top ?? 0}px`;
  below.style.height = `${last ? layout.total - last.top - heightOf(last) : 0}px`;
  list.hidden = !shown.length;
  if (pendingScroll !== null) list.scrollTop = pendingScroll;
  pendingScroll = null;
  measure(shown);
}

/** Rows are as tall as they render (an open group is taller); a change lays the list out again. */
function measure(shown) {
  for (const entry of shown) {
    const height = entry.row.offsetHeight;
    if (!height || height === entry.height) continue; // 0: the list is hidden
    if (!isGroup(entry.model)) rowHeight = height;
    entry.height = height;
    relayout();
  }
}

/** Makes `rows` the children of `container`, in order, moving only the rows out of place. */
function arrange(container, rows) {
  const wanted = new Set(rows);
  for (const child of [...container.children]) if (!wanted.has(child)) child.remove();
  let next = container.firstElementChild;
  for (const row of rows) {
    if (row === next) next = next.nextElementSibling;
    else container.insertBefore(row, next);
  }
}

function setBar(bar, progress) {
  const value = percent(progress);
  bar.setAttribute('aria-valuenow', value);
  bar.firstElementChild.style.width = `${value}%`;
  return value;
}

function setBadge(badge, status) {
  badge.textContent = status ?? 'waiting';
  badge.dataset.kind = statusKind(status);
}

function renderRow(entry) {
  const { model, row } = entry;
  row.dataset.status = model.status ?? 'waiting';
  row.dataset.kind = statusKind(model.status);
  row.dataset.progress = String(model.progress ?? 0);
  setBadge(row.querySelector('.badge'), model.status);
  row.querySelector('.op-type').textContent = model.operation_type ?? 'operation';
  row.querySelector('.op-id').textContent = model.operation_id.slice(0, 8);
  row.querySelector('.op-id').title = model.operation_id;
  row.querySelector('.percent').textContent = `${setBar(row.querySelector('.bar'), model.progress)}%`;
  row.querySelector('.op-message').textContent = summary(model);
  row.querySelector('.op-eta').textContent = timeLeft(model);
  row.querySelector('.op-elapsed').textContent = formatDuration(elapsed(model));
  renderCancel(row.querySelector('.op-cancel'), model);
  renderLinks(row, model, entry.nested);
  renderMembers(entry);
  row.hidden = !matchesFilter(model, entry.nested);
  if (model.operation_id === detail?.id) row.setAttribute('aria-current', 'true');
  else row.removeAttribute('aria-current');
}

/** "~2 min left" from the latest progress event's estimate, while the operation runs. */
const timeLeft = (model) => (isFinished(model) ? '' : etaText(model.eta));
/** A group's member count and toggle; a chain link's link to the chain's first task. */
function renderLinks(row, model, nested) {
  const expand = row.querySelector('.op-expand');
  expand.hidden = !isGroup(model);
  expand.textContent = `${model.children?.length ?? 0} tasks`;
  const parent = row.querySelector('.op-parent');
  parent.hidden = !model.parent_id || nested;
  if (!parent.hidden) {
    parent.href = linkTo(model.parent_id);
    parent.textContent = `↳ ${model.parent_id.slice(0, 8)}`;
    parent.title = `Started by ${model.parent_id}`;
  }
}

/** A group's members, as rows inside its own; shown while it is expanded. */
function renderMembers(entry) {
  if (!isGroup(entry.model)) return;
  const button = entry.row.querySelector('.op-expand');
  button.setAttribute('aria-expanded', String(entry.expanded));
  const members = entry.row.querySelector('.op-members');
  members.hidden = !entry.expanded;
  const rows = membersOf(entry).map((member) => {
    member.row ??= createRow(member);
    renderRow(member);
    return member.row;
  });
  arrange(members, rows);
}

/** The latest message; for a failure, what went wrong. */
function summary(model) {
  if (!isFinished(model) || model.status === 'completed' || !model.error) return model.message ?? '';
  const error = errorOf(model);
  return [error.error_type, error.error].filter(Boolean).join(': ');
}

/** The snapshot's `error` may be a message or the error event's data. */
const errorOf = (model) => (typeof model.error === 'object' ? model.error : { error: model.error });

/** Whether a row shows; a group's member nested in its row shows whatever its type (the group's matched). */
function matchesFilter(model, nested = false) {
  return (filter === 'all' || (filter === 'finished') === isFinished(model)) && (nested || matchesType(model));
}

/** The type box's rule, the bridge's: the exact type, or a prefix when it ends in `*`. */
function matchesType(model) {
  if (!typeFilter) return true;
  const type = model.operation_type ?? '';
  return typeFilter.endsWith('*') ? Boolean(type) && type.startsWith(typeFilter.slice(0, -1)) : type === typeFilter;
}

/** Narrows the list at once, and asks the bridge for that type's operations once typing pauses. */
function setTypeFilter(value) {
  const wanted = value.trim();
  if (wanted === typeFilter) return;
  typeFilter = wanted;
  list.scrollTop = 0;
  relayout();
  clearTimeout(typeFilterTimer);
  typeFilterTimer = setTimeout(() => loadList(LIST_LIMIT), TYPE_FILTER_DELAY_MS);
}

function renderCounts() {
  const counts = { all: operations.size, active: operations.size - finishedCount, finished: finishedCount };
  for (const [name, value] of Object.entries(counts)) {
    document.querySelector(`[data-count="${name}"]`).textContent = value;
  }
  const empty = $('empty');
  empty.hidden = layout.items.length > 0;
  const which = `${filter === 'all' ? '' : `${filter} `}operations${typeFilter ? ` of type ${typeFilter}` : ''}`;
  empty.textContent = operations.size ? `No ${which}.` : 'No operations yet. Start a task, or follow one by id.';
  const followed = detail && operations.get(detail.id)?.model;
  document.title = followed?.status
    ? `${percent(followed.progress)}% ${followed.operation_type ?? followed.status} · taskcast`
    : `taskcast · ${counts.active} active`;
}

function renderDetail() {
  const model = operations.get(detail.id)?.model ?? { operation_id: detail.id };
  const view = $('detail');
  view.dataset.operationId = detail.id;
  view.dataset.status = model.status ?? 'waiting';
  view.dataset.progress = String(model.progress ?? 0);
  $('detail-type').textContent = model.operation_type ?? 'operation';
  $('detail-id').textContent = detail.id;
  setBadge($('detail-status'), model.status);
  $('detail-bar').dataset.kind = statusKind(model.status);
  $('detail-percent').textContent = `${setBar($('detail-bar'), model.progress)}%`;
  $('detail-eta').textContent = timeLeft(model);
  $('detail-message').textContent = model.status ? summary(model) : 'Waiting for the operation to start…';
  $('detail-started').textContent = model.started_at ? dateFormat.format(model.started_at * 1000) : '–';
  $('detail-elapsed').textContent = formatDuration(elapsed(model));
  $('detail-worker').textContent = model.worker ?? '–';
  $('detail-events').textContent = model.event_count ?? '–';
  renderTrace(model);
  renderCancel($('detail-cancel'), model);
  renderOutcome(model);
}

/** Shown for an operation that has not finished, when the token allows cancelling it (an open bridge does). */
function renderCancel(button, model) {
  if (isFinished(model)) cancelling.delete(model.operation_id);
  const allowed = client.allows('cancel', model.operation_id) || (model.parent_id != null && client.allows('cancel', model.parent_id));
  button.hidden = !model.status || isFinished(model) || !allowed;
  const pending = cancelling.has(model.operation_id);
  button.disabled = pending;
  button.dataset.pending = String(pending);
  const label = button.id === 'detail-cancel' ? 'Cancel task' : 'Cancel';
  button.textContent = pending ? 'Cancelling…' : label;
  button.title = `Revoke the Celery task ${model.operation_id}`;
}

function cancelOperation(operationId) {
  if (cancelling.has(operationId)) return;
  cancelling.add(operationId);
  invalidate(operationId);
  client.cancel(operationId).catch((error) => {
    cancelling.delete(operationId);
    invalidate(operationId);
    if (error.code === 'forbidden') showToast(error);
    else reportError(error);
  });
}

function renderOutcome(model) {
  const outcome = $('outcome');
  const failed = isFinished(model) && model.status !== 'completed' && model.error;
  outcome.hidden = !failed && model.result == null;
  outcome.dataset.kind = failed ? 'error' : 'result';
  if (outcome.hidden) return;
  const error = errorOf(model);
  $('outcome-title').textContent = failed ? [model.status, error.error_type].filter(Boolean).join(': ') : 'Result';
  $('outcome-body').textContent = failed
    ? [error.error, error.traceback].filter(Boolean).join('\n\n')
    : JSON.stringify(model.result, null, 2);
}

function describe(event) {
  const data = event.data ?? {};
  switch (event.event_type) {
    case 'status': {
      const retry = data.retry_in != null ? ` (retry in ${data.retry_in}s${data.reason ? `: ${data.reason}` : ''})` : '';
      return [data.status, data.message].filter(Boolean).join(' · ') + retry;
    }
    case 'progress': {
      const counts = data.current != null && data.total != null ? ` (${data.current}/${data.total})` : '';
      return `${percent(data.progress)}%${counts} ${data.message ?? ''}`;
    }
    case 'log':
      return data.message ?? '';
    case 'result':
      return JSON.stringify(data.result);
    case 'completed':
      return `completed in ${formatDuration(data.duration)}`;
    case 'error':
      return `${data.status ?? 'failed'}: ${[data.error_type, data.error].filter(Boolean).join(': ')}`;
    default:
      return JSON.stringify(data);
  }
}

/** Each seq appears once, in seq order, whatever order replay and live events arrive in. */
function addLogEntry(event) {
  if (typeof event.seq !== 'number' || detail.seqs.has(event.seq)) return;
  detail.seqs.add(event.seq);
  const item = $('log-template').content.firstElementChild.cloneNode(true);
  item.dataset.seq = event.seq;
  item.dataset.eventType = event.event_type;
  if (event.data?.level) item.dataset.level = event.data.level;
  item.querySelector('.log-seq').textContent = `#${event.seq}`;
  const time = item.querySelector('.log-time');
  time.dateTime = new Date(event.timestamp * 1000).toISOString();
  time.textContent = timeFormat.format(event.timestamp * 1000);
  item.querySelector('.log-type').textContent = event.event_type === 'log' ? event.data?.level ?? 'log' : event.event_type;
  item.querySelector('.log-text').textContent = describe(event);
  item.querySelector('details').addEventListener('toggle', () => {
    item.querySelector('.log-raw').textContent = JSON.stringify(event, null, 2);
  }, { once: true });
  const later = Number(log.lastElementChild?.dataset.seq) > event.seq
    ? [...log.children].find((entry) => Number(entry.dataset.seq) > event.seq)
    : null;
  log.insertBefore(item, later);
  if (log.childElementCount > MAX_LOG_ENTRIES) log.firstElementChild.remove();
  invalidate(detail.id);
}

function showLogNotice(text) {
  const notice = $('log-notice');
  notice.textContent = text;
  notice.hidden = !text;
}

// ---- trace links ------------------------------------------------------------

/** TASKCAST_TRACE_URL as the bridge hands it over (`{trace_id}` inside), or null: ids are shown unlinked. */
let traceUrl = null;

function loadConfig() {
  fetch('/api/config')
    .then((reply) => (reply.ok ? reply.json() : {}))
    .then((config) => {
      traceUrl = config.trace_url ?? null;
      if (detail) invalidate(detail.id);
    })
    .catch(() => {}); // an older bridge has no /api/config: the trace id stays unlinked
}

/** The operation's OpenTelemetry trace id, linked to the tracing UI when a template is set. */
function renderTrace(model) {
  const cell = $('detail-trace');
  const traceId = model.trace_id ?? null;
  const href = traceId && traceUrl ? traceUrl.replaceAll('{trace_id}', encodeURIComponent(traceId)) : null;
  if (cell.dataset.traceId === String(traceId) && cell.dataset.href === String(href)) return;
  cell.dataset.traceId = String(traceId);
  cell.dataset.href = String(href);
  cell.title = traceId ?? '';
  if (!traceId) {
    cell.replaceChildren('–');
    return;
  }
  const code = document.createElement('code');
  code.textContent = traceId;
  if (!href) {
    cell.replaceChildren(code);
    return;
  }
  const link = document.createElement('a');
  link.href = href;
  link.target = '_blank';
  link.rel = 'noopener noreferrer';
  link.dataset.testid = 'trace-link';
  link.append(code);
  cell.replaceChildren(link);
}

// ---- detail view and navigation -----------------------------------------

function linkTo(operationId) {
  const url = new URL(location.href);
  url.search = operationId ? `?operation=${encodeURIComponent(operationId)}` : '';
  return url.href;
}

function navigate(operationId) {
  history.pushState(null, '', linkTo(operationId));
  showFromLocation();
}

function showFromLocation() {
  const operationId = new URL(location.href).searchParams.get('operation');
  if (operationId) follow(operationId);
  else closeDetail();
}

/** Follows one operation from its first stored event (subscribe without since). */
async function follow(operationId) {
  if (detail?.id === operationId) return;
  closeDetail();
  detail = { id: operationId, seqs: new Set() };
  document.body.classList.add('has-detail');
  $('placeholder').hidden = true;
  $('detail').hidden = false;
  showLogNotice('');
  renderDetail();
  rendered.forEach(renderRow);
  try {
    const reply = await client.subscribe(operationId);
    if (detail?.id !== operationId) return;
    if (reply.operation) applySnapshot(reply.operation);
    if (reply.operation && reply.recovered === false) {
      showLogNotice('Older events of this operation have expired; the log starts at the oldest one still stored.');
    }
  } catch (error) {
    if (error.code === 'forbidden' && detail?.id === operationId) {
      showLogNotice('Your access token does not allow reading this operation.');
      return;
    }
    reportError(error);
  }
}

function closeDetail() {
  if (!detail) return;
  const { id } = detail;
  detail = null;
  client.unsubscribe(id).catch(reportError);
  log.replaceChildren();
  $('detail').hidden = true;
  $('placeholder').hidden = false;
  document.body.classList.remove('has-detail');
  rendered.forEach(renderRow);
  renderCounts();
}

// ---- server queries -------------------------------------------------------

/** Listing, monitoring and statistics need the monitor scope (an open bridge grants every scope). */
const monitorAllowed = client.allows('monitor');

/**
 * The `limit` most recently updated operations (of the type box's type, when it has one), a page at a time (each
 * page is applied as it comes).
 */
async function loadList(limit) {
  if (!monitorAllowed) return;
  const operationType = typeFilter || undefined;
  try {
    for (let offset = 0; offset < limit; offset += LIST_PAGE) {
      const size = Math.min(LIST_PAGE, limit - offset);
      const snapshots = await client.listOperations({ limit: size, offset, operationType });
      snapshots.forEach(applySnapshot);
      if (snapshots.length < size) return;
    }
  } catch (error) {
    reportError(error);
  }
}

function refreshStats() {
  if (!monitorAllowed) return;
  client.getStats().then((stats) => {
    for (const element of document.querySelectorAll('[data-stat]')) {
      const value = stats[element.dataset.stat];
      element.textContent = value == null ? '–'
        : element.dataset.stat === 'uptime' ? formatDuration(value) : Number(value).toLocaleString();
    }
  }, reportError);
}

function setMonitor(on) {
  try {
    localStorage.setItem('taskcast.monitor', on ? '1' : '0');
  } catch {
    // Storage can be unavailable (private modes, sandboxed frames): the toggle then lasts for this page only.
  }
  (on ? client.subscribeAll() : client.unsubscribeAll()).catch(reportError);
}

function storedMonitor() {
  try {
    return localStorage.getItem('taskcast.monitor') !== '0';
  } catch {
    return true;
  }
}

// ---- access tokens ----------------------------------------------------------

/** The token from the address's fragment (then removed from the address bar) or from this tab's storage. */
function takeToken() {
  const fromLink = new URLSearchParams(location.hash.slice(1)).get('token');
  if (fromLink) {
    history.replaceState(history.state, '', location.pathname + location.search);
    try {
      sessionStorage.setItem(TOKEN_KEY, fromLink);
    } catch {
      // Without storage the token lasts for this page only.
    }
    return fromLink;
  }
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

/** Starts over with `token` (null: none): through the fragment, which works without storage too. */
function useToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // The fragment below carries it.
  }
  history.replaceState(history.state, '', `${location.pathname}${location.search}${token ? `#token=${token}` : ''}`);
  location.reload();
}

const scopeList = () => (client.scopes?.length ? client.scopes.join(', ') : 'none');
const expiryTime = () => (client.expiresAt ? dateFormat.format(client.expiresAt * 1000) : 'an unknown time');

/** What the page says for each reason it cannot show operations; `locks` hides the list and the stats. */
const ACCESS = {
  required: {
    locks: true,
    title: 'This bridge requires an access token',
    message: () => 'The dashboard has no token, so the bridge refuses to list or stream operations. '
      + 'Paste a token with the monitor scope below, or open the dashboard with a link that carries one.',
  },
  refused: {
    locks: true,
    title: 'The bridge refused the access token',
    message: (why) => `The token this page has is not valid for this bridge${why ? ` (${why})` : ''}. `
      + 'Paste a valid token with the monitor scope.',
  },
  expired: {
    locks: true,
    title: 'The access token has expired',
    message: () => `It expired at ${expiryTime()}, and the bridge closed the connection. `
      + 'Paste a fresh token to continue.',
  },
  forbidden: {
    locks: false,
    title: 'This token cannot watch all operations',
    message: () => `It allows ${scopeList()}, but the operation list, live monitoring and the statistics need `
      + 'the monitor scope. You can still follow an operation the token names by its id, or paste a token '
      + 'with the monitor scope.',
  },
  change: {
    locks: false,
    title: 'Use another access token',
    message: () => `The current token allows ${scopeList()} and expires at ${expiryTime()}.`,
  },
};

function showAccess(reason, why = '') {
  if (access && ACCESS[access].locks && !ACCESS[reason].locks) return;
  access = reason;
  const { locks, title, message } = ACCESS[reason];
  const panel = $('access-panel');
  panel.dataset.reason = reason;
  panel.hidden = false;
  $('access-title').textContent = title;
  $('access-message').textContent = message(why);
  $('token-forget').hidden = !client.token;
  $('access-close').hidden = locks;
  document.body.classList.toggle('locked', locks);
  if (locks && document.activeElement === document.body) $('token-input').focus();
}

function hideAccess() {
  access = null;
  $('access-panel').hidden = true;
  $('token-error').hidden = true;
  document.body.classList.remove('locked');
}

/** Shows the access panel for a refusal that is about the token; whether it was one. */
function accessRefused(error) {
  if (error.code === 'unauthorized') showAccess(client.token ? 'refused' : 'required', error.message);
  else if (error.code === 'forbidden') showAccess('forbidden');
  else if (error.code === 'token_expired') showAccess('expired');
  else if (error.closeCode === CLOSE_POLICY) showAccess(client.token ? 'refused' : 'required', error.reason);
  else return false;
  return true;
}

function onClosed({ code, reason, reconnect }) {
  lastCloseCode = code;
  if (reconnect) return;
  if (code === CLOSE_TOKEN_EXPIRED) showAccess('expired');
  else if (code === CLOSE_POLICY) showAccess(client.token ? 'refused' : 'required', reason);
}

function submitToken(submit) {
  submit.preventDefault();
  const input = $('token-input');
  const value = input.value.trim();
  // A whole link pasted in works too.
  const token = value.includes('#token=') ? new URLSearchParams(value.split('#')[1]).get('token') : value;
  if (!tokenClaims(token)) {
    $('token-error').textContent = 'That is not a token: a JWT is three base64url parts separated by dots.';
    $('token-error').hidden = false;
    input.focus();
    return;
  }
  useToken(token);
}

function renderAccess() {
  const shown = client.token !== null;
  $('access').hidden = !shown;
  if (!shown) return;
  $('access-scopes').textContent = scopeList();
  const left = client.expiresAt === null ? null : client.expiresAt - serverNow();
  $('access-expiry').textContent = left === null ? '' : left > 0 ? `expires in ${formatDuration(left)}` : 'expired';
  $('access').dataset.expiring = String(left !== null && left < 60);
}

// ---- activity chart -----------------------------------------------------------

/** Once a second (from `tick`): the events received since the last sample, per second, and the operations not finished. */
function sampleActivity() {
  const now = performance.now();
  const perSecond = eventsSinceSample / Math.max(0.001, (now - lastSampleAt) / 1000);
  eventsSinceSample = 0;
  lastSampleAt = now;
  addSample(activity.events, Math.round(perSecond * 10) / 10);
  addSample(activity.active, operations.size - finishedCount);
  drawSeries($('chart-events'), activity.events);
  drawSeries($('chart-active'), activity.active);
}

function addSample(values, value) {
  values.push(value);
  if (values.length > CHART_SECONDS) values.shift();
}

/** A line over the last CHART_SECONDS (newest at the right), scaled to its own peak, and its current value. */
function drawSeries(figure, values) {
  const peak = Math.max(0, ...values);
  const scale = CHART_HEIGHT / Math.max(1, peak);
  const start = CHART_SECONDS - values.length;
  const line = values.map((value, index) => `${index ? 'L' : 'M'}${start + index},${(CHART_HEIGHT - value * scale).toFixed(1)}`).join('');
  const area = values.length ? `${line}L${CHART_SECONDS - 1},${CHART_HEIGHT}L${start},${CHART_HEIGHT}Z` : '';
  figure.querySelector('.chart-line').setAttribute('d', line);
  figure.querySelector('.chart-area').setAttribute('d', area);
  const current = values.at(-1) ?? 0;
  figure.dataset.current = String(current);
  figure.dataset.peak = String(peak);
  figure.querySelector('.chart-value').textContent = current.toLocaleString();
  figure.querySelector('.chart-peak').textContent = `peak ${peak.toLocaleString()}`;
}

// ---- connection indicator ------------------------------------------------

function renderConnection() {
  const { state } = client;
  $('connection').dataset.state = state;
  const seconds = Math.ceil(Math.max(0, reconnectAt - Date.now()) / 1000);
  $('connection-text').textContent = {
    open: 'Live',
    connecting: 'Connecting…',
    reconnecting: seconds > 0 ? `Reconnecting in ${seconds}s` : 'Reconnecting…',
    closed: `Disconnected${lastCloseCode ? ` (${lastCloseCode})` : ''}`,
  }[state];
  const button = $('reconnect');
  button.hidden = state !== 'reconnecting' && state !== 'closed';
  button.textContent = state === 'closed' ? 'Reconnect' : 'Retry now';
}

function tick() {
  for (const row of list.querySelectorAll('.op')) {
    const model = operations.get(row.dataset.operationId)?.model;
    if (model && !isFinished(model)) row.querySelector('.op-elapsed').textContent = formatDuration(elapsed(model));
  }
  sampleActivity();
  if (detail) $('detail-elapsed').textContent = formatDuration(elapsed(operations.get(detail.id)?.model ?? {}));
  if (client.state === 'reconnecting') renderConnection();
  renderAccess();
}

// ---- wiring ---------------------------------------------------------------

client.on('*', applyEvent);
client.on('state', renderConnection);
client.on('reconnecting', ({ delay }) => { reconnectAt = Date.now() + delay; });
client.on('close', onClosed);
client.on('open', () => { loadList(LIST_LIMIT); refreshStats(); });
client.on('resume_failed', reportError);
client.on('token_error', reportError);

$('reconnect').addEventListener('click', () => client.connect().catch(reportError));
monitorToggle.addEventListener('change', () => setMonitor(monitorToggle.checked));
$('detail-close').addEventListener('click', () => navigate(null));
$('detail-cancel').addEventListener('click', () => detail && cancelOperation(detail.id));
$('token-form').addEventListener('submit', submitToken);
$('token-forget').addEventListener('click', () => useToken(null));
$('token-change').addEventListener('click', () => showAccess('change'));
$('access-close').addEventListener('click', hideAccess);
$('open-form').addEventListener('submit', (submit) => {
  submit.preventDefault();
  const operationId = $('open-id').value.trim();
  if (operationId) navigate(operationId);
  $('open-id').value = '';
});
for (const button of document.querySelectorAll('[data-filter]')) {
  button.addEventListener('click', () => {
    filter = button.dataset.filter;
    document.querySelectorAll('[data-filter]').forEach((b) => b.setAttribute('aria-pressed', String(b === button)));
    list.scrollTop = 0; // another list: from its top
    relayout();
  });
}
$('type-filter').addEventListener('input', (input) => setTypeFilter(input.target.value));
list.addEventListener('scroll', () => { windowDirty = true; requestFrame(); }, { passive: true });
// Another width can wrap rows differently: every row is measured again as it is shown.
window.addEventListener('resize', () => {
  for (const entry of order) entry.height = null;
  relayout();
});
window.addEventListener('popstate', showFromLocation);

monitorToggle.checked = monitorAllowed && storedMonitor();
monitorToggle.disabled = !monitorAllowed;
if (monitorToggle.checked) client.subscribeAll().catch(reportError);
if (!monitorAllowed) showAccess('forbidden');
showFromLocation();
renderCounts();
renderAccess();
setInterval(tick, 1000);
setInterval(() => { if (client.state === 'open') refreshStats(); }, STATS_INTERVAL_MS);
setInterval(() => { if (client.state === 'open' && !monitorToggle.checked) loadList(LIST_REFRESH_LIMIT); }, STATS_INTERVAL_MS);
loadConfig();
client.connect().catch(reportError);
