"""Decisions triggered by facts: a ruleset names the fact types that should decide it.

Posting such a fact asks for a decision on (subject, ruleset); the worker makes it
soon after and records the triggering facts with it. Requests coalesce: while one is
pending, more facts for the same subject and ruleset join it, so a batch of reports
becomes one decision. A request is removed only after its decision is recorded, and
facts that arrive meanwhile schedule the next one. A decision retried after a worker
died carries the same Idempotency-Key, so it is recorded once.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, cast

import redis

from app import keys
from app.clock import Clock, system_clock
from app.store import Schedule, unavailable_on_outage

# KEYS: due zset, then each member's pending list (all in the trigger queue's hash slot);
# ARGV: now_ms, then per member: member, number of facts, the facts (JSON).
_REQUEST = """
local at = 2
for k = 2, #KEYS do
  local member, count = ARGV[at], tonumber(ARGV[at + 1])
  local first, last = at + 2, at + 1 + count
  for i = first, last, 500 do  -- in slices: unpack has a stack limit
    redis.call('RPUSH', KEYS[k], unpack(ARGV, i, math.min(i + 499, last)))
  end
  redis.call('ZADD', KEYS[1], 'NX', ARGV[1], member)
  at = last + 1
end
"""

# KEYS: due zset, the member's pending list; ARGV: member, how many facts were decided on,
# now_ms. Facts that came in meanwhile stay, and schedule the next decision at once.
_DONE = """
redis.call('LTRIM', KEYS[2], tonumber(ARGV[2]), -1)
if redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""

# One decision names at most this many triggering facts; the rest trigger the next one.
MAX_TRIGGERING_FACTS = 500


def member_of(subject: str, ruleset: str) -> str:
    return f"{subject}|{ruleset}"


def parse_member(member: str) -> tuple[str, str]:
    subject, ruleset = member.split("|")
    return subject, ruleset


def idempotency_key(member: str, facts: list[dict[str, Any]]) -> str:
    """The same triggering facts decide once, even when a worker retries after a crash."""
    digest = hashlib.sha256(json.dumps([member, facts], sort_keys=True).encode())
    return "trigger-" + digest.hexdigest()[:32]


class TriggerQueue:
    def __init__(self, redis_client: redis.Redis, *, clock: Clock = system_clock) -> None:
        self._redis = redis_client
        self._clock = clock
        self._request = redis_client.register_script(_REQUEST)
        self._done = redis_client.register_script(_DONE)
        self._schedule = Schedule(redis_client, keys.triggers_due())

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def request(self, requests: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
        """Ask for a decision on each (subject, ruleset), naming the facts that triggered it;
        all in one round trip (a batch of facts can trigger many)."""
        if not requests:
            return
        script_keys: list[str] = [keys.triggers_due()]
        args: list[str | int] = [self._now_ms()]
        for (subject, ruleset), facts in requests.items():
            member = member_of(subject, ruleset)
            script_keys.append(keys.triggers_pending(member))
            args += [member, len(facts), *(json.dumps(f) for f in facts)]
        with unavailable_on_outage():
            self._request(keys=script_keys, args=args)

    def claim(self, *, limit: int, lease_seconds: float) -> list[str]:
        return self._schedule.claim(now_ms=self._now_ms(), limit=limit,
                                    lease_seconds=lease_seconds)

    def pending(self, member: str) -> list[dict[str, Any]]:
        """The oldest facts waiting for the member's decision (at most MAX_TRIGGERING_FACTS)."""
        with unavailable_on_outage():
            raw = self._redis.lrange(keys.triggers_pending(member), 0,
                                     MAX_TRIGGERING_FACTS - 1)
        return [json.loads(fact) for fact in cast(list[str], raw)]

    def done(self, member: str, decided_on: int) -> None:
        with unavailable_on_outage():
            self._done(keys=[keys.triggers_due(), keys.triggers_pending(member)],
                       args=[member, decided_on, self._now_ms()])
