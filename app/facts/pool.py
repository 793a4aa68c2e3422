"""The shared fact pool: what every department has said about every subject.

A fact is stored as JSON in its subject's hash, with its version first so that a
Lua script can bump it without decoding the rest. A batch is one script call, so
it is stored all or none and no reader sees half of it. Facts posted with
`ttl_seconds` carry `expires_at`; readers never return an expired fact, and the
first reader (or writer) that meets one purges the subject's expired facts.

Facts are only what their departments said. A fact id belongs to the department that
posted it until the fact is retracted or expires: another department cannot replace
it. Each department holds at most `Quotas` of a subject's pool, counted in a hash
beside it that every script keeps exact, so that no department can make a subject too
large to decide. (Which department may post which fact type is the rulesets' to say:
`app.rules.ownership`.)

Each fact id also has an owner key naming its subject, for `GET`/`DELETE` by id. On a
single server the scripts write it with the facts, so a batch with all its ids is one
atomic step. On Redis Cluster the owner keys live in other hash slots than the subject's
keys, so there a batch is atomic per subject: the ids are claimed first (a conflict
stores nothing), then each subject's facts are written by one script. An owner key whose
fact is gone (a crash between the steps) points at nothing and is ignored.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, cast

import redis

from app.facts.triggers import member_of as trigger_member
from app.shared import jsontext, keys
from app.shared.clock import Clock, rfc3339, system_clock
from app.shared.config import DEFAULTS
from app.shared.errors import Conflict, DecisionServiceError, Forbidden, NotFound, QuotaExceeded
from app.shared.store import is_cluster, unavailable_on_outage


class FactRecord(TypedDict):
    """A stored fact, exactly as the API returns it."""

    version: int
    id: str
    subject: str
    type: str
    department: str
    data: dict[str, Any]
    recorded_at: str
    expires_at: str | None


# Shared by the scripts below: a subject's fact counts follow every write and removal, so a
# quota is one HGET, not a scan of the pool. Counts of a pool written before they were kept
# are rebuilt the first time a script meets it.
_COUNTING = """
local function meta(body)
  local fact = cjson.decode(body)
  return fact.department, fact.type
end
local function bump(counts, department, fact_type, delta, with_department)
  local fields = {'t:' .. department .. ':' .. fact_type}
  if with_department then
    fields[2] = 'd:' .. department
    fields[3] = 'all'
  end
  for _, field in ipairs(fields) do
    if redis.call('HINCRBY', counts, field, delta) <= 0 then redis.call('HDEL', counts, field) end
  end
end
local function recount(facts, counts)
  if redis.call('EXISTS', counts) == 1 or redis.call('HLEN', facts) == 0 then return end
  for _, body in ipairs(redis.call('HVALS', facts)) do
    local department, fact_type = meta(body)
    bump(counts, department, fact_type, 1, true)
  end
end
local function forget(facts, counts, id)
  local old = redis.call('HGET', facts, id)
  if not old then return false end
  local department, fact_type = meta(old)
  bump(counts, department, fact_type, -1, true)
  redis.call('HDEL', facts, id)
  return true
end
local function purge(facts, expiry, counts, now)
  recount(facts, counts)
  local ids = redis.call('ZRANGEBYSCORE', expiry, '-inf', now)
  for _, id in ipairs(ids) do forget(facts, counts, id) end
  if #ids > 0 then redis.call('ZREMRANGEBYSCORE', expiry, '-inf', now) end
  return #ids
end
"""

# KEYS per fact: facts hash, expiry zset, counts hash[, owner key] (stride 4 with owner
# keys, 3 without); then per triggered decision the subject's pending list of it; then,
# on a single server, the trigger schedule. ARGV: now_ms, stride, most facts per
# department, most per type, most per subject, number of facts, of triggers, then per
# fact: id, subject, department, type, JSON without version, expires_ms or ""; then per
# trigger: the triggering fact (JSON), the schedule member.
# Expired facts are purged first (they own nothing and count for nothing); then every
# check runs before any write, so a batch is stored all or none, and the decisions its
# facts trigger are asked for in the same step.
_PUT = _COUNTING + """
local now, stride = tonumber(ARGV[1]), tonumber(ARGV[2])
local max_department, max_type = tonumber(ARGV[3]), tonumber(ARGV[4])
local max_subject = tonumber(ARGV[5])
local n, triggers = tonumber(ARGV[6]), tonumber(ARGV[7])
local function arg(i, k) return ARGV[7 + 6 * i + k] end
local purged = {}
for i = 0, n - 1 do
  local facts = KEYS[stride * i + 1]
  if not purged[facts] then
    purged[facts] = true
    purge(facts, KEYS[stride * i + 2], KEYS[stride * i + 3], now)
  end
end
local projected = {}
local function project(counts, field, delta)
  local key = counts .. ' ' .. field
  local value = projected[key]
  if value == nil then value = tonumber(redis.call('HGET', counts, field) or '0') end
  projected[key] = value + delta
  return projected[key]
end
local changes = {}  -- per fact: 'new', or the type it replaces, or nil (same type)
for i = 0, n - 1 do
  local facts, counts = KEYS[stride * i + 1], KEYS[stride * i + 3]
  local id, subject, department, fact_type = arg(i, 1), arg(i, 2), arg(i, 3), arg(i, 4)
  if stride == 4 then
    local owner = redis.call('GET', KEYS[4 * i + 4])
    if owner and owner ~= subject then return {'conflict', id, owner} end
  end
  local type_field = 't:' .. department .. ':' .. fact_type
  local old = redis.call('HGET', facts, id)
  if old then
    local old_department, old_type = meta(old)
    if old_department ~= department then return {'not_owner', id, old_department} end
    if old_type ~= fact_type then
      project(counts, 't:' .. department .. ':' .. old_type, -1)
      if project(counts, type_field, 1) > max_type then
        return {'quota', 'type', subject, department, fact_type, max_type}
      end
      changes[i] = old_type
    end
  else
    if project(counts, 'all', 1) > max_subject then
      return {'quota', 'subject', subject, department, fact_type, max_subject}
    end
    if project(counts, 'd:' .. department, 1) > max_department then
      return {'quota', 'department', subject, department, fact_type, max_department}
    end
    if project(counts, type_field, 1) > max_type then
      return {'quota', 'type', subject, department, fact_type, max_type}
    end
    changes[i] = 'new'
  end
end
local versions = {'ok'}
for i = 0, n - 1 do
  local facts, expiry, counts = KEYS[stride * i + 1], KEYS[stride * i + 2], KEYS[stride * i + 3]
  local id, subject, department, fact_type = arg(i, 1), arg(i, 2), arg(i, 3), arg(i, 4)
  local body, expires = arg(i, 5), arg(i, 6)
  local version = 1
  local old = redis.call('HGET', facts, id)
  if old then version = tonumber(string.match(old, '^{"version":(%d+),')) + 1 end
  if changes[i] == 'new' then
    bump(counts, department, fact_type, 1, true)
  elseif changes[i] then
    bump(counts, department, changes[i], -1, false)
    bump(counts, department, fact_type, 1, false)
  end
  redis.call('HSET', facts, id, '{"version":' .. version .. ',' .. string.sub(body, 2))
  if expires == '' then
    redis.call('ZREM', expiry, id)
  else
    redis.call('ZADD', expiry, expires, id)
  end
  if stride == 4 then
    local owner = KEYS[4 * i + 4]
    if expires == '' then
      redis.call('SET', owner, subject)
    else
      redis.call('SET', owner, subject, 'PX', math.max(1, tonumber(expires) - now))
    end
  end
  versions[#versions + 1] = version
end
local schedule = KEYS[stride * n + triggers + 1]
for t = 0, triggers - 1 do
  local base = 7 + 6 * n + 2 * t
  redis.call('RPUSH', KEYS[stride * n + t + 1], ARGV[base + 1])
  if schedule then redis.call('ZADD', schedule, 'NX', now, ARGV[base + 2]) end
end
return versions
"""

# KEYS: facts hash, expiry zset, counts hash[, owner key]; ARGV: id, subject, now_ms, the
# department the caller was allowed to retract for ('' for any). Returns 1 if a live fact
# was retracted, 0 if there was none (or it had expired), -1 if the fact is now another
# department's (it expired and was posted again since the caller was allowed).
_RETRACT = _COUNTING + """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old and ARGV[4] ~= '' and meta(old) ~= ARGV[4] then return -1 end
if KEYS[4] then
  if redis.call('GET', KEYS[4]) ~= ARGV[2] then return 0 end
  redis.call('DEL', KEYS[4])
end
recount(KEYS[1], KEYS[3])
local expiry = redis.call('ZSCORE', KEYS[2], ARGV[1])
local removed = forget(KEYS[1], KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if not removed or (expiry and tonumber(expiry) <= tonumber(ARGV[3])) then return 0 end
return 1
"""

# KEYS: the owner key; ARGV: the subject. Deletes it if it still names the subject.
_FORGET_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Redis Cluster: KEYS: an owner key; ARGV: the subject claiming it, what the claimer saw
# there ('' for nothing), how long the claim holds (ms) unless the write confirms it.
# Returns 1 if claimed, 0 if someone else got there first.
_CLAIM_OWNER = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[2] and current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[3]))
return 1
"""

# KEYS: facts hash, expiry zset, counts hash; ARGV: now_ms. Owner keys expire by themselves.
_PURGE_EXPIRED = _COUNTING + """
return purge(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]))
"""


# How long a claim of a fact id on Redis Cluster holds before its write confirms it: a
# writer that dies between the two leaves the id free again after this.
CLAIM_HOLD_MS = 30_000


# How far ahead a trigger is held on Redis Cluster before the facts that ask for it are
# written (a writer that dies between leaves it due then, finding nothing new).
TRIGGER_HOLD_MS = 30_000


@dataclass(frozen=True)
class Trigger:
    """A decision a stored fact asks for: its pending list, the fact as it is noted there
    (JSON), the schedule member."""

    pending_key: str
    fact: str
    member: str


def _trigger(record: FactRecord, ruleset: str) -> Trigger:
    return Trigger(keys.subject_trigger_pending(record["subject"], ruleset),
                   json.dumps({"id": record["id"], "type": record["type"],
                               "department": record["department"]}),
                   trigger_member(record["subject"], ruleset))


def _new_fact_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Quotas:
    """How much of one subject's pool one department may hold (live facts)."""

    per_department: int = int(DEFAULTS["max_facts_per_department"])
    per_type: int = int(DEFAULTS["max_facts_per_type"])
    per_subject: int = int(DEFAULTS["max_facts_per_subject"])


class FactPool:
    def __init__(self, redis_client: redis.Redis, *, clock: Clock = system_clock,
                 quotas: Quotas = Quotas()) -> None:
        self._redis = redis_client
        self._clock = clock
        self.quotas = quotas
        self._put = redis_client.register_script(_PUT)
        self._retract = redis_client.register_script(_RETRACT)
        self._purge = redis_client.register_script(_PURGE_EXPIRED)
        self._forget_owner = redis_client.register_script(_FORGET_OWNER)
        self._claim_owner = redis_client.register_script(_CLAIM_OWNER)
        self._cluster = is_cluster(redis_client)

    def put(self, facts: Sequence[dict[str, Any]], *,
            triggers: Mapping[str, Sequence[str]] | None = None) -> list[FactRecord]:
        """Store validated facts (see `app.shared.schemas.FactInSchema`) all or none, and ask, in
        the same step, for the decisions they trigger (`triggers`: fact type -> rulesets).

        A fact whose id is already stored replaces it with the next version. Nothing is
        stored when an id is stored under another subject (`Conflict`), when it belongs to
        another department (`Forbidden`: an id stays its department's until the fact is
        retracted or expires), or when a department would exceed its quota on a subject
        (`QuotaExceeded`).
        """
        now_ms = int(self._clock() * 1000)
        recorded_at = rfc3339(now_ms / 1000)
        records: list[FactRecord] = []
        args: list[list[Any]] = []  # per fact: id, subject, department, type, JSON, expiry
        for fact in facts:
            ttl = fact.get("ttl_seconds")
            expires_ms = now_ms + ttl * 1000 if ttl else None
            record: FactRecord = {
                "version": 0,  # set by the script
                "id": fact.get("id") or _new_fact_id(),
                "subject": fact["subject"],
                "type": fact["type"],
                "department": fact["department"],
                "data": fact["data"],
                "recorded_at": recorded_at,
                "expires_at": rfc3339(expires_ms / 1000) if expires_ms else None,
            }
            body = {k: v for k, v in record.items() if k != "version"}
            args.append([record["id"], record["subject"], record["department"],
                         record["type"], jsontext.dumps(body), expires_ms or ""])
            records.append(record)
        asked = [(index, _trigger(record, ruleset))
                 for index, record in enumerate(records)
                 for ruleset in (triggers or {}).get(record["type"], ())]
        with unavailable_on_outage():
            if self._cluster:
                versions = self._put_per_subject(records, args, asked, now_ms)
            else:
                versions = self._put_all(records, args, asked, now_ms)
        for record, version in zip(records, versions, strict=True):
            record["version"] = int(version)
        return records

    def _header(self, now_ms: int, stride: int, facts: int, triggers: int) -> list[int]:
        return [now_ms, stride, self.quotas.per_department, self.quotas.per_type,
                self.quotas.per_subject, facts, triggers]

    def _put_all(self, records: list[FactRecord], args: list[list[Any]],
                 asked: list[tuple[int, Trigger]], now_ms: int) -> list[int]:
        """One script: the ids checked and claimed with the facts, and their triggers
        asked for, atomically."""
        script_keys = [key for r in records for key in (
            *self._subject_keys(r["subject"]), keys.fact_owner(r["id"]))]
        script_keys += [trigger.pending_key for _, trigger in asked]
        script_keys += [keys.triggers_due()] if asked else []
        result = self._put(keys=script_keys, args=[
            *self._header(now_ms, 4, len(records), len(asked)),
            *(value for fact in args for value in fact),
            *(value for _, trigger in asked for value in (trigger.fact, trigger.member))])
        return self._versions(result)

    def _put_per_subject(self, records: list[FactRecord], args: list[list[Any]],
                         asked: list[tuple[int, Trigger]], now_ms: int) -> list[int]:
        """Redis Cluster, where the owner keys live in other hash slots than the facts:
        claim the ids new to the subject (a live fact of another subject is a Conflict and
        nothing is stored), then one script per subject, then confirm or release the
        claims of that subject. A refused write leaves every owner key as it was; the
        subjects before it in the batch stay written (atomic per subject)."""
        with self._redis.pipeline(transaction=False) as pipe:
            for record in records:
                pipe.get(keys.fact_owner(record["id"]))
            owners = pipe.execute()
        claimed: list[str] = []
        try:
            for record, owner in zip(records, owners, strict=True):
                if owner == record["subject"]:
                    continue  # already the subject's: confirmed after its write
                if owner is not None and self._redis.hexists(keys.subject_facts(owner),
                                                             record["id"]):
                    raise Conflict(f"fact id {record['id']!r} already belongs to subject "
                                   f"{owner!r}")
                if not self._claim_owner(keys=[keys.fact_owner(record["id"])],
                                         args=[record["subject"], owner or "",
                                               CLAIM_HOLD_MS]):
                    raise Conflict(f"fact id {record['id']!r} was just taken by another post")
                claimed.append(record["id"])
            return self._write_subjects(records, args, asked, now_ms, claimed)
        except BaseException:
            for record in records:
                if record["id"] in claimed:
                    self._forget_owner(keys=[keys.fact_owner(record["id"])],
                                       args=[record["subject"]])
            raise

    def _write_subjects(self, records: list[FactRecord], args: list[list[Any]],
                        asked: list[tuple[int, Trigger]], now_ms: int,
                        claimed: list[str]) -> list[int]:
        """Per subject: its triggers held one lease ahead in the schedule (a crash before
        the facts are written leaves a trigger that finds nothing new), the facts and the
        pending triggers in one script, then the triggers made due (see TriggerQueue)."""
        by_subject: dict[str, list[int]] = {}
        for index, record in enumerate(records):
            by_subject.setdefault(record["subject"], []).append(index)
        versions = [0] * len(records)
        for subject, indexes in by_subject.items():
            mine = [trigger for index, trigger in asked if index in indexes]
            held = self._hold_triggers({t.member for t in mine}, now_ms)
            result = self._put(
                keys=[*list(self._subject_keys(subject)) * len(indexes),
                      *(t.pending_key for t in mine)],
                args=[*self._header(now_ms, 3, len(indexes), len(mine)),
                      *(value for i in indexes for value in args[i]),
                      *(value for t in mine for value in (t.fact, t.member))])
            try:
                stored = self._versions(result)
            except DecisionServiceError:
                if held:  # refused: nothing asks for them
                    self._redis.zrem(keys.triggers_due(), *held)
                raise
            for index, version in zip(indexes, stored, strict=True):
                versions[index] = version
            if held:
                self._redis.zadd(keys.triggers_due(), dict.fromkeys(held, now_ms), xx=True)
            with self._redis.pipeline(transaction=False) as pipe:  # the claims hold for good
                for i in indexes:
                    expires_ms = args[i][-1]
                    pipe.set(keys.fact_owner(records[i]["id"]), subject,
                             px=max(1, expires_ms - now_ms) if expires_ms else None)
                    if records[i]["id"] in claimed:
                        claimed.remove(records[i]["id"])
                pipe.execute()
        return versions

    def _versions(self, result: list[Any]) -> list[int]:
        """The versions the script stored, or the error it stopped at."""
        if result[0] == "conflict":
            raise Conflict(f"fact id {result[1]!r} already belongs to subject {result[2]!r}")
        if result[0] == "not_owner":
            reason = (f"Fact {result[1]!r} belongs to the {result[2]} department until it is "
                      "retracted or expires; another department may not replace it.")
            raise Forbidden(reason, [reason])
        if result[0] == "quota":
            _, kind, subject, department, fact_type, limit = result
            setting = f"DECISION_MAX_FACTS_PER_{kind.upper()}"
            holder = ("all departments together" if kind == "subject"
                      else f"the {department} department")
            what = f"{fact_type} facts" if kind == "type" else "facts"
            raise QuotaExceeded(
                f"{holder[0].upper()}{holder[1:]} may hold at most {limit} live {what} about "
                f"subject {subject} ({setting}); retract some or let them expire",
                {"name": setting, "value": int(limit), "subject": subject,
                 **({"department": department} if kind != "subject" else {}),
                 **({"type": fact_type} if kind == "type" else {})})
        return [int(v) for v in result[1:]]

    def _hold_triggers(self, members: set[str], now_ms: int) -> list[str]:
        """Schedule the members not scheduled yet one lease ahead; those it scheduled."""
        held = []
        for member in sorted(members):
            if self._redis.zadd(keys.triggers_due(), {member: now_ms + TRIGGER_HOLD_MS},
                                nx=True):
                held.append(member)
        return held

    @staticmethod
    def _subject_keys(subject: str) -> tuple[str, str, str]:
        return (keys.subject_facts(subject), keys.subject_fact_expiry(subject),
                keys.subject_fact_counts(subject))

    def facts_of(self, subject: str) -> list[FactRecord]:
        """The subject's live facts, oldest first (ties broken by id, so the order is stable)."""
        now_ms = int(self._clock() * 1000)
        with unavailable_on_outage():
            stored = cast(dict[str, str], self._redis.hgetall(keys.subject_facts(subject)))
        records: list[FactRecord] = jsontext.loads(f"[{','.join(stored.values())}]") \
            if stored else []  # one decoding pass for all of them
        now_text = rfc3339(now_ms / 1000)
        live = [r for r in records if r["expires_at"] is None or r["expires_at"] > now_text]
        if len(live) < len(records):
            with unavailable_on_outage():
                self._purge(keys=list(self._subject_keys(subject)), args=[now_ms])
        live.sort(key=lambda r: (r["recorded_at"], r["id"]))
        return live

    def usage(self, subject: str) -> dict[str, dict[str, Any]]:
        """department -> {"facts": live facts, "types": {type: live facts}} of a subject."""
        with unavailable_on_outage():
            counts = cast(dict[str, str],
                          self._redis.hgetall(keys.subject_fact_counts(subject)))
        usage: dict[str, dict[str, Any]] = {}
        for field, count in sorted(counts.items()):
            if field == "all":
                continue
            kind, department, *fact_type = field.split(":")
            entry = usage.setdefault(department, {"facts": 0, "types": {}})
            if kind == "d":
                entry["facts"] = int(count)
            else:
                entry["types"][fact_type[0]] = int(count)
        return usage

    def get(self, fact_id: str) -> FactRecord:
        """One live fact by id; `NotFound` if there is none."""
        with unavailable_on_outage():
            subject = cast(str | None, self._redis.get(keys.fact_owner(fact_id)))
            raw = None if subject is None else self._redis.hget(keys.subject_facts(subject),
                                                                 fact_id)
        if raw is None:
            raise NotFound(f"no fact with id {fact_id!r}")
        record: FactRecord = json.loads(cast(str, raw))
        if record["expires_at"] is not None and record["expires_at"] <= rfc3339(self._clock()):
            raise NotFound(f"no fact with id {fact_id!r}")
        return record

    def retract(self, fact_id: str, *, department: str = "") -> None:
        """Remove a fact from the pool; `NotFound` if no live fact has this id. With
        `department` (the one the caller was allowed to retract for), only if the fact is
        still that department's: `Conflict` if it changed hands meanwhile."""
        owner_key = keys.fact_owner(fact_id)
        with unavailable_on_outage():
            subject = cast(str | None, self._redis.get(owner_key))
            if subject is None:
                raise NotFound(f"no fact with id {fact_id!r}")
            subject_keys = list(self._subject_keys(subject))
            args: list[str | int] = [fact_id, subject, int(self._clock() * 1000), department]
            if self._cluster:  # the fact first: an owner key without its fact is ignored
                removed = self._retract(keys=subject_keys, args=args)
                self._forget_owner(keys=[owner_key], args=[subject])
            else:
                removed = self._retract(keys=[*subject_keys, owner_key], args=args)
        if removed == -1:
            raise Conflict(f"fact {fact_id!r} was posted again by another department while "
                           "it was being retracted; nothing was retracted")
        if not removed:
            raise NotFound(f"no fact with id {fact_id!r}")
