"""The decision log: every decision recorded, with its outbox entries, in one transaction.

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import redis

from app import keys
from app.clock import Clock, system_clock
from app.dispatch import Outbox
from app.errors import Conflict, NotFound
from app.store import unavailable_on_outage


@dataclass(frozen=True)
class IdempotencyClaim:
    caller: str
    key: str
    fingerprint: str


def _without_resends(record: dict[str, Any], earlier: dict[str, str]) -> dict[str, Any]:
    """The record with each action an earlier decision already queued marked as not sent."""
    if not earlier:
        return record
    actions = []
    for action in record["actions"]:
        if action["id"] in earlier and action["status"] == "queued":
            action = {**action, "status": "recorded", "delivery": {
                "not_sent": f"already queued for {record['subject']} by decision "
                            f"{earlier[action['id']]}"}}
        actions.append(action)
    return {**record, "actions": actions}


class DecisionLog:
    def __init__(self, redis_client: redis.Redis, outbox: Outbox, *, retention_seconds: int,
                 idempotency_ttl_seconds: int, clock: Clock = system_clock) -> None:
        self._redis = redis_client
        self._outbox = outbox
        self.retention_seconds = retention_seconds
        self.idempotency_ttl_seconds = idempotency_ttl_seconds
        self._clock = clock

    def replayed(self, subject: str, claim: IdempotencyClaim) -> dict[str, Any] | None:
        """The decision this Idempotency-Key already produced; Conflict if it was used for a
        different request."""
        with unavailable_on_outage():
            raw = self._redis.get(keys.idempotency(subject, claim.caller, claim.key))
        if raw is None:
            return None
        remembered = json.loads(cast(str, raw))
        if remembered["fingerprint"] != claim.fingerprint:
            raise Conflict(f"Idempotency-Key {claim.key!r} was used for a different request")
        return self.get(remembered["decision_id"])

    def commit(self, record: dict[str, Any], *, enqueue: list[dict[str, Any]],
               idempotency: IdempotencyClaim | None = None,
               archive: dict[str, str] | None = None) -> tuple[dict[str, Any], bool]:
        """Write the record, its index entry, its outbox entries, its Idempotency-Key and the
        archive entries of its versions (see `app.archive`) in one transaction. Returns (the
        stored record, False), or (the decision a concurrent request with the same key stored
        first, True)."""
        subject, decision_id = record["subject"], record["decision_id"]
        now_ms = int(self._clock() * 1000)
        ttl = self.retention_seconds
        idem_key = keys.idempotency(subject, idempotency.caller, idempotency.key) \
            if idempotency else None

        sent_key = keys.subject_sent_actions(subject)
        winner: list[str] = []  # set when a concurrent request with the same key won
        stored: list[dict[str, Any]] = []

        def write(pipe: Any) -> None:
            winner.clear()  # redis-py calls this again after a WatchError
            stored.clear()
            if idem_key is not None:
                existing = pipe.get(idem_key)
                if existing is not None:
                    winner.append(json.loads(existing)["decision_id"])
                    return
            earlier = dict(zip([a["id"] for a in enqueue],
                               pipe.hmget(sent_key, [a["id"] for a in enqueue]) if enqueue else [],
                               strict=True))
            fresh = [a for a in enqueue if earlier.get(a["id"]) is None]
            final = _without_resends(record, {k: v for k, v in earlier.items() if v})
            stored.append(final)
            pipe.multi()
            for key, value in (archive or {}).items():
                pipe.set(key, value, nx=True)
            pipe.set(keys.decision_subject(decision_id), subject, ex=ttl)
            pipe.set(keys.decision_record(subject, decision_id), json.dumps(final), ex=ttl)
            if fresh:
                status_key = keys.decision_action_status(subject, decision_id)
                pipe.hset(status_key, mapping={a["id"]: json.dumps({"status": "queued",
                                                                    "attempts": 0})
                                               for a in fresh})
                pipe.expire(status_key, ttl)
                pipe.hset(sent_key, mapping={a["id"]: decision_id for a in fresh})
                pipe.expire(sent_key, ttl)
                self._outbox.enqueue(pipe, subject=subject, decision_id=decision_id,
                                     ruleset=record["ruleset"],
                                     policy_revision=record["policy"]["revision"],
                                     actions=fresh)
            index = keys.subject_decisions(subject)
            pipe.zadd(index, {decision_id: now_ms})
            pipe.zremrangebyscore(index, "-inf", now_ms - ttl * 1000)
            pipe.expire(index, ttl)
            if idem_key is not None and idempotency is not None:
                pipe.set(idem_key, json.dumps({"decision_id": decision_id,
                                               "fingerprint": idempotency.fingerprint}),
                         ex=self.idempotency_ttl_seconds)

        watches = [sent_key, *([idem_key] if idem_key else [])]
        with unavailable_on_outage():
            self._redis.transaction(write, *watches)
        if winner:
            return self.get(winner[0]), True
        return stored[0], False

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
        return self._merge(json.loads(raw), statuses)

    def recent(self, subject: str, limit: int) -> list[dict[str, Any]]:
        """The subject's decisions, newest first."""
        with unavailable_on_outage():
            ids = cast(list[str], self._redis.zrevrange(keys.subject_decisions(subject), 0,
                                                        limit - 1))
            with self._redis.pipeline(transaction=False) as pipe:
                for decision_id in ids:
                    pipe.get(keys.decision_record(subject, decision_id))
                    pipe.hgetall(keys.decision_action_status(subject, decision_id))
                rows = pipe.execute()
        records = []
        for raw, statuses in zip(rows[::2], rows[1::2], strict=True):
            if raw is not None:  # expired since it was indexed
                records.append(self._merge(json.loads(raw), statuses))
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
               until_ms: int | None = None) -> list[str]:
        """A subject's decision ids in a time range, oldest first."""
        with unavailable_on_outage():
            return cast(list[str], self._redis.zrangebyscore(
                keys.subject_decisions(subject), "-inf" if since_ms is None else since_ms,
                "+inf" if until_ms is None else until_ms))

    def all_ids(self) -> Iterator[str]:
        """Every recorded decision id (for export), in no particular order."""
        prefix = keys.decision_subject("")
        with unavailable_on_outage():
            for key in self._redis.scan_iter(match=prefix + "*", count=500):
                yield cast(str, key)[len(prefix):]
