"""An OPA server over its REST API, as a `PolicyEngine` (app/policy/engines.py):
`SidecarPolicyEngine`, the circuit breaker that keeps a slow sidecar from costing every
decision its whole timeout (`_Breaker`), and the reading of OPA's error answers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import requests

from app.policy.bundle import batch_document
from app.policy.embedded import PolicyDirectory
from app.policy.engines import UNDEFINED, Answer, PolicyStatus, batch_results, check_policy_path
from app.policy.files import PolicySet
from app.shared import jsontext
from app.shared.errors import PolicyUnavailable
from app.shared.http_client import Endpoint
from app.shared.logs import traceparent

log = logging.getLogger(__name__)


class _Breaker:
    """After `threshold` failed calls in a row, fail at once for `open_seconds`, then let
    one call through to try again. A slow sidecar would otherwise cost every decision the
    whole timeout, and a sync web worker serves nothing else meanwhile."""

    def __init__(self, clock: Callable[[], float], *, threshold: int = 3,
                 open_seconds: float = 0.5) -> None:
        self.threshold = threshold
        self.open_seconds = open_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at = 0.0
        self._trying = False
        self._reason = ""

    def before(self) -> None:
        with self._lock:
            if self._failures < self.threshold:
                return
            if not self._trying and self._clock() - self._opened_at >= self.open_seconds:
                self._trying = True  # this call is the trial
                return
        raise PolicyUnavailable(f"{self._reason} (not asked again for "
                                f"{self.open_seconds * 1000:.0f} ms after {self._failures} "
                                "failures in a row)")

    def succeeded(self) -> None:
        with self._lock:
            self._failures, self._trying = 0, False

    def failed(self, reason: str) -> None:
        with self._lock:
            self._failures += 1
            self._reason = reason
            if self._failures >= self.threshold:
                self._opened_at, self._trying = self._clock(), False


def _digest_revision(modules: list[Any], data: Any) -> str:
    """A revision for an OPA that serves plain files: a hash of the modules' text and of the
    data document it answers (its base documents, and what its rules make of no input)."""
    digest = hashlib.sha256()
    for raw in sorted(m.get("raw", "") for m in modules if isinstance(m, dict)):
        digest.update(f"module\n{raw}\n".encode())
    if data is not UNDEFINED:
        digest.update(b"data\n" + orjson.dumps(data, option=orjson.OPT_SORT_KEYS))
    return ("opa-" if data is not UNDEFINED else "opa-modules-") + digest.hexdigest()[:16]


# provenance: the bundle revisions. strict-builtin-errors: a built-in function that fails
# (a division by zero, to_number("x")) is an error, as it is for the embedded engine.
# OPA's server default makes it undefined, so that a deny rule that fails silently does
# not deny, and a sidecar would allow what the embedded engine holds.
_DATA_API_OPTIONS = "provenance=true&strict-builtin-errors=true"


def _opa_error_text(payload: Any) -> str:
    """": message (code: message of each error)" of an OPA error answer, or ""."""
    if not isinstance(payload, dict) or not payload.get("message"):
        return ""
    details = [f"{e.get('code', 'error')}: {e.get('message', '')}"
               for e in payload.get("errors") or () if isinstance(e, dict)]
    return f": {payload['message']}" + (f" ({'; '.join(details)})" if details else "")


class SidecarPolicyEngine:
    """An OPA server over its REST API (HTTP, or HTTP over a Unix socket: `unix:///path`),
    through one pooled endpoint with a short timeout. The request's W3C `traceparent`,
    when there is one, goes along. After three timeouts or refused connections in a row
    it stops asking for half a second (see `_Breaker`).

    Every question goes to the Data API, with `provenance=true` and
    `strict-builtin-errors=true` (see `_DATA_API_OPTIONS`): one action is
    `POST /v1/data/<path>`; several are one `POST` of the bundle's batch document
    (app/policy/bundle.py) once OPA has shown that it runs the bundle named `bundle`,
    which this service serves, and else one `POST /v1/data/<path>` each. Every answer
    carries OPA's decision id (OPA makes one when its decision log is on).

    The revision is the manifest revision of the bundle OPA reports (with several
    bundles, `name=revision` of each), or, when OPA serves plain files, a hash of the
    modules (`GET /v1/policies`) and the data document (`GET /v1/data`) it serves, read
    again every `revision_ttl_seconds`. `served`, the policy directory this service
    serves as that bundle, is the other side of the readiness check: while OPA runs
    another revision of the bundle, the service is not ready.
    """

    kind = "sidecar"

    def __init__(self, base_url: str, *, timeout_seconds: float = 0.25,
                 bundle: str = "decision-service", served: PolicyDirectory | None = None,
                 revision_ttl_seconds: float = 30.0, readiness_ttl_seconds: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self.bundle = bundle
        self.served = served
        self.revision_ttl_seconds = revision_ttl_seconds
        self.readiness_ttl_seconds = readiness_ttl_seconds
        self._clock = clock
        self.endpoint = Endpoint(self.base_url, pool_size=16,
                                 headers={"Content-Type": "application/json"})
        self._revision = "unknown"
        self._bundles: dict[str, str] = {}  # bundle -> revision, as OPA last reported them
        self._bundles_at = float("-inf")
        self._no_batch: set[str] = set()  # paths the running bundle has no batch document for
        self._derived_at = float("-inf")
        self.round_trips = 0  # for tests and benchmarks: HTTP calls made
        self.breaker = _Breaker(clock)

    @property
    def revision(self) -> str:
        return self._revision

    @property
    def directory(self) -> PolicyDirectory | None:
        return self.served

    @property
    def policy_set(self) -> PolicySet | None:
        """The served policies, when OPA runs exactly them (their text is then this
        process's to archive)."""
        policies = self.served.policy_set if self.served is not None else None
        return policies if policies is not None and policies.revision == self._revision \
            else None

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        self.breaker.before()
        self.round_trips += 1
        trace = traceparent()
        try:
            response = self.endpoint.request(
                method, path, body=None if body is None else jsontext.dumps(body).encode(),
                timeout=self.timeout_seconds, headers={"traceparent": trace} if trace else None)
        except requests.RequestException as exc:
            reason = (f"OPA at {self.base_url} did not answer within "
                      f"{self.timeout_seconds * 1000:.0f} ms"
                      if isinstance(exc, requests.Timeout) else
                      f"OPA at {self.base_url} is unreachable: {type(exc).__name__}")
            self.breaker.failed(reason)
            raise PolicyUnavailable(reason) from exc
        self.breaker.succeeded()
        try:
            payload = jsontext.loads(response.content)
        except ValueError:
            payload = None
        if response.status_code != 200:
            raise PolicyUnavailable(f"OPA answered HTTP {response.status_code}"
                                    + _opa_error_text(payload))
        if not isinstance(payload, dict):
            raise PolicyUnavailable("OPA answered with something that is not a JSON object")
        return payload

    def _data(self, path: str, policy_input: dict[str, Any]) -> tuple[Any, str | None,
                                                                      dict[str, str]]:
        """(result or UNDEFINED, OPA's decision id, the bundles OPA reports) of one
        Data API call."""
        payload = self._call("POST", f"/v1/data/{path}?{_DATA_API_OPTIONS}",
                             {"input": policy_input})
        bundles = (payload.get("provenance") or {}).get("bundles") or {}
        revisions = {name: str(b.get("revision", "")) for name, b in bundles.items()
                     if isinstance(b, dict)}
        decision_id = payload.get("decision_id")
        return (payload.get("result", UNDEFINED),
                decision_id if isinstance(decision_id, str) else None, revisions)

    def decide(self, path: str, common: dict[str, Any], items: list[dict[str, Any]], *,
               item_key: str = "action") -> Answer:
        check_policy_path(path)
        if not items:
            return Answer([], self._revision)
        if len(items) > 1 and self.bundle in self._bundles and path not in self._no_batch:
            result, decision_id, bundles = self._data(batch_document(path), {
                "common": common, "items": items, "item_key": item_key})
            if self.bundle in bundles and isinstance(result, dict):
                return Answer(batch_results(result, len(items)), self._current_revision(bundles),
                              (decision_id,) * len(items))
            if self.bundle in bundles:  # a bundle served for other policy paths
                self._no_batch.add(path)
            log.warning("OPA at %s has no batch document for %s (bundles: %s): asking per "
                        "action", self.base_url, path, ", ".join(sorted(bundles)) or "none")
            self._current_revision(bundles)
        answers = [self._data(path, {**common, item_key: item}) for item in items]
        return Answer([result for result, _, _ in answers],
                      self._current_revision(answers[-1][2]),
                      tuple(decision_id for _, decision_id, _ in answers))

    def _current_revision(self, bundles: dict[str, str]) -> str:
        if bundles != self._bundles:
            self._no_batch.clear()  # another bundle: it may have them
        self._bundles, self._bundles_at = bundles, self._clock()
        if len(bundles) == 1:
            [self._revision] = bundles.values()
        elif bundles:
            self._revision = ",".join(f"{name}={rev}" for name, rev in sorted(bundles.items()))
        elif self._clock() - self._derived_at >= self.revision_ttl_seconds:
            self._derived_at = self._clock()
            try:
                modules = self._call("GET", "/v1/policies").get("result") or []
            except PolicyUnavailable as exc:
                log.warning("could not read OPA's policies for the revision: %s", exc.detail)
                return self._revision
            try:
                data = self._call("GET", "/v1/data").get("result", UNDEFINED)
            except PolicyUnavailable as exc:
                log.warning("could not read OPA's data document for the revision (it is then"
                            " a hash of the modules alone): %s", exc.detail)
                data = UNDEFINED
            self._revision = _digest_revision(modules, data)
        return self._revision

    def _fresh_bundles(self) -> dict[str, str]:
        """The bundles OPA runs, as the last answer reported them if it is recent, else as
        `GET /v1/data/system/bundles` says."""
        if self._clock() - self._bundles_at < self.readiness_ttl_seconds:
            return self._bundles
        manifests = self._call("GET", "/v1/data/system/bundles").get("result") or {}
        bundles = {name: str((b.get("manifest") or {}).get("revision", ""))
                   for name, b in manifests.items() if isinstance(b, dict)}
        self._current_revision(bundles)
        return bundles

    def readiness(self) -> str:
        """ok when OPA answers, has activated its bundles (`/health?bundles`), and runs the
        revision of this service's bundle that the service serves."""
        try:
            response = self.endpoint.request("GET", "/health?bundles",
                                             timeout=self.timeout_seconds)
        except requests.RequestException as exc:
            return f"OPA at {self.base_url} is unreachable: {type(exc).__name__}"
        if response.status_code != 200:
            return (f"OPA has not activated its bundles yet (health is HTTP "
                    f"{response.status_code})")
        try:
            bundles = self._fresh_bundles()
            if self.served is None or self.bundle not in bundles:
                return "ok"  # OPA runs other files: there is nothing to compare
            _, served = self.served.current()
        except PolicyUnavailable as exc:
            return exc.detail
        if bundles[self.bundle] != served.revision:
            return (f"OPA runs revision {bundles[self.bundle]} of bundle {self.bundle}, the "
                    f"service serves {served.revision} (OPA takes it at its next poll)")
        return "ok"

    def stable_revision(self) -> str | None:
        return None  # OPA logs each decision it makes: every one is asked

    def status(self, *, check: bool = True) -> PolicyStatus:
        """What OPA runs (asked now, unless it said so within `readiness_ttl_seconds`) and
        what the served directory holds: the sidecar is live with the directory when it
        runs the revision the service serves. Its text is this process's only then."""
        bundles = self._fresh_bundles()
        if not bundles:  # OPA on files of its own: their revision, derived
            self._current_revision(bundles)
        if self.served is None:
            return PolicyStatus(self.kind, self._revision, None)
        served = self.served.status(self.kind, check=check)
        return dataclasses.replace(
            served, revision=self._revision, served=served.revision,
            policies=served.policies if served.revision == self._revision else None)

    def revisions(self) -> dict[str, str]:
        sides = {"sidecar": self._revision}
        if self.served is not None:
            sides["served"] = self.served.revision
        return sides
