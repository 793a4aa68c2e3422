"""The decision log: every decision recorded with its outbox entries, in one atomic script on
a single Redis (in a crash-safe order on Redis Cluster: see `DecisionLog.commit`).

A record is written once and never changed; what changes as the outbox delivers
(queued -> dispatched or failed) lives in a status hash beside it and is merged in
on read. An allowed action is sent once per subject: an action id is a hash of its
type and parameters, and one that an earlier decision on the subject already queued
is recorded, not sent again (a subject decided by a trigger and by a caller does not
get two purchase orders). Records expire after the retention period; each subject keeps an index of
its recent decisions. An Idempotency-Key is remembered with the fingerprint of its
request, so a retried request gets the first decision back instead of a second one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis

from app.dispatch.outbox import Outbox, parse_member
from app.shared import jsontext, keys
from app.shared.clock import Clock, system_clock
from app.shared.errors import Conflict, NotFound
from app.shared.store import in_order, is_cluster, run_script, unavailable_on_outage


@dataclass(frozen=True)
class Recorded:
    """A decision as the log holds it."""

    record: dict[str, Any]
    replayed: bool  # an earlier decision, returned again for the same Idempotency-Key
    text: str | None = None  # the record as JSON, when it is exactly what was stored

    @property
    def json(self) -> str:
        return self.text if self.text is not None else jsontext.dumps(self.record)


@dataclass(frozen=True)
class IdempotencyClaim:
    caller: str
    key: str
    fingerprint: str


# A commit in one script. KEYS: 1 record, 2 subject index, 3 action statuses, 4 sent
# actions, 5 outbox, 6 Idempotency-Key (ARGV[6] '' when none), 7 the subject's decision
# failures, 8 the outbox's waiting actions, 9 their prerequisites' dependents: the
# subject's keys, which share its hash slot. On a single server also 10 the decision id
# -> subject pointer, 11 the dispatch schedule, 12 the time index and 13... archive
# entries, so the whole commit is one atomic step; on Redis Cluster those are written
# around the script, in `DecisionLog.commit`'s order.
# ARGV: 1 subject, 2 decision id, 3 record JSON, 4 ttl s, 5 now ms, 6 Idempotency-Key value,
#       7 its ttl s, 8 ruleset, 9 the ruleset's standing on the subject: 'clear' (it was
#       decided), 'keep' (a dry run or inline facts say nothing of the pool) or the failure
#       (JSON), 10 number of actions to queue, then per action (each after those it waits
#       for): id, outbox field, entry, schedule member, the ids of the actions it waits
#       for (space-separated, '' none);
#       then the time index's member and the oldest member it keeps; then the value of
#       each archive entry.
# Returns {'replayed', idempotency value} or {'ok', JSON {earlier: action id -> the
# earlier decision on the subject that already queued it (it is not queued again),
# settled: action id -> the delivery status of each that waits for others (it may wait
# for an earlier decision's action, or find it delivered or parked)}}.
_COMMIT = """
if ARGV[6] ~= '' then
  local existing = redis.call('GET', KEYS[6])
  if existing then return {'replayed', existing} end
end
local single = #KEYS > 9
local ttl, now = tonumber(ARGV[4]), tonumber(ARGV[5])
local earlier_of, settled = {}, {}
local field_of, fresh, blocked_here = {}, {}, {}
local n = tonumber(ARGV[10])
for i = 0, n - 1 do
  local at = 11 + 5 * i
  local id, field, entry = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  local earlier = redis.call('HGET', KEYS[4], id)
  if earlier then
    redis.call('HSET', KEYS[3], id, cjson.encode({status = 'recorded',
      not_sent = 'already queued for ' .. ARGV[1] .. ' by decision ' .. earlier}))
    earlier_of[id] = earlier
    field_of[id] = earlier .. ':' .. id
  else
    redis.call('HSET', KEYS[4], id, ARGV[2])
    redis.call('HSET', KEYS[5], field, entry)
    field_of[id] = field
    fresh[#fresh + 1] = at
  end
end
for _, at in ipairs(fresh) do
  local id, field, member, needs = ARGV[at], ARGV[at + 1], ARGV[at + 3], ARGV[at + 4]
  local waits, waiting_for, blocked = {}, {}, nil
  for prerequisite in string.gmatch(needs, '%S+') do
    local pfield = field_of[prerequisite]
    local raw = redis.call('HGET', KEYS[5], pfield)
    if blocked_here[pfield] then
      blocked = blocked_here[pfield]
      break
    elseif raw then  -- not delivered yet (gone: delivered)
      local pentry = cjson.decode(raw)
      if pentry.failed_at then
        blocked = {type = pentry.action.type, action_id = prerequisite,
                   decision_id = pentry.decision_id, status = 'failed',
                   why = 'was parked after failed delivery: ' .. tostring(pentry.last_error)}
        break
      end
      waits[#waits + 1] = pfield
      waiting_for[#waiting_for + 1] = {decision_id = pentry.decision_id,
        action_id = prerequisite, type = pentry.action.type}
    end
  end
  if blocked then
    local reason = 'it requires ' .. blocked.type .. ' (' .. blocked.action_id .. '), which ' ..
      blocked.why
    local status = cjson.encode({status = 'blocked', blocked = reason,
      prerequisite = {decision_id = blocked.decision_id, action_id = blocked.action_id,
                      type = blocked.type, status = blocked.status}})
    redis.call('HSET', KEYS[3], id, status)
    redis.call('HDEL', KEYS[5], field)
    redis.call('HDEL', KEYS[4], id)
    settled[id] = status
    blocked_here[field] = {type = cjson.decode(ARGV[at + 2]).action.type, action_id = id,
                           decision_id = ARGV[2], status = 'blocked',
                           why = 'is blocked: ' .. reason}
  elseif #waits > 0 then
    local status = cjson.encode({status = 'waiting', waiting_for = waiting_for})
    redis.call('HSET', KEYS[3], id, status)
    redis.call('HSET', KEYS[8], field, cjson.encode(waits))
    local entry = cjson.decode(ARGV[at + 2])
    for _, pfield in ipairs(waits) do
      local dependents = cjson.decode(redis.call('HGET', KEYS[9], pfield) or '[]')
      dependents[#dependents + 1] = {field = field, statuses = KEYS[3], action_id = id,
        decision_id = ARGV[2], type = entry.action.type, member = member}
      redis.call('HSET', KEYS[9], pfield, cjson.encode(dependents))
    end
    settled[id] = status
  else
    redis.call('HSET', KEYS[3], id, '{"status": "queued", "attempts": 0}')
    if needs ~= '' then settled[id] = '{"status": "queued", "attempts": 0}' end
    if single then redis.call('ZADD', KEYS[11], now, member) end
  end
end
if n > 0 then
  redis.call('EXPIRE', KEYS[3], ttl)
  if #fresh > 0 then redis.call('EXPIRE', KEYS[4], ttl) end
end
redis.call('SET', KEYS[1], ARGV[3], 'EX', ttl)
redis.call('ZADD', KEYS[2], now, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl * 1000)
redis.call('EXPIRE', KEYS[2], ttl)
if ARGV[9] == 'clear' then
  redis.call('HDEL', KEYS[7], ARGV[8])
elseif ARGV[9] ~= 'keep' then
  redis.call('HSET', KEYS[7], ARGV[8], ARGV[9])
  redis.call('EXPIRE', KEYS[7], ttl)
end
if ARGV[6] ~= '' then redis.call('SET', KEYS[6], ARGV[6], 'EX', tonumber(ARGV[7])) end
if single then
  redis.call('SET', KEYS[10], ARGV[1], 'EX', ttl)
  local at = 11 + 5 * n
  redis.call('ZADD', KEYS[12], 0, ARGV[at])
  redis.call('ZREMRANGEBYLEX', KEYS[12], '-', '(' .. ARGV[at + 1])
  for k = 13, #KEYS do redis.call('SET', KEYS[k], ARGV[k + 5 * n], 'NX') end
end
return {'ok', cjson.encode({earlier = earlier_of, settled = settled})}
"""


def _standing(record: dict[str, Any]) -> str:
    """What a decision says of its ruleset's standing on the subject: only one on the pool
    as it is (no dry run, no inline facts) may mark it undecidable or decidable again."""
    if record["dry_run"] or any(fact.get("inline") for fact in record["facts"]):
        return "keep"
    if record.get("error") is None:
        return "clear"
    return json.dumps({"decision_id": record["decision_id"], "failed_at": record["created_at"],
                       **record["error"]})


class DecisionLog:
    def __init__(self, redis_client: redis.Redis, outbox: Outbox, *, retention_seconds: int,
                 idempotency_ttl_seconds: int, clock: Clock = system_clock) -> None:
        self._redis = redis_client
        self._outbox = outbox
        self.retention_seconds = retention_seconds
        self.idempotency_ttl_seconds = idempotency_ttl_seconds
        self._clock = clock
        self._commit = redis_client.register_script(_COMMIT)

    def replayed(self, subject: str, claim: IdempotencyClaim) -> Recorded | None:
        """The decision this Idempotency-Key already produced; Conflict if it was used for a
        different request."""
        with unavailable_on_outage():
            raw = self._redis.get(keys.idempotency(subject, claim.caller, claim.key))
        if raw is None:
            return None
        return self._earlier(cast(str, raw), claim)

    def _earlier(self, remembered: str, claim: IdempotencyClaim) -> Recorded:
        """The decision an Idempotency-Key remembers, if the request is the same; Conflict
        if the key was used for a different one (also when two raced for it)."""
        earlier = json.loads(remembered)
        if earlier["fingerprint"] != claim.fingerprint:
            raise Conflict(f"Idempotency-Key {claim.key!r} was used for a different request")
        return Recorded(self.get(earlier["decision_id"]), replayed=True)

    def commit(self, record: dict[str, Any], *, enqueue: list[dict[str, Any]],
               prerequisites: Mapping[str, list[str]] | None = None,
               idempotency: IdempotencyClaim | None = None,
               archive: dict[str, str] | None = None) -> Recorded:
        """Write the record, its index entry, its outbox entries, its Idempotency-Key and the
        archive entries of its versions (see `app.decisions.archive`): one script, so one
        atomic step, on a single Redis. `prerequisites`: action id -> the ids of the actions
        it waits for (see `Outbox`). Returns the record as stored, or the decision a
        concurrent request with the same key recorded first (`replayed`).

        On Redis Cluster the steps run in this order, and a crash between two leaves: an
        id pointer without a record (a 404, as if never written); archive entries (written
        once, harmless); schedule entries held one lease ahead without outbox entries (the
        dispatcher drops them when they come due); or outbox entries still held (they are
        delivered one lease later instead of now, or looked at and left if they wait for
        others). Nothing is lost or sent unallowed."""
        subject, decision_id = record["subject"], record["decision_id"]
        prerequisites = prerequisites or {}
        idem_key, idem_value = keys.idempotency(subject, "", ""), ""
        if idempotency is not None:
            idem_key = keys.idempotency(subject, idempotency.caller, idempotency.key)
            idem_value = json.dumps({"decision_id": decision_id,
                                     "fingerprint": idempotency.fingerprint})
        entries = self._outbox.entries(subject=subject, decision_id=decision_id,
                                       ruleset=record["ruleset"],
                                       policy_revision=record["policy"]["revision"],
                                       actions=enqueue)
        text = jsontext.dumps(record)
        archive = archive or {}
        ttl = self.retention_seconds
        standing = _standing(record)
        script_keys = [keys.decision_record(subject, decision_id),
                       keys.subject_decisions(subject),
                       keys.decision_action_status(subject, decision_id),
                       keys.subject_sent_actions(subject), keys.outbox(subject), idem_key,
                       keys.subject_decision_failures(subject), keys.outbox_waiting(subject),
                       keys.outbox_dependents(subject)]
        now_ms = int(self._clock() * 1000)
        indexed, oldest = _time_member(now_ms, decision_id), _time_member(now_ms - ttl * 1000, "")
        args: list[Any] = [subject, decision_id, text, ttl, now_ms,
                           idem_value, self.idempotency_ttl_seconds, record["ruleset"]["name"],
                           standing, len(enqueue)]
        for action, (field, entry, member) in zip(enqueue, entries, strict=True):
            args += [action["id"], field, entry, member,
                     " ".join(prerequisites.get(action["id"], ()))]
        with unavailable_on_outage():
            if is_cluster(self._redis):
                result = self._commit_on_cluster(
                    decision_id, subject, script_keys, args, archive,
                    members=[member for _, _, member in entries], indexed=indexed,
                    oldest=oldest)
            else:
                [result] = in_order(self._redis, [lambda r: run_script(
                    r, self._commit,
                    [*script_keys, keys.decision_subject(decision_id), keys.dispatch_due(),
                     keys.decisions_by_time(), *archive],
                    [*args, indexed, oldest, *archive.values()])], scripts=[self._commit])
        if result[0] == "replayed":
            assert idempotency is not None
            return self._earlier(result[1], idempotency)
        outcome = json.loads(result[1])
        earlier, settled = outcome["earlier"] or {}, outcome["settled"] or {}
        if not earlier and not settled:
            return Recorded(record, replayed=False, text=text)
        for action in record["actions"]:
            if action["id"] in earlier:
                action["status"] = "recorded"
                action["delivery"] = {"not_sent": f"already queued for {subject} by decision "
                                                  f"{earlier[action['id']]}"}
            elif action["id"] in settled:
                delivery = json.loads(settled[action["id"]])
                action["status"] = delivery.pop("status")
                action["delivery"] = delivery
        return Recorded(record, replayed=False)

    def _commit_on_cluster(self, decision_id: str, subject: str, script_keys: list[str],
                           args: list[Any], archive: dict[str, str], *, members: list[str],
                           indexed: str, oldest: str) -> list[Any]:
        """The commit's steps in their crash-safe order (see `commit`); then the actions
        that need not wait are made due."""
        ttl = self.retention_seconds
        calls: list[Callable[[Any], Any]] = [
            lambda r: r.set(keys.decision_subject(decision_id), subject, ex=ttl),
            lambda r: r.zadd(keys.decisions_by_time(), {indexed: 0}),
            lambda r: r.zremrangebylex(keys.decisions_by_time(), "-", f"({oldest}"),
            *((lambda r, k=key, v=value: r.set(k, v, nx=True))
              for key, value in archive.items()),
            *([self._outbox.hold(members)] if members else []),
            lambda r: run_script(r, self._commit, script_keys, args),
        ]
        result = cast(list[Any], in_order(self._redis, calls, scripts=[self._commit])[-1])
        if result[0] == "ok" and members:
            settled = json.loads(result[1])["settled"] or {}
            due = [member for member in members
                   if parse_member(member)[2] not in settled
                   or json.loads(settled[parse_member(member)[2]])["status"] == "queued"]
            if due:
                in_order(self._redis, [self._outbox.release(due)])
        return result

    def failures(self, subject: str) -> list[dict[str, Any]]:
        """Per ruleset, the last decision on the subject that could not run (until one
        runs again): {ruleset, decision_id, failed_at, type, title, detail}."""
        with unavailable_on_outage():
            raw = cast(dict[str, str],
                       self._redis.hgetall(keys.subject_decision_failures(subject)))
        return [{"ruleset": ruleset, **json.loads(text)} for ruleset, text in sorted(raw.items())]

    def _merge(self, record: dict[str, Any], statuses: dict[str, str]) -> dict[str, Any]:
        for action in record["actions"]:
            raw = statuses.get(action["id"])
            if raw is not None:
                delivery = json.loads(raw)
                action["status"] = delivery.pop("status")
                action["delivery"] = delivery
        return record

    def get(self, decision_id: str) -> dict[str, Any]:
        with unavailable_on_outage():
            subject = cast(str | None, self._redis.get(keys.decision_subject(decision_id)))
            if subject is None:
                raise NotFound(f"no decision with id {decision_id!r}")
            with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(keys.decision_record(subject, decision_id))
                pipe.hgetall(keys.decision_action_status(subject, decision_id))
                raw, statuses = pipe.execute()
        if raw is None:
            raise NotFound(f"no decision with id {decision_id!r}")
        return self._merge(jsontext.loads(raw), statuses)

    def recent(self, subject: str, limit: int, *, since_ms: int | None = None,
               until_ms: int | None = None) -> list[dict[str, Any]]:
        """The subject's decisions (recorded between `since_ms` and `until_ms`, both
        included, when given), newest first."""
        with unavailable_on_outage():
            if since_ms is None and until_ms is None:
                ids = cast(list[str], self._redis.zrevrange(keys.subject_decisions(subject), 0,
                                                            limit - 1))
            else:
                ids = cast(list[str], self._redis.zrevrangebyscore(
                    keys.subject_decisions(subject), "+inf" if until_ms is None else until_ms,
                    "-inf" if since_ms is None else since_ms, start=0, num=limit))
            with self._redis.pipeline(transaction=False) as pipe:
                for decision_id in ids:
                    pipe.get(keys.decision_record(subject, decision_id))
                    pipe.hgetall(keys.decision_action_status(subject, decision_id))
                rows = pipe.execute()
        records = []
        for raw, statuses in zip(rows[::2], rows[1::2], strict=True):
            if raw is not None:  # expired since it was indexed
                records.append(self._merge(jsontext.loads(raw), statuses))
        return records

    def records(self, decision_ids: Iterable[str], *, chunk: int = 500) -> Iterator[dict[str, Any]]:
        """The records of many decisions (as recorded, without delivery status), fetched in
        pipelined chunks; ids that expired or never existed are skipped."""
        ids = list(decision_ids)
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            with unavailable_on_outage():
                with self._redis.pipeline(transaction=False) as pipe:
                    for decision_id in part:
                        pipe.get(keys.decision_subject(decision_id))
                    subjects = pipe.execute()
                with self._redis.pipeline(transaction=False) as pipe:
                    for decision_id, subject in zip(part, subjects, strict=True):
                        if subject is not None:
                            pipe.get(keys.decision_record(subject, decision_id))
                    raws = pipe.execute()
            for raw in raws:
                if raw is not None:
                    yield json.loads(raw)

    def ids_of(self, subject: str, *, since_ms: int | None = None,
               until_ms: int | None = None, limit: int | None = None) -> list[str]:
        """A subject's decision ids in a time range, oldest first (the first `limit`)."""
        with unavailable_on_outage():
            return cast(list[str], self._redis.zrangebyscore(
                keys.subject_decisions(subject), "-inf" if since_ms is None else since_ms,
                "+inf" if until_ms is None else until_ms,
                start=None if limit is None else 0, num=limit))

    def ids_between(self, *, since_ms: int | None = None, until_ms: int | None = None,
                    after: str | None = None, limit: int) -> tuple[list[str], str | None]:
        """Up to `limit` decision ids recorded in a time range, oldest first, starting after
        the cursor `after`; and the cursor of the next page (None: this was the last)."""
        low = f"({after}" if after else f"[{_time_member(since_ms or 0, '')}"
        high = f"({_time_member(until_ms + 1, '')}" if until_ms is not None else "+"
        with unavailable_on_outage():
            members = cast(list[str], self._redis.zrangebylex(
                keys.decisions_by_time(), low, high, start=0, num=limit + 1))
        page = members[:limit]
        ids = [member.split(":", 1)[1] for member in page]
        return ids, (page[-1] if len(members) > limit else None)

    def all_ids(self, *, since_ms: int | None = None, until_ms: int | None = None,
                page: int = 500) -> Iterator[str]:
        """Every recorded decision id in a time range (for export), oldest first, a page of
        the index at a time."""
        after = None
        while True:
            ids, after = self.ids_between(since_ms=since_ms, until_ms=until_ms, after=after,
                                          limit=page)
            yield from ids
            if after is None:
                return


def _time_member(epoch_ms: int, decision_id: str) -> str:
    """The time index's member: its time first, fixed-width, so members sort as times."""
    return f"{max(0, epoch_ms):013d}:{decision_id}"
