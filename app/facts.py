"""The shared fact pool: what every department has said about every subject.

A fact is stored as JSON in its subject's hash, with its version first so that a
Lua script can bump it without decoding the rest. A batch is one script call, so
it is stored all or none and no reader sees half of it. Facts posted with
`ttl_seconds` carry `expires_at`; readers never return an expired fact, and the
first reader that meets one purges the subject's expired facts.

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
from collections.abc import Sequence
from typing import Any, TypedDict, cast

import redis

from app import jsontext, keys
from app.clock import Clock, rfc3339, system_clock
from app.errors import Conflict, NotFound
from app.store import is_cluster, unavailable_on_outage


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


# KEYS: per fact (facts hash, expiry zset[, owner key]); ARGV: now_ms, keys per fact (3 with
# owner keys, 2 without), then per fact (id, subject, JSON without version, expires_ms or "").
_PUT = """
local now, stride = tonumber(ARGV[1]), tonumber(ARGV[2])
local n = #KEYS / stride
if stride == 3 then
  for i = 0, n - 1 do
    local owner = redis.call('GET', KEYS[3 * i + 3])
    local subject = ARGV[4 * i + 4]
    if owner and owner ~= subject then
      return {'conflict', ARGV[4 * i + 3], owner}
    end
  end
end
local versions = {'ok'}
for i = 0, n - 1 do
  local facts, expiry = KEYS[stride * i + 1], KEYS[stride * i + 2]
  local id, subject = ARGV[4 * i + 3], ARGV[4 * i + 4]
  local body, expires = ARGV[4 * i + 5], ARGV[4 * i + 6]
  local version = 1
  local old = redis.call('HGET', facts, id)
  if old then
    local old_expiry = redis.call('ZSCORE', expiry, id)
    if not old_expiry or tonumber(old_expiry) > now then
      version = tonumber(string.match(old, '^{"version":(%d+),')) + 1
    end
  end
  redis.call('HSET', facts, id, '{"version":' .. version .. ',' .. string.sub(body, 2))
  if expires == '' then
    redis.call('ZREM', expiry, id)
  else
    redis.call('ZADD', expiry, expires, id)
  end
  if stride == 3 then
    local owner = KEYS[3 * i + 3]
    if expires == '' then
      redis.call('SET', owner, subject)
    else
      redis.call('SET', owner, subject, 'PX', math.max(1, tonumber(expires) - now))
    end
  end
  versions[#versions + 1] = version
end
return versions
"""

# KEYS: facts hash, expiry zset[, owner key]; ARGV: id, subject, now_ms.
# Returns 1 if a live fact was retracted, 0 if there was none (or it had expired).
_RETRACT = """
if KEYS[3] then
  if redis.call('GET', KEYS[3]) ~= ARGV[2] then return 0 end
  redis.call('DEL', KEYS[3])
end
local expiry = redis.call('ZSCORE', KEYS[2], ARGV[1])
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if expiry and tonumber(expiry) <= tonumber(ARGV[3]) then return 0 end
return removed
"""

# KEYS: the owner key; ARGV: the subject. Deletes it if it still names the subject.
_FORGET_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: facts hash, expiry zset; ARGV: now_ms. Owner keys expire by themselves.
_PURGE_EXPIRED = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, id in ipairs(ids) do redis.call('HDEL', KEYS[1], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
return #ids
"""


def _new_fact_id() -> str:
    return str(uuid.uuid4())


class FactPool:
    def __init__(self, redis_client: redis.Redis, *, clock: Clock = system_clock) -> None:
        self._redis = redis_client
        self._clock = clock
        self._put = redis_client.register_script(_PUT)
        self._retract = redis_client.register_script(_RETRACT)
        self._purge = redis_client.register_script(_PURGE_EXPIRED)
        self._forget_owner = redis_client.register_script(_FORGET_OWNER)
        self._cluster = is_cluster(redis_client)

    def put(self, facts: Sequence[dict[str, Any]]) -> list[FactRecord]:
        """Store validated facts (see `app.schemas.FactInSchema`) all or none.

        A fact whose id is already stored replaces it with the next version; an id
        stored under another subject is a `Conflict` and nothing is stored.
        """
        now_ms = int(self._clock() * 1000)
        recorded_at = rfc3339(now_ms / 1000)
        records: list[FactRecord] = []
        args: list[list[Any]] = []  # per fact: id, subject, JSON without version, expiry
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
            args.append([record["id"], record["subject"],
                         jsontext.dumps(body),
                         expires_ms or ""])
            records.append(record)
        with unavailable_on_outage():
            if self._cluster:
                versions = self._put_per_subject(records, args, now_ms)
            else:
                versions = self._put_all(records, args, now_ms)
        for record, version in zip(records, versions, strict=True):
            record["version"] = int(version)
        return records

    def _put_all(self, records: list[FactRecord], args: list[list[Any]],
                 now_ms: int) -> list[int]:
        """One script: the ids checked and claimed with the facts, atomically."""
        script_keys = [key for r in records for key in (
            keys.subject_facts(r["subject"]), keys.subject_fact_expiry(r["subject"]),
            keys.fact_owner(r["id"]))]
        result = self._put(keys=script_keys,
                           args=[now_ms, 3, *(value for fact in args for value in fact)])
        if result[0] == "conflict":
            raise Conflict(f"fact id {result[1]!r} already belongs to subject {result[2]!r}")
        return [int(v) for v in result[1:]]

    def _put_per_subject(self, records: list[FactRecord], args: list[list[Any]],
                         now_ms: int) -> list[int]:
        """Redis Cluster: claim the ids (a live fact of another subject is a Conflict and
        nothing is stored), then one script per subject."""
        with self._redis.pipeline(transaction=False) as pipe:
            for record in records:
                pipe.get(keys.fact_owner(record["id"]))
            owners = pipe.execute()
        for record, owner in zip(records, owners, strict=True):
            if owner is not None and owner != record["subject"] and self._redis.hexists(
                    keys.subject_facts(owner), record["id"]):
                raise Conflict(f"fact id {record['id']!r} already belongs to subject {owner!r}")
        with self._redis.pipeline(transaction=False) as pipe:
            for record, fact_args in zip(records, args, strict=True):
                expires_ms = fact_args[3]
                pipe.set(keys.fact_owner(record["id"]), record["subject"],
                         px=max(1, expires_ms - now_ms) if expires_ms else None)
            pipe.execute()
        by_subject: dict[str, list[int]] = {}
        for index, record in enumerate(records):
            by_subject.setdefault(record["subject"], []).append(index)
        versions = [0] * len(records)
        for subject, indexes in by_subject.items():
            result = self._put(
                keys=[keys.subject_facts(subject), keys.subject_fact_expiry(subject)] * len(
                    indexes),
                args=[now_ms, 2, *(value for i in indexes for value in args[i])])
            for index, version in zip(indexes, result[1:], strict=True):
                versions[index] = int(version)
        return versions

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
                self._purge(
                    keys=[keys.subject_facts(subject), keys.subject_fact_expiry(subject)],
                    args=[now_ms],
                )
        live.sort(key=lambda r: (r["recorded_at"], r["id"]))
        return live

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

    def retract(self, fact_id: str) -> None:
        """Remove a fact from the pool; `NotFound` if no live fact has this id."""
        owner_key = keys.fact_owner(fact_id)
        with unavailable_on_outage():
            subject = cast(str | None, self._redis.get(owner_key))
            if subject is None:
                raise NotFound(f"no fact with id {fact_id!r}")
            subject_keys = [keys.subject_facts(subject), keys.subject_fact_expiry(subject)]
            args: list[str | int] = [fact_id, subject, int(self._clock() * 1000)]
            if self._cluster:  # the fact first: an owner key without its fact is ignored
                removed = self._retract(keys=subject_keys, args=args)
                self._forget_owner(keys=[owner_key], args=[subject])
            else:
                removed = self._retract(keys=[*subject_keys, owner_key], args=args)
        if not removed:
            raise NotFound(f"no fact with id {fact_id!r}")
