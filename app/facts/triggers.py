"""Decisions triggered by facts: a ruleset names the fact types that should decide it.

Posting such a fact asks for a decision on (subject, ruleset) in the same step that stores
it (`FactPool.put`): the fact is noted in the subject's pending list for the ruleset and
the pair is scheduled. A worker claims the pair with a lease, decides, and only then
removes the facts it decided on; facts that arrive meanwhile schedule the next decision.
Requests coalesce: while one is pending, more facts join it, so a batch of reports
becomes one decision. A decision retried after a worker died carries the same
Idempotency-Key, so it is recorded once.

A decision that cannot run for a reason that will not pass by itself (the rules do not
come to rest, invalid facts, an unknown ruleset) is parked with its reason, for an
operator to list and re-drive; new facts for the pair try it again. Other failures (Redis
or the policy engine down, an evaluation out of time) are retried with exponential backoff,
and parked after `max_attempts`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, cast

import redis

from app.shared import keys
from app.shared.clock import Clock, rfc3339, system_clock
from app.shared.errors import NotFound
from app.shared.store import Schedule, in_order, is_cluster, unavailable_on_outage

# One decision names at most this many triggering facts; the rest trigger the next one.
MAX_TRIGGERING_FACTS = 500
DEFAULT_MAX_ATTEMPTS = 10

# A single server: KEYS: the pending list, the schedule, the parked list, the attempts;
# ARGV: member, how many facts were decided on, now_ms. The pair is settled: its facts
# decided on are removed, it is no longer parked, and it is scheduled again at once if
# facts came in meanwhile.
_DONE = """
redis.call('LTRIM', KEYS[1], tonumber(ARGV[2]), -1)
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
if redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""

# KEYS: the schedule, the parked list, the attempts; ARGV: member, now_ms, state (JSON),
# what to do: 'park' (off the schedule, onto the parked list), or a time to retry at.
_FAIL = """
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
if ARGV[4] == 'park' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
end
"""

# KEYS: the schedule, the parked list, the attempts; ARGV: member, now_ms. 1 if it was
# parked and is due again now.
_REDRIVE = """
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""


def member_of(subject: str, ruleset: str) -> str:
    return f"{subject}|{ruleset}"


def parse_member(member: str) -> tuple[str, str]:
    subject, ruleset = member.split("|")
    return subject, ruleset


def idempotency_key(member: str, facts: list[dict[str, Any]]) -> str:
    """The same triggering facts decide once, even when a worker retries after a crash."""
    digest = hashlib.sha256(json.dumps([member, facts], sort_keys=True).encode())
    return "trigger-" + digest.hexdigest()[:32]


def _pending_key(member: str) -> str:
    return keys.subject_trigger_pending(*parse_member(member))


class TriggerQueue:
    def __init__(self, redis_client: redis.Redis, *, clock: Clock = system_clock,
                 backoff: Callable[[int], float] = lambda attempts: 2.0 ** attempts,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> None:
        self._redis = redis_client
        self._clock = clock
        self.backoff = backoff
        self.max_attempts = max_attempts
        self._done = redis_client.register_script(_DONE)
        self._fail = redis_client.register_script(_FAIL)
        self._redrive = redis_client.register_script(_REDRIVE)
        self._schedule = Schedule(redis_client, keys.triggers_due())
        self._settled = [keys.triggers_due(), keys.triggers_parked(), keys.triggers_attempts()]

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def claim(self, *, limit: int, lease_seconds: float) -> list[str]:
        return self._schedule.claim(now_ms=self._now_ms(), limit=limit,
                                    lease_seconds=lease_seconds)

    def pending(self, member: str) -> list[dict[str, Any]]:
        """The oldest facts waiting for the member's decision (at most MAX_TRIGGERING_FACTS)."""
        with unavailable_on_outage():
            raw = self._redis.lrange(_pending_key(member), 0, MAX_TRIGGERING_FACTS - 1)
        return [json.loads(fact) for fact in cast(list[str], raw)]

    def done(self, member: str, decided_on: int) -> None:
        """The member's decision is recorded: its facts decided on are settled."""
        now, pending = self._now_ms(), _pending_key(member)
        with unavailable_on_outage():
            if not is_cluster(self._redis):
                self._done(keys=[pending, *self._settled], args=[member, decided_on, now])
                return
            # Redis Cluster, the pending list apart from the schedule: trimmed first; then
            # off the schedule when nothing is left, and back on it if a fact came in
            # between (its poster schedules it too, but may have done so before the ZREM).
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.ltrim(pending, decided_on, -1)
                pipe.llen(pending)
                left = pipe.execute()[1]
            in_order(self._redis, [lambda r: r.zrem(keys.triggers_parked(), member),
                                   lambda r: r.hdel(keys.triggers_attempts(), member)])
            if left == 0:
                self._redis.zrem(keys.triggers_due(), member)
                if self._redis.llen(pending):
                    self._redis.zadd(keys.triggers_due(), {member: now})
            else:
                self._redis.zadd(keys.triggers_due(), {member: now})

    def _state(self, member: str) -> dict[str, Any]:
        with unavailable_on_outage():
            raw = self._redis.hget(keys.triggers_attempts(), member)
        return json.loads(cast(str, raw)) if raw else {"attempts": 0}

    def retry(self, member: str, error: str) -> bool:
        """A failure that may pass: due again after a backoff, or parked after the last
        attempt (True then)."""
        state = self._state(member)
        attempts = state["attempts"] + 1
        state = {"attempts": attempts, "last_error": error, "at": rfc3339(self._clock())}
        if attempts >= self.max_attempts:
            self.park(member, f"{error} (after {attempts} attempts)", state=state)
            return True
        with unavailable_on_outage():
            self._fail(keys=self._settled, args=[
                member, self._now_ms(), json.dumps(state),
                self._now_ms() + int(self.backoff(attempts) * 1000)])
        return False

    def park(self, member: str, reason: str, *, decision_id: str | None = None,
             state: dict[str, Any] | None = None) -> None:
        """A decision that cannot run as things are: off the schedule until an operator
        re-drives it or new facts for it come in."""
        state = {**(state or self._state(member)), "reason": reason,
                 "parked_at": rfc3339(self._clock()),
                 **({"decision_id": decision_id} if decision_id else {})}
        with unavailable_on_outage():
            self._fail(keys=self._settled, args=[member, self._now_ms(), json.dumps(state),
                                                 "park"])

    def parked(self, limit: int = 100) -> list[dict[str, Any]]:
        """The parked triggered decisions, oldest first: subject, ruleset, why, when, how
        many facts wait for them, and the recorded decision that failed (if it ran)."""
        with unavailable_on_outage():
            members = cast(list[str], self._redis.zrange(keys.triggers_parked(), 0,
                                                         limit - 1))
            states = cast(list[str | None], self._redis.hmget(keys.triggers_attempts(),
                                                              members)) if members else []
            waiting = [self._redis.llen(_pending_key(m)) for m in members]
        listed = []
        for member, state, count in zip(members, states, waiting, strict=True):
            subject, ruleset = parse_member(member)
            listed.append({"subject": subject, "ruleset": ruleset, "pending_facts": count,
                           **(json.loads(state) if state else {})})
        return listed

    def redrive(self, subject: str, ruleset: str) -> None:
        """Due again now, attempts reset; NotFound if it is not parked."""
        with unavailable_on_outage():
            if not self._redrive(keys=self._settled,
                                 args=[member_of(subject, ruleset), self._now_ms()]):
                raise NotFound(f"no parked triggered decision of {ruleset} on {subject}")
