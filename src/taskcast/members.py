"""Group and chord progress: how a member's event moves its parent, inside the store.

A Celery group or chord is an operation of its own (PROTOCOL.md "Groups and
chords"). Its aggregate is not computed by reading its members: every event
of a member that matters to the parent (queued, running, progress, completed,
error) runs :data:`AGGREGATE_LUA` on the parent's keys, which keeps, in the
parent's ``members`` hash, each member's highest progress and the running sum
and counts, and appends the parent's own events when they change. So one
member event costs O(1) whatever the group's size, and events of operations
without a parent do not run any of this.

The state in ``op:{GROUP}:members``: ``s:<member>`` the last member seq applied
(appends retried or replayed are applied once, and in order), ``p:<member>``
its highest progress (a member going back, or retrying from zero, never takes
the mean down), ``d:<member>`` set once it ended, and ``count`` (members
known), ``size`` (members the group has, once its publisher said so),
``sum``, ``completed``, ``failed``, ``started``.

Rules, in the order the parent's events are appended:
- the first member recorded creates the parent: ``status: queued``;
- the first member that runs: ``status: running``;
- once the size is known, whenever the mean, ``completed`` or ``failed``
  changed: ``progress`` (the mean of every member's highest progress, 1.0
  exactly when all completed), ``details`` ``{completed, failed, total}``;
- a member that failed (``failed``, ``revoked``, ``lost``): ``error`` with
  ``status: "failed"``; else every member completed: ``completed``.
Without a size there is no progress and no completion: a group is never
declared done while its publisher may still be sending members.

A member whose parent was never recorded (its group was published by a
process taskcast does not instrument) changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from taskcast.events import Event, Parent, dumps
from taskcast.keys import score

GROUP_TYPE = "celery.group"
CHORD_TYPE = "celery.chord"

# ARGV of the member part, before the member's own append arguments (if any):
# 1 parent id, 2 member id, 3 member seq (the combined script fills it in),
# 4 change (q queued, r running, p progress, c completed, f failed),
# 5 progress (p) or error message (f), 6 error type (f), 7 the parent's type
# ('' unless the publisher sends it), 8 the group's size ('0' unknown),
# 9 a chord's body id (''), 10 timestamp (JSON), 11 score (µs), 12 history
# maxlen, 13 ttl (s), 14 live maxlen, 15 random characters for a new epoch,
# 16 the parent's type index prefix (``Keys.type_index_prefix``).
MEMBER_ARGS = 16
# KEYS of the member part: the parent's snapshot, history, live stream, index,
# active set, members hash, types and types:seen (all but the members hash are what
# ``append`` takes).
MEMBER_KEYS = 8

# Needs ``append(KEYS, ARGV)``, the store's append script as a function.
AGGREGATE_LUA = """
local function parent_event(P, M, event_type, data, pairs)
  local id = M[1]
  local A = {id,
    '{"event_type":"' .. event_type .. '","operation_id":' .. cjson.encode(id) .. ',"seq":',
    ',"timestamp":' .. M[10] .. ',"data":' .. cjson.encode(data) .. '}',
    M[12], M[13], M[14], M[11], (event_type == 'completed' or event_type == 'error') and 't' or 'n',
    M[15], '', 0, M[7], M[7] ~= '' and cjson.encode(M[7]) or '',
    event_type == 'progress' and '0' or '1', '', 0, #pairs / 2 + 1, M[16]}
  for _, value in ipairs(pairs) do A[#A + 1] = value end
  for _, value in ipairs({'updated_at', M[10], 'operation_id', cjson.encode(id),
      'created_at', M[10], 'metadata', '{}'}) do
    A[#A + 1] = value
  end
  append({P[1], P[2], P[3], P[4], P[5], P[7], P[8]}, A)  -- no once marker
end

local function aggregate(P, M)
  local member, seq, change = M[2], tonumber(M[3]), M[4]
  local s = redis.call('HMGET', P[6], 's:' .. member, 'p:' .. member, 'd:' .. member, 'count',
    'size', 'sum', 'completed', 'failed', 'started')
  local count = tonumber(s[4] or '0')
  if count == 0 and M[7] == '' then return end
  -- A member's late queued (seq 0, see store.py) was never stored, but may still carry
  -- the size: it seals the group and changes nothing else.
  local stale = s[1] and seq <= tonumber(s[1])
  if stale and not (change == 'q' and tonumber(M[8]) > 0) then return end
  local fields = stale and {} or {'s:' .. member, seq}
  local joined = {}
  if not s[1] then joined[#joined + 1] = member end
  if M[9] ~= '' and redis.call('HSETNX', P[6], 's:' .. M[9], 0) == 1 then
    joined[#joined + 1] = M[9]
  end
  if #joined > 0 then
    local children = redis.call('HGET', P[1], 'children') or '[]'
    for _, id in ipairs(joined) do
      children = (children == '[]' and '[' or string.sub(children, 1, -2) .. ',')
        .. cjson.encode(id) .. ']'
    end
    redis.call('HSET', P[1], 'children', children)
    count = count + #joined
    fields[#fields + 1] = 'count'
    fields[#fields + 1] = count
  end
  local size = tonumber(s[5] or '0')
  local sealed = size == 0 and tonumber(M[8]) > 0
  if sealed then
    size = tonumber(M[8])
    fields[#fields + 1] = 'size'
    fields[#fields + 1] = size
  end
  local old = tonumber(s[2] or '0')
  local new = old
  if change == 'p' then new = math.max(old, tonumber(M[5])) elseif change == 'c' then new = 1 end
  local sum = tonumber(s[6] or '0') + new - old
  local completed, failed = tonumber(s[7] or '0'), tonumber(s[8] or '0')
  local ended = not s[3] and (change == 'c' or change == 'f')
  if ended then
    fields[#fields + 1] = 'd:' .. member
    fields[#fields + 1] = 1
    if change == 'c' then completed = completed + 1 else failed = failed + 1 end
  end
  for _, pair in ipairs({{'p:' .. member, new}, {'sum', sum}, {'completed', completed},
      {'failed', failed}}) do
    fields[#fields + 1] = pair[1]
    fields[#fields + 1] = string.format('%.17g', pair[2])
  end
  local starts = change == 'r' and not s[9]
  if starts then
    fields[#fields + 1] = 'started'
    fields[#fields + 1] = M[10]
  end
  redis.call('HSET', P[6], unpack(fields))
  redis.call('EXPIRE', P[6], M[13])
  if count == #joined then
    parent_event(P, M, 'status', {status = 'queued', message = '', details = {}},
      {'status', '"queued"', 'progress', '0.0'})
  end
  if starts then
    parent_event(P, M, 'status', {status = 'running', message = '', details = {}},
      {'status', '"running"', 'started_at', M[10]})
  end
  if size > 0 and (sealed or new ~= old or ended) then
    local mean = completed >= size and 1 or math.min(1, sum / size)
    local message = completed .. ' of ' .. size .. ' done'
    parent_event(P, M, 'progress', {progress = mean, message = message,
      details = {completed = completed, failed = failed, total = size}},
      {'progress', cjson.encode(mean), 'message', cjson.encode(message)})
  end
  if ended and change == 'f' then
    local error = 'member ' .. member .. ' failed: ' .. M[5]
    parent_event(P, M, 'error', {error = error, error_type = M[6], status = 'failed'},
      {'status', '"failed"', 'finished_at', M[10], 'error', cjson.encode(error),
       'error_type', cjson.encode(M[6])})
  elseif size > 0 and completed >= size and (ended or sealed) then
    local started = tonumber(s[9] or M[10])
    parent_event(P, M, 'completed', {status = 'completed', duration = tonumber(M[10]) - started},
      {'status', '"completed"', 'finished_at', M[10], 'progress', '1.0'})
  end
end
"""


def member_change(event: Event) -> tuple[str, str, str] | None:
    """What ``event`` changes in its parent's aggregate: ``(change, value, error type)``.

    None when it changes nothing (no aggregating parent, a log line, a result,
    a task's own status, progress without a value): such events take the
    plain append, at the plain append's cost.
    """
    if event.parent is None or not event.parent.aggregates:
        return None
    data = event.data
    if event.event_type == "status" and data.get("status") in ("queued", "running"):
        return ("q" if data["status"] == "queued" else "r"), "", ""
    if event.event_type == "progress" and data.get("progress") is not None:
        return "p", repr(float(data["progress"])), ""
    if event.event_type == "completed":
        return "c", "", ""
    if event.event_type == "error":
        return "f", str(data.get("error", "")), str(data.get("error_type", "Error"))
    return None


def member_args(
    event: Event,
    change: tuple[str, str, str],
    seq: int,
    bounds: tuple[int, int, int],
    nonce: str,
    type_index_prefix: str,
) -> list[Any]:
    """The member part's ARGV (see :data:`MEMBER_ARGS`); ``bounds`` are the store's history
    maxlen, ttl and live maxlen, ``nonce`` the random characters of a new epoch."""
    parent = event.parent
    assert parent is not None
    code, value, error_type = change
    history_maxlen, ttl, live_maxlen = bounds
    return [
        parent.operation_id,
        event.operation_id,
        seq,
        code,
        value,
        error_type,
        parent.operation_type,
        parent.size,
        parent.body_id,
        dumps(event.timestamp),
        score(event.timestamp),
        history_maxlen,
        ttl,
        live_maxlen,
        nonce,
        type_index_prefix,
    ]


def parent_in(snapshot: Mapping[str, Any]) -> Parent | None:
    """The parent a stored snapshot names, for events written by whoever has only that (the
    lost-worker sweep, a redelivery). A chain's root is no group: the store leaves it be."""
    parent_id = snapshot.get("parent_id")
    return Parent(parent_id) if parent_id else None
