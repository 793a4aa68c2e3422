"""The outbox: allowed actions waiting for delivery, in Redis.

An allowed action enters its subject's outbox in the same transaction that records
the decision (see `DecisionLog.commit`), and the schedule says when it is due. A
dispatcher claims due entries with a lease and a fencing token, and records each
outcome here: delivered, retried later, or parked as failed, where an operator can
list and re-drive it. An entry leaves the outbox only when its delivery is recorded.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, cast

import redis

from app.shared import jsontext, keys
from app.shared.clock import Clock, rfc3339, system_clock
from app.shared.errors import NotFound
from app.shared.logs import traceparent
from app.shared.store import in_order, is_cluster, unavailable_on_outage

QUEUED, DISPATCHED, FAILED = "queued", "dispatched", "failed"
# An action that requires others waits in the outbox, unscheduled, until they are
# dispatched; it is blocked, and leaves the outbox, when one of them is parked.
WAITING, BLOCKED = "waiting", "blocked"


def lease_margin(lease_seconds: float) -> float:
    """How long before its claim's lease an attempt must end, so that its outcome is
    recorded while the claim still holds (the fence refuses it if it does not)."""
    return min(1.0, lease_seconds / 10)


def member_of(subject: str, decision_id: str, action_id: str) -> str:
    return f"{subject}|{decision_id}|{action_id}"


def parse_member(member: str) -> tuple[str, str, str]:
    subject, decision_id, action_id = member.split("|")
    return subject, decision_id, action_id


# KEYS: the schedule, the fence counter; ARGV: now_ms, limit, lease_ms. Takes the due
# members, pushes each one lease into the future so that no other worker takes it
# meanwhile, and returns a new fencing token (a counter) first: every change this claim
# makes must carry it, and a later claim's larger token makes it stale.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due == 0 then return {} end
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[3]), member)
end
local token = redis.call('INCR', KEYS[2])
table.insert(due, 1, tostring(token))
return due
"""

# KEYS: the subject's outbox, its fences, its waiting actions; ARGV: the entry's field,
# the claim's token, now (ms), the lease (ms). {'ok', entry}: the entry, now held by this
# token until the lease ends; {'waiting'}: it waits for others to be dispatched (left as
# it is); {}: it is gone, a later claim holds it, or an earlier one whose lease has not
# ended (its member was made due early, by a release on Redis Cluster).
# A fence is "<token>:<held until, ms>".
_ADOPT = """
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then return {} end
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return {'waiting'} end
local token, now = tonumber(ARGV[2]), tonumber(ARGV[3])
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held then
  local holder, till = string.match(held, '^(%d+):(%d+)$')
  holder, till = tonumber(holder or held), tonumber(till or '0')
  if holder > token then return {} end
  if holder < token and till > now then return {} end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ':' .. (now + tonumber(ARGV[4])))
return {'ok', entry}
"""

# KEYS: the subject's outbox, its fences, its sent actions; ARGV: field, action id,
# decision id. A parked entry that expires with its decision goes, and so does the note
# that its decision sent the action: a later decision queues it again (and what requires
# it waits for that, instead of taking the vanished entry for a delivered one).
_REMOVE = """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[3], ARGV[2]) == ARGV[3] then redis.call('HDEL', KEYS[3], ARGV[2]) end
return 1
"""

# KEYS: the subject's outbox, its fences, the decision's action statuses, the outbox's
# waiting actions, their prerequisites' dependents, the subject's sent actions[, on a
# single server also the schedule and the parked list: then the whole change is one
# step]; ARGV: field, token ('' for an operator, who holds no claim), action id, status
# JSON, entry JSON ('' removes it), schedule move ('due', 'delivered' or 'parked'), its
# time (ms), the schedule member. Returns 0, changing nothing, when the claim has moved
# on: the entry is gone (delivered by another worker) or a later claim holds it. Else
# {1, the members of the actions this delivery released}: delivered, the actions that
# waited for it and for nothing else are queued (and due); parked, the actions that
# waited for it, and those that waited for them, are blocked and leave the outbox.
# (A dependent's statuses live in its own decision's key, in the subject's slot: the
# key is named where the dependent was recorded, by `keys`.)
_CHANGE = """
if ARGV[2] ~= '' then
  local held = redis.call('HGET', KEYS[2], ARGV[1])
  if not held or string.match(held, '^[^:]*') ~= ARGV[2] then return 0 end
  if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
end
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
if ARGV[5] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[5])
  if ARGV[2] ~= '' then  -- the attempt is over: its claim no longer holds the entry
    redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ':0')
  end
end
local single = #KEYS > 6
local move, at, member = ARGV[6], ARGV[7], ARGV[8]
local released = {1}
if move == 'delivered' then
  local raw = redis.call('HGET', KEYS[5], ARGV[1])
  redis.call('HDEL', KEYS[5], ARGV[1])
  for _, d in ipairs(raw and cjson.decode(raw) or {}) do
    local pending = redis.call('HGET', KEYS[4], d.field)
    if pending then
      local left, waiting_for = {}, {}
      for _, f in ipairs(cjson.decode(pending)) do
        if f ~= ARGV[1] then left[#left + 1] = f end
      end
      local said = cjson.decode(redis.call('HGET', d.statuses, d.action_id) or '{}')
      for _, w in ipairs(said.waiting_for or {}) do
        if w.decision_id .. ':' .. w.action_id ~= ARGV[1] then
          waiting_for[#waiting_for + 1] = w
        end
      end
      if #left == 0 then
        redis.call('HDEL', KEYS[4], d.field)
        redis.call('HSET', d.statuses, d.action_id, '{"status": "queued", "attempts": 0}')
        released[#released + 1] = d.member
        if single then redis.call('ZADD', KEYS[7], tonumber(at), d.member) end
      else
        redis.call('HSET', KEYS[4], d.field, cjson.encode(left))
        redis.call('HSET', d.statuses, d.action_id,
                   cjson.encode({status = 'waiting', waiting_for = waiting_for}))
      end
    end
  end
elseif move == 'parked' then
  local entry = cjson.decode(ARGV[5])
  local queue = {{field = ARGV[1], type = entry.action.type, action_id = ARGV[3],
                  decision_id = entry.decision_id, status = 'failed',
                  why = 'was parked after failed delivery: ' .. tostring(entry.last_error)}}
  while #queue > 0 do
    local p = table.remove(queue)
    local raw = redis.call('HGET', KEYS[5], p.field)
    redis.call('HDEL', KEYS[5], p.field)
    for _, d in ipairs(raw and cjson.decode(raw) or {}) do
      if redis.call('HDEL', KEYS[4], d.field) == 1 then  -- it was waiting
        redis.call('HDEL', KEYS[1], d.field)
        redis.call('HDEL', KEYS[2], d.field)
        if redis.call('HGET', KEYS[6], d.action_id) == d.decision_id then
          redis.call('HDEL', KEYS[6], d.action_id)  -- never sent: a later decision may
        end
        local blocked = 'it requires ' .. p.type .. ' (' .. p.action_id .. '), which ' .. p.why
        redis.call('HSET', d.statuses, d.action_id, cjson.encode({status = 'blocked',
          blocked = blocked, prerequisite = {decision_id = p.decision_id,
          action_id = p.action_id, type = p.type, status = p.status}}))
        if single then redis.call('ZREM', KEYS[7], d.member) end
        queue[#queue + 1] = {field = d.field, type = d.type, action_id = d.action_id,
                             decision_id = d.decision_id, status = 'blocked',
                             why = 'is blocked: ' .. blocked}
      end
    end
  end
end
if single then
  if move == 'due' then
    redis.call('ZADD', KEYS[7], at, member)
    redis.call('ZREM', KEYS[8], member)
  elseif move == 'delivered' then
    redis.call('ZREM', KEYS[7], member)
  else
    redis.call('ZADD', KEYS[8], at, member)
    redis.call('ZREM', KEYS[7], member)
  end
end
return released
"""


class Outbox:
    """The Redis side of dispatch: entries, their schedule, their status in the decision.

    An entry lives in its subject's outbox hash; the schedule and the parked list live in
    the dispatch hash slot. Every change by a dispatcher carries the fencing token of its
    claim and is refused, inside the script, when a later claim holds the entry or the
    entry is gone: a worker whose delivery outlived its lease cannot undo what the worker
    that took over did. On a single Redis a change is one script; on Redis Cluster the
    entry's part runs first and the schedule's after, in an order where a crash between
    two steps at worst delivers an entry again under the same Idempotency-Key, one lease
    later. Parked entries are removed with their decision, after the retention period."""

    def __init__(self, redis_client: redis.Redis, *, clock: Clock = system_clock,
                 hold_seconds: float = 30.0, retention_seconds: int = 2592000) -> None:
        self._redis = redis_client
        self._clock = clock
        self.hold_ms = int(hold_seconds * 1000)
        self.retention_ms = retention_seconds * 1000
        self._claim = redis_client.register_script(_CLAIM)
        self._adopt = redis_client.register_script(_ADOPT)
        self._change_script = redis_client.register_script(_CHANGE)
        self._remove = redis_client.register_script(_REMOVE)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def entries(self, *, subject: str, decision_id: str, ruleset: Mapping[str, str],
                policy_revision: str, actions: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
        """(outbox field, entry JSON, schedule member) of each allowed action of a decision;
        `DecisionLog.commit` writes them with the decision. The request's `traceparent`
        travels with them to the executor."""
        enqueued_at = rfc3339(self._clock())
        trace = traceparent()
        return [(f"{decision_id}:{action['id']}",
                 jsontext.dumps({"subject": subject, "decision_id": decision_id,
                             "ruleset": dict(ruleset), "policy_revision": policy_revision,
                             "action": action, "attempts": 0, "enqueued_at": enqueued_at,
                             **({"traceparent": trace} if trace else {})}),
                 member_of(subject, decision_id, action["id"]))
                for action in actions]

    def hold(self, members: list[str]) -> Callable[[Any], Any]:
        """A call that schedules new members one hold period ahead, before their entries are
        written: if the writer dies before `release`, they still come due, and the
        dispatcher finds either the entry or nothing (and drops the member)."""
        until = self._now_ms() + self.hold_ms
        return lambda r: r.zadd(keys.dispatch_due(), dict.fromkeys(members, until), nx=True)

    def release(self, members: list[str]) -> Callable[[Any], Any]:
        """A call that makes held members due now (their entries are written, or were not
        because the commit found them queued already: then they are dropped when claimed)."""
        now = self._now_ms()
        return lambda r: r.zadd(keys.dispatch_due(), dict.fromkeys(members, now))

    def claim(self, *, limit: int, lease_seconds: float) -> tuple[int, list[str]]:
        """(the claim's fencing token, the due members it holds for `lease_seconds`)."""
        with unavailable_on_outage():
            claimed = cast(list[str], self._claim(
                keys=[keys.dispatch_due(), keys.dispatch_fence()],
                args=[self._now_ms(), limit, int(lease_seconds * 1000)]))
        return (int(claimed[0]), claimed[1:]) if claimed else (0, [])

    def adopt(self, member: str, token: int,
              lease_ends: float | None = None) -> dict[str, Any] | str | None:
        """The member's entry, now held by this claim until `lease_ends` (its claim's lease;
        None: not held against an earlier claim's takeover); None when it is gone
        (delivered, or never written), a later claim holds it, or an earlier one whose
        lease has not ended; WAITING when it waits for others (it is
        left as it is: on Redis Cluster its member may come due before they are done)."""
        subject, decision_id, action_id = parse_member(member)
        with unavailable_on_outage():
            adopted = cast(list[str], self._adopt(
                keys=[keys.outbox(subject), keys.outbox_fences(subject),
                      keys.outbox_waiting(subject)],
                args=[f"{decision_id}:{action_id}", token, self._now_ms(),
                      0 if lease_ends is None
                      else max(0, int(lease_ends * 1000) - self._now_ms())]))
        if not adopted:
            return None
        return WAITING if adopted[0] == "waiting" else json.loads(adopted[1])

    def entry(self, member: str) -> dict[str, Any] | None:
        subject, decision_id, action_id = parse_member(member)
        with unavailable_on_outage():
            raw = self._redis.hget(keys.outbox(subject), f"{decision_id}:{action_id}")
        return None if raw is None else json.loads(cast(str, raw))

    def forget(self, member: str) -> None:
        """A scheduled member without an entry: delivered by a worker that died before it
        unscheduled it, or held by a decision that was never written."""
        with unavailable_on_outage():
            self._redis.zrem(keys.dispatch_due(), member)

    def _change(self, member: str, token: int | None, entry: dict[str, Any] | None,
                status: dict[str, Any], move: str, at_ms: int) -> bool:
        """The entry (None: removed) and its status in the decision, then the schedule
        (`move`: due at `at_ms`, delivered, or parked at `at_ms`), and the actions that wait
        for it (released, or blocked): False, changing nothing, if `token`'s claim has
        moved on (None: an operator's change, not fenced)."""
        subject, decision_id, action_id = parse_member(member)
        field = f"{decision_id}:{action_id}"
        subject_keys = [keys.outbox(subject), keys.outbox_fences(subject),
                        keys.decision_action_status(subject, decision_id),
                        keys.outbox_waiting(subject), keys.outbox_dependents(subject),
                        keys.subject_sent_actions(subject)]
        args = [field, "" if token is None else token, action_id,
                json.dumps(status), "" if entry is None else json.dumps(entry), move, at_ms,
                member]
        with unavailable_on_outage():
            if not is_cluster(self._redis):
                return bool(self._change_script(
                    keys=[*subject_keys, keys.dispatch_due(), keys.dispatch_failed()],
                    args=args))
            calls: list[Callable[[Any], Any]] = []
            if move == "delivered":  # held first: a crash after the change still sends them
                waiting = self._redis.hget(keys.outbox_dependents(subject), field)
                if waiting:
                    calls.append(self.hold([d["member"] for d in json.loads(waiting)]))
            calls.append(lambda r: self._change_script(keys=subject_keys, args=args, client=r))
            changed = in_order(self._redis, calls, scripts=[self._change_script])[-1]
            if not changed:
                return False
            released = cast(list[str], changed[1:])
            if move == "due":
                calls = [lambda r: r.zadd(keys.dispatch_due(), {member: at_ms}),
                         lambda r: r.zrem(keys.dispatch_failed(), member)]
            elif move == "delivered":
                calls = [*([self.release(released)] if released else []),
                         lambda r: r.zrem(keys.dispatch_due(), member)]
            else:  # listed as parked first: a crash before the second step is repaired
                calls = [lambda r: r.zadd(keys.dispatch_failed(), {member: at_ms}),
                         lambda r: r.zrem(keys.dispatch_due(), member)]
            in_order(self._redis, calls)
        return True

    def delivered(self, member: str, token: int, attempts: int) -> bool:
        return self._change(member, token, None,
                            {"status": DISPATCHED, "attempts": attempts,
                             "dispatched_at": rfc3339(self._clock())}, "delivered",
                            self._now_ms())

    def retry(self, member: str, token: int, entry: dict[str, Any], attempts: int, error: str,
              delay_seconds: float) -> bool:
        due = self._now_ms() + int(delay_seconds * 1000)
        return self._change(member, token, {**entry, "attempts": attempts, "last_error": error},
                            {"status": QUEUED, "attempts": attempts, "last_error": error},
                            "due", due)

    def park(self, member: str, token: int, entry: dict[str, Any], attempts: int,
             error: str) -> bool:
        """Parked until an operator re-drives it or its decision expires (the parked list is
        ordered by when that is)."""
        now = self._now_ms()
        expires = _ms_of(entry.get("enqueued_at"), now) + self.retention_ms
        return self._change(member, token, {**entry, "attempts": attempts, "last_error": error,
                                            "failed_at": rfc3339(now / 1000)},
                            {"status": FAILED, "attempts": attempts, "last_error": error},
                            "parked", expires)

    def failed(self, limit: int = 100) -> list[dict[str, Any]]:
        """Parked actions, oldest first, for an operator to inspect and re-drive."""
        self.expire_parked()
        with unavailable_on_outage():
            members = cast(list[str], self._redis.zrange(keys.dispatch_failed(), 0, limit - 1))
        entries = []
        for member in members:
            entry = self.entry(member)
            if entry is not None and "failed_at" in entry:
                entries.append(entry)
            else:  # re-driven, and delivered before its re-drive was fully recorded
                with unavailable_on_outage():
                    self._redis.zrem(keys.dispatch_failed(), member)
        return entries

    def expire_parked(self) -> int:
        """Remove the parked entries whose decisions have expired; how many."""
        with unavailable_on_outage():
            members = cast(list[str], self._redis.zrangebyscore(
                keys.dispatch_failed(), "-inf", self._now_ms(), start=0, num=500))
            for member in members:
                subject, decision_id, action_id = parse_member(member)
                self._remove(keys=[keys.outbox(subject), keys.outbox_fences(subject),
                                   keys.subject_sent_actions(subject)],
                             args=[f"{decision_id}:{action_id}", action_id, decision_id])
                self._redis.zrem(keys.dispatch_failed(), member)
        return len(members)

    def parked(self, subject: str, decision_id: str, action_id: str) -> dict[str, Any]:
        """A parked entry; NotFound if the action is not parked."""
        member = member_of(subject, decision_id, action_id)
        entry = self.entry(member)
        with unavailable_on_outage():
            parked = self._redis.zscore(keys.dispatch_failed(), member) is not None
        if entry is None or not parked:
            raise NotFound(f"no failed action {action_id!r} in decision {decision_id!r}")
        return entry

    def redrive(self, subject: str, decision_id: str, action_id: str,
                verdict: dict[str, Any] | None = None) -> None:
        """Put a parked action back in the schedule with its attempts reset (`verdict`: the
        current policies' allow, recorded with it)."""
        member = member_of(subject, decision_id, action_id)
        entry = {k: v for k, v in self.parked(subject, decision_id, action_id).items()
                 if k != "failed_at"}
        now = self._now_ms()
        regated = {"regated": verdict} if verdict is not None else {}
        self._change(member, None, {**entry, "attempts": 0, "redriven_at": rfc3339(now / 1000),
                                    **regated},
                     {"status": QUEUED, "attempts": 0, "last_error": entry.get("last_error"),
                      **regated}, "due", now)

    def refuse_redrive(self, subject: str, decision_id: str, action_id: str,
                       verdict: dict[str, Any]) -> None:
        """Keep a parked action parked, with the verdict that refused its re-drive recorded
        beside the first one."""
        member = member_of(subject, decision_id, action_id)
        entry = self.parked(subject, decision_id, action_id)
        refused = [*entry.get("redrive_refused", []), verdict]
        with unavailable_on_outage():
            score = self._redis.zscore(keys.dispatch_failed(), member)
        self._change(member, None, {**entry, "redrive_refused": refused},
                     {"status": FAILED, "attempts": entry["attempts"],
                      "last_error": entry.get("last_error"), "redrive_refused": refused},
                     "parked", int(score or self._now_ms()))


def _ms_of(moment: str | None, default: int) -> int:
    if not moment:
        return default
    return int(datetime.fromisoformat(moment.replace("Z", "+00:00")).timestamp() * 1000)
