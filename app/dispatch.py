"""Delivering allowed actions to their executors: the outbox and the dispatcher.

An allowed action enters its subject's outbox in the same transaction that records
the decision (see `DecisionLog.commit`), and the schedule says when it is due. A
dispatcher (a thread of `serve`, or any number of `decision-service worker`
processes) claims due entries with a lease, POSTs each as a CloudEvent with
`Idempotency-Key: <decision id>:<action id>`, and then records the outcome:
delivered, retried later with exponential backoff and jitter, or parked as failed
after the last attempt (or at once for a 4xx that retrying cannot fix), where an
operator can list and re-drive it.

Nothing is lost and nothing is sent twice under different keys: an entry leaves the
outbox only when its delivery is recorded; a worker that dies holding a lease lets
it expire, and the next worker sends the same entry with the same key.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import redis
import requests
import yaml
from marshmallow import Schema, ValidationError, fields, validate

from app import __version__, jsontext, keys
from app.clock import Clock, rfc3339, system_clock
from app.errors import ConfigurationError, NotFound
from app.http_client import Endpoint
from app.logs import log_context, traceparent
from app.metrics import Metrics, label_value
from app.schemas import invalid_params
from app.store import Schedule, in_order, unavailable_on_outage

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 5.0
DELIVERY_THREADS = 8  # deliveries of one claimed batch in flight at once
DEFAULT_MAX_ATTEMPTS = 8
# 4xx answers that a later attempt may turn around; any other 4xx parks the action at once.
_RETRYABLE_CLIENT_ERRORS = (408, 425, 429)

QUEUED, DISPATCHED, FAILED = "queued", "dispatched", "failed"


@dataclass(frozen=True)
class Executor:
    url: str
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS


class _ExecutorSchema(Schema):
    url = fields.Url(required=True, schemes={"http", "https"}, require_tld=False)
    timeout_seconds = fields.Float(load_default=DEFAULT_TIMEOUT_SECONDS,
                                   validate=validate.Range(min=0.01, max=120))
    max_attempts = fields.Integer(load_default=DEFAULT_MAX_ATTEMPTS, strict=True,
                                  validate=validate.Range(min=1, max=100))


class Executors:
    """Action type -> where it is delivered (`DECISION_EXECUTORS_FILE`)."""

    def __init__(self, by_type: Mapping[str, Executor]) -> None:
        self._by_type = dict(by_type)

    @classmethod
    def load(cls, path: Path | None) -> Executors:
        if path is None:
            return cls({})
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigurationError(f"DECISION_EXECUTORS_FILE {path}: {exc}") from exc
        if not isinstance(document, dict):
            raise ConfigurationError(f"DECISION_EXECUTORS_FILE {path}: a mapping of action "
                                     "type to {url, timeout_seconds, max_attempts}")
        try:
            loaded = {str(action): _ExecutorSchema().load(spec)
                      for action, spec in document.items()}
        except ValidationError as exc:
            problems = "; ".join(f"{p.name}: {p.reason}" for p in invalid_params(exc.messages))
            raise ConfigurationError(f"DECISION_EXECUTORS_FILE {path}: {problems}") from exc
        return cls({action: Executor(**spec) for action, spec in loaded.items()})

    def check_lease(self, lease_seconds: float) -> None:
        """A delivery must be able to finish within the lease that holds it."""
        for action, executor in self._by_type.items():
            if executor.timeout_seconds >= lease_seconds:
                raise ConfigurationError(
                    f"DECISION_DISPATCH_LEASE_SECONDS ({lease_seconds:g}) must be longer than "
                    f"every executor's timeout_seconds ({executor.timeout_seconds:g} for "
                    f"{action})")

    def get(self, action_type: str) -> Executor | None:
        return self._by_type.get(action_type)

    def urls(self) -> set[str]:
        return {executor.url for executor in self._by_type.values()}

    def __contains__(self, action_type: str) -> bool:
        return action_type in self._by_type


def member_of(subject: str, decision_id: str, action_id: str) -> str:
    return f"{subject}|{decision_id}|{action_id}"


def parse_member(member: str) -> tuple[str, str, str]:
    subject, decision_id, action_id = member.split("|")
    return subject, decision_id, action_id


class Outbox:
    """The Redis side of dispatch: entries, their schedule, their status in the decision.

    An entry lives in its subject's outbox hash; the schedule and the parked list live in
    the dispatch hash slot. Each change below touches both, in one transaction on a single
    Redis and in the order written on Redis Cluster (see `store.in_order`), chosen so that
    a crash between two steps at worst delivers an entry again under the same
    Idempotency-Key, one lease later."""

    def __init__(self, redis_client: redis.Redis, *, clock: Clock = system_clock,
                 hold_seconds: float = 30.0) -> None:
        self._redis = redis_client
        self._clock = clock
        self.hold_ms = int(hold_seconds * 1000)
        self._schedule = Schedule(redis_client, keys.dispatch_due())

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

    def claim(self, *, limit: int, lease_seconds: float) -> list[str]:
        return self._schedule.claim(now_ms=self._now_ms(), limit=limit,
                                    lease_seconds=lease_seconds)

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

    def _change(self, member: str, entry: dict[str, Any] | None, status: dict[str, Any],
                schedule: list[Callable[[Any], Any]]) -> None:
        """The entry (None: removed) and its status in the decision, then the schedule."""
        subject, decision_id, action_id = parse_member(member)
        field = f"{decision_id}:{action_id}"
        status_key = keys.decision_action_status(subject, decision_id)
        calls: list[Callable[[Any], Any]] = [
            lambda r: r.hset(status_key, action_id, json.dumps(status)),
            (lambda r: r.hdel(keys.outbox(subject), field)) if entry is None else
            (lambda r: r.hset(keys.outbox(subject), field, json.dumps(entry))),
            *schedule,
        ]
        with unavailable_on_outage():
            in_order(self._redis, calls)

    def delivered(self, member: str, entry: dict[str, Any], attempts: int) -> None:
        self._change(member, None, {"status": DISPATCHED, "attempts": attempts,
                                    "dispatched_at": rfc3339(self._clock())},
                     [lambda r: r.zrem(keys.dispatch_due(), member)])

    def retry(self, member: str, entry: dict[str, Any], attempts: int, error: str,
              delay_seconds: float) -> None:
        due = self._now_ms() + int(delay_seconds * 1000)
        self._change(member, {**entry, "attempts": attempts, "last_error": error},
                     {"status": QUEUED, "attempts": attempts, "last_error": error},
                     [lambda r: r.zadd(keys.dispatch_due(), {member: due})])

    def park(self, member: str, entry: dict[str, Any], attempts: int, error: str) -> None:
        """Parked: listed as failed first, then unscheduled, so that a crash between the two
        leaves it in both and the next claim finishes the job (`Dispatcher._attempt`)."""
        now = self._now_ms()
        self._change(member, {**entry, "attempts": attempts, "last_error": error,
                              "failed_at": rfc3339(now / 1000)},
                     {"status": FAILED, "attempts": attempts, "last_error": error},
                     [lambda r: r.zadd(keys.dispatch_failed(), {member: now}),
                      lambda r: r.zrem(keys.dispatch_due(), member)])

    def failed(self, limit: int = 100) -> list[dict[str, Any]]:
        """Parked actions, oldest first, for an operator to inspect and re-drive."""
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

    def redrive(self, subject: str, decision_id: str, action_id: str) -> None:
        """Put a parked action back in the schedule with its attempts reset."""
        member = member_of(subject, decision_id, action_id)
        entry = self.entry(member)
        with unavailable_on_outage():
            parked = self._redis.zscore(keys.dispatch_failed(), member) is not None
        if entry is None or not parked:
            raise NotFound(f"no failed action {action_id!r} in decision {decision_id!r}")
        entry = {key: value for key, value in entry.items() if key != "failed_at"}
        now = self._now_ms()
        self._change(member, {**entry, "attempts": 0, "redriven_at": rfc3339(now / 1000)},
                     {"status": QUEUED, "attempts": 0, "last_error": entry.get("last_error")},
                     [lambda r: r.zadd(keys.dispatch_due(), {member: now}),
                      lambda r: r.zrem(keys.dispatch_failed(), member)])


def cloud_event(entry: dict[str, Any], now: float) -> dict[str, Any]:
    """The body an executor receives: a CloudEvents 1.0 event in structured mode."""
    action = entry["action"]
    return {
        "specversion": "1.0",
        "id": f"{entry['decision_id']}:{action['id']}",
        "source": f"/decision-service/rulesets/{entry['ruleset']['name']}",
        "type": f"decision.action.{action['type']}",
        "subject": entry["subject"],
        "time": rfc3339(now),
        "datacontenttype": "application/json",
        "data": {"decision_id": entry["decision_id"], "subject": entry["subject"],
                 "action": action, "ruleset": entry["ruleset"],
                 "policy_revision": entry["policy_revision"]},
    }


class Dispatcher:
    def __init__(self, outbox: Outbox, executors: Executors, *,
                 clock: Clock = system_clock, backoff_seconds: float = 0.5,
                 backoff_max_seconds: float = 60.0, lease_seconds: float = 30.0,
                 batch_size: int = 16, jitter: Callable[[], float] = random.random,
                 metrics: Metrics | None = None) -> None:
        self.outbox = outbox
        self.metrics = metrics
        self.executors = executors
        self._clock = clock
        self.backoff_seconds = backoff_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.lease_seconds = lease_seconds
        self.batch_size = batch_size
        self._jitter = jitter
        headers = {"Content-Type": "application/cloudevents+json",
                   # Which process sent a delivery, for the executor's logs (and the tests).
                   "User-Agent": f"decision-service/{__version__} (pid {os.getpid()})"}
        self._endpoints = {url: Endpoint(url, pool_size=DELIVERY_THREADS, headers=headers)
                           for url in executors.urls()}
        self._threads = ThreadPoolExecutor(DELIVERY_THREADS, thread_name_prefix="delivery")

    def backoff(self, attempts: int) -> float:
        """Exponential, capped, with jitter: between half and all of base * 2^(attempts-1)."""
        ceiling = min(self.backoff_max_seconds, self.backoff_seconds * 2 ** (attempts - 1))
        return ceiling * (0.5 + 0.5 * self._jitter())

    def run_once(self) -> int:
        """Attempt every due entry this dispatcher can claim; how many it claimed. An entry
        whose attempt could not finish within the lease is left for the next claim, so two
        dispatchers never attempt one entry at the same time."""
        lease_ends = self._clock() + self.lease_seconds
        members = self.outbox.claim(limit=self.batch_size, lease_seconds=self.lease_seconds)
        if len(members) == 1:
            self._attempt(members[0], lease_ends)
        else:  # side by side: a slow executor must not hold up the rest of the batch
            list(self._threads.map(lambda member: self._attempt(member, lease_ends), members))
        return len(members)

    def close(self) -> None:
        self._threads.shutdown(wait=True)
        for endpoint in self._endpoints.values():
            endpoint.close()

    def _attempt(self, member: str, lease_ends: float) -> None:
        entry = self.outbox.entry(member)
        if entry is None:
            self.outbox.forget(member)
            return
        if "failed_at" in entry:  # parked by a worker that died before it unscheduled it
            self.outbox.park(member, entry, entry["attempts"], entry.get("last_error", ""))
            return
        executor = self.executors.get(entry["action"]["type"])
        if executor is not None and self._clock() + executor.timeout_seconds >= lease_ends:
            return  # comes due again when the lease runs out
        with log_context(decision_id=entry["decision_id"], subject=entry["subject"],
                         **({"traceparent": entry["traceparent"]}
                            if entry.get("traceparent") else {})):
            self._deliver(member, entry)

    def _deliver(self, member: str, entry: dict[str, Any]) -> None:
        action = entry["action"]
        attempts = entry["attempts"] + 1
        executor = self.executors.get(action["type"])
        if executor is None:
            self.outbox.park(member, entry, attempts,
                             f"no executor is configured for {action['type']}")
            return
        error, permanent = self._post(executor, entry)
        labels = {"action": label_value(action["type"])}
        if error is None:
            self.outbox.delivered(member, entry, attempts)
            self._count({**labels, "result": "delivered"})
            log.info("dispatched %s to %s", action["type"], executor.url)
        elif permanent or attempts >= executor.max_attempts:
            self.outbox.park(member, entry, attempts, error)
            self._count({**labels, "result": "failed"})
            log.error("parked %s after %d attempts: %s", action["type"], attempts, error)
        else:
            delay = self.backoff(attempts)
            self.outbox.retry(member, entry, attempts, error, delay)
            self._count({**labels, "result": "retry"})
            log.warning("delivery of %s failed (%s); retry %d in %.1fs", action["type"], error,
                        attempts, delay)

    def _count(self, labels: dict[str, str]) -> None:
        if self.metrics is not None:
            self.metrics.inc("decision_dispatch_attempts_total", labels)

    def _post(self, executor: Executor, entry: dict[str, Any]) -> tuple[str | None, bool]:
        """(None, _) when delivered, else (why not, whether retrying is pointless)."""
        event = cloud_event(entry, self._clock())
        headers = {"Idempotency-Key": event["id"]}
        if entry.get("traceparent"):
            headers["traceparent"] = entry["traceparent"]
        try:
            response = self._endpoints[executor.url].request(
                "POST", body=json.dumps(event).encode(), timeout=executor.timeout_seconds,
                headers=headers)
        except requests.Timeout:
            return f"no answer within {executor.timeout_seconds:g}s", False
        except requests.RequestException as exc:
            return f"could not reach the executor ({type(exc).__name__})", False
        if 200 <= response.status_code < 300:
            return None, False
        permanent = 400 <= response.status_code < 500 and (
            response.status_code not in _RETRYABLE_CLIENT_ERRORS)
        return f"the executor answered HTTP {response.status_code}", permanent
