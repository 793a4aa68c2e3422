"""The dispatcher: delivering allowed actions from the outbox to their executors.

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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from app.dispatch.events import cloud_event
from app.dispatch.executors import Executor, Executors
from app.dispatch.outbox import WAITING, Outbox, lease_margin
from app.shared import VERSION
from app.shared.clock import Clock, system_clock
from app.shared.http_client import Endpoint
from app.shared.logs import log_context
from app.shared.metrics import Metrics, label_value

log = logging.getLogger(__name__)

DELIVERY_THREADS = 8  # deliveries of one claimed batch in flight at once
# 4xx answers that a later attempt may turn around; any other 4xx parks the action at once.
_RETRYABLE_CLIENT_ERRORS = (408, 425, 429)


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
                   "User-Agent": f"decision-service/{VERSION} (pid {os.getpid()})"}
        self._endpoints = {url: Endpoint(url, pool_size=DELIVERY_THREADS, headers=headers)
                           for url in executors.urls()}
        self._threads = ThreadPoolExecutor(DELIVERY_THREADS, thread_name_prefix="delivery")

    def backoff(self, attempts: int) -> float:
        """Exponential, capped, with jitter: between half and all of base * 2^(attempts-1)."""
        ceiling = min(self.backoff_max_seconds, self.backoff_seconds * 2 ** (attempts - 1))
        return ceiling * (0.5 + 0.5 * self._jitter())

    def run_once(self) -> int:
        """Attempt every due entry this dispatcher can claim; how many it claimed. Each
        attempt ends before the lease does (a total deadline, not only a socket timeout),
        and its outcome is recorded only if no other dispatcher has taken the entry over."""
        lease_ends = self._clock() + self.lease_seconds
        token, members = self.outbox.claim(limit=self.batch_size,
                                           lease_seconds=self.lease_seconds)
        if len(members) == 1:
            self._attempt(members[0], token, lease_ends)
        else:  # side by side: a slow executor must not hold up the rest of the batch
            list(self._threads.map(lambda member: self._attempt(member, token, lease_ends),
                                   members))
        return len(members)

    def close(self) -> None:
        self._threads.shutdown(wait=True)
        for endpoint in self._endpoints.values():
            endpoint.close()

    def _attempt(self, member: str, token: int, lease_ends: float) -> None:
        entry = self.outbox.adopt(member, token, lease_ends)
        if entry == WAITING:  # made due too early (Redis Cluster); its release schedules it
            return
        if entry is None:  # delivered (or never written), or a later claim holds it
            if self.outbox.entry(member) is None:
                self.outbox.forget(member)
            return
        assert isinstance(entry, dict)
        if "failed_at" in entry:  # parked by a worker that died before it unscheduled it
            self.outbox.park(member, token, entry, entry["attempts"],
                             entry.get("last_error", ""))
            return
        with log_context(decision_id=entry["decision_id"], subject=entry["subject"],
                         **({"traceparent": entry["traceparent"]}
                            if entry.get("traceparent") else {})):
            self._deliver(member, token, entry,
                          lease_ends - self._clock() - lease_margin(self.lease_seconds))

    def _deliver(self, member: str, token: int, entry: dict[str, Any],
                 seconds_left: float) -> None:
        action = entry["action"]
        attempts = entry["attempts"] + 1
        executor = self.executors.get(action["type"])
        if executor is None:
            self.outbox.park(member, token, entry, attempts,
                             f"no executor is configured for {action['type']}")
            return
        if seconds_left < executor.timeout_seconds:
            return  # the attempt could outlive the claim: it comes due again with the lease
        error, permanent = self._post(executor, entry, executor.timeout_seconds)
        labels = {"action": label_value(action["type"])}
        if error is None:
            recorded = self.outbox.delivered(member, token, attempts)
            result = "delivered"
        elif permanent or attempts >= executor.max_attempts:
            recorded = self.outbox.park(member, token, entry, attempts, error)
            result = "failed"
        else:
            delay = self.backoff(attempts)
            recorded = self.outbox.retry(member, token, entry, attempts, error, delay)
            result = "retry"
        self._count({**labels, "result": result})
        if not recorded:
            log.warning("%s of %s not recorded: another dispatcher took the entry over "
                        "(this claim's lease ran out)", result, action["type"])
        elif error is None:
            log.info("dispatched %s to %s", action["type"], executor.url)
        elif result == "failed":
            log.error("parked %s after %d attempts: %s", action["type"], attempts, error)
        else:
            log.warning("delivery of %s failed (%s); retry %d", action["type"], error,
                        attempts)

    def _count(self, labels: dict[str, str]) -> None:
        if self.metrics is not None:
            self.metrics.inc("decision_dispatch_attempts_total", labels)

    def _post(self, executor: Executor, entry: dict[str, Any],
              seconds: float) -> tuple[str | None, bool]:
        """(None, _) when delivered within `seconds` in all, else (why not, whether
        retrying is pointless)."""
        event = cloud_event(entry, self._clock())
        headers = {"Idempotency-Key": event["id"]}
        if entry.get("traceparent"):
            headers["traceparent"] = entry["traceparent"]
        try:
            response = self._endpoints[executor.url].request(
                "POST", body=json.dumps(event).encode(), timeout=seconds, headers=headers,
                total=True)
        except requests.Timeout:
            return f"no answer within {seconds:g}s", False
        except requests.RequestException as exc:
            return f"could not reach the executor ({type(exc).__name__})", False
        if 200 <= response.status_code < 300:
            return None, False
        permanent = 400 <= response.status_code < 500 and (
            response.status_code not in _RETRYABLE_CLIENT_ERRORS)
        return f"the executor answered HTTP {response.status_code}", permanent
