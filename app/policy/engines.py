"""The two ways of asking OPA: embedded in this process, or an OPA sidecar over HTTP.

Both answer `decide(path, common, items)`: the document at `path` evaluated once
per item with `input = common + {item_key: item}` (`item_key` is "action" for the
governance policy), in one round trip. Both use the same Rego query for a batch, so
they cannot disagree about what is asked:

    results := {k: r | some k, a in input.items;
                       r := data.<path> with input as object.union(input.common, {"action": a})}

A result that is missing means the document is undefined for that action. Any
failure to decide raises `PolicyUnavailable` with the reason; the gate turns that
into held actions, never into an allow.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
import requests
from opa_bindings import OpaEngine, OpaError

from app import jsontext
from app.errors import ConfigurationError, PolicyInvalid, PolicyProblem, PolicyUnavailable
from app.http_client import Endpoint
from app.logs import traceparent
from app.policy.files import PolicySet, load_policy_set, policy_files, problems_from_opa
from app.watch import ChangeWatch, Signature, signature

log = logging.getLogger(__name__)

# Embedded OPA is Go, and its runtime reads these from the environment the process was
# started with (a change to os.environ comes too late: Go reads the original block).
# Every evaluation allocates its input anew, and Go's default GOGC (100) collects so often
# that the collector takes a tenth of an evaluation; 400 trades a few MB for that.
# Evaluations are serialized (one per process at a time), so one Go processor is enough:
# more only lets the collector run beside the other workers. Together: about 5 % of a
# decision's CPU under load (scripts/bench http).
GO_RUNTIME = {"GOGC": "400", "GOMAXPROCS": "1"}


def exec_with_go_runtime() -> None:
    """Start this process again with `GO_RUNTIME` in its environment, unless it is there
    (set either variable to choose a value yourself). For long-running commands only."""
    missing = {key: value for key, value in GO_RUNTIME.items() if key not in os.environ}
    if missing:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]],
                  {**os.environ, **missing})

UNDEFINED: Any = type("Undefined", (), {"__repr__": lambda self: "UNDEFINED"})()
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")


def check_policy_path(path: str) -> str:
    if not _PATH.fullmatch(path):
        raise ConfigurationError(f"policy path {path!r} must look like package/rule (a/b/c)")
    return path


def batch_query(path: str, item_key: str) -> str:
    document = "data." + ".".join(check_policy_path(path).split("/"))
    return ("results := {k: r | some k, a in input.items; "
            f"r := {document} with input as object.union(input.common, {{\"{item_key}\": a}})}}; "
            "revisions := {n: r | some n; r := data.system.bundles[n].manifest.revision}")


def _results(bindings: dict[str, Any], count: int) -> list[Any]:
    by_index = bindings.get("results", {})
    return [by_index.get(str(k), UNDEFINED) for k in range(count)]


@dataclass(frozen=True)
class Answer:
    results: list[Any]  # one per action: the document's value, or UNDEFINED
    revision: str


class PolicyEngine(Protocol):
    kind: str  # "embedded" or "sidecar"

    def decide(self, path: str, common: dict[str, Any], items: list[dict[str, Any]], *,
               item_key: str = "action") -> Answer: ...

    def readiness(self) -> str: ...

    @property
    def revision(self) -> str: ...

    @property
    def policy_set(self) -> PolicySet | None:
        """The policies in use, when this process has their text (embedded), else None."""


# --- embedded --------------------------------------------------------------------------


# OPA's server and CLI read every `# METADATA` comment block as YAML when they load a
# module, and refuse the module when one does not parse; the embedded engine reads them
# only when some module asks for its metadata (rego.metadata.*). A module that does ask
# makes it read them all, as OPA's loader would.
_METADATA = re.compile(r"^[ \t]*#[ \t]*METADATA[ \t]*$", re.MULTILINE)
_ANNOTATIONS_PROBE = ("decision_service_annotations_probe.rego",
                      "package decision_service_annotations_probe\n\n"
                      "probe := rego.metadata.rule()\n")


def _check_annotations(modules: dict[str, str]) -> None:
    """PolicyInvalid (file, line) for a METADATA block OPA's loader would refuse. The probe
    module is compiled beside the modules in an engine of its own, then thrown away."""
    if not any(_METADATA.search(source) for source in modules.values()):
        return
    probe = OpaEngine()
    try:
        for name, source in sorted({**modules, _ANNOTATIONS_PROBE[0]: _ANNOTATIONS_PROBE[1]}
                                   .items()):
            probe.add_policy(name, source)
        probe.eval_query("x := true")
    except OpaError as exc:
        raise PolicyInvalid(problems_from_opa(exc.message, "policies")) from exc
    finally:
        probe.close()


def compile_policy_set(policies: PolicySet, *, with_tests: bool = False) -> OpaEngine:
    """A ready OPA engine for `policies`, or PolicyInvalid with file and line."""
    modules = {**policies.modules, **(policies.tests if with_tests else {})}
    _check_annotations(modules)
    engine = OpaEngine()
    try:
        for name, source in sorted(modules.items()):
            try:
                engine.add_policy(name, source)
            except OpaError as exc:
                raise PolicyInvalid(problems_from_opa(exc.message, name)) from exc
        for mount, document in policies.data:
            try:
                engine.add_data(document, path=mount)
            except OpaError as exc:
                raise PolicyInvalid([PolicyProblem(f"data at {mount or 'the root'}",
                                                   exc.message)]) from exc
        try:  # OPA compiles lazily: make it compile (and report) now, not on the first decision
            engine.eval_query("x := true")
        except OpaError as exc:
            raise PolicyInvalid(problems_from_opa(exc.message, "policies")) from exc
    except BaseException:
        engine.close()
        raise
    return engine


def evaluate_query(engine: OpaEngine, query: str, policy_input: Any) -> list[dict[str, Any]]:
    """`engine.eval_query(query, policy_input)`, with the JSON both ways done by orjson.

    The bindings encode the input and decode the answer with the standard library: about
    40 of the 270 µs a decision's batched evaluation took that way. This calls the same
    native function under the same lock (the bindings are pinned, see setup.cfg). Input
    orjson refuses (an integer past 64 bits) goes through the bindings' own path."""
    try:
        encoded = b"" if policy_input is None else orjson.dumps(policy_input)  # "": no input
    except orjson.JSONEncodeError:
        return list(engine.eval_query(query, policy_input))
    with engine._eval_lock:
        handle = engine._handle
        if handle is None:
            raise OpaError("closed", "engine has been closed")
        pointer = engine._lib.OpaEvalQuery(handle, query.encode(), encoded, 0, 0)
        if not pointer:
            raise OpaError("internal", "native call returned NULL")
        try:
            envelope = orjson.loads(ctypes.string_at(pointer))
        finally:
            engine._lib.OpaFreeString(pointer)
    error = envelope.get("error")
    if error is not None:
        raise OpaError(error.get("code", "unknown"), error.get("message", ""))
    for printed in envelope.get("prints") or ():
        log.info("policy print at %s: %s", printed.get("location"), printed.get("message"))
    return [row.get("bindings", {}) for row in envelope.get("result") or ()]


class EmbeddedPolicyEngine:
    """OPA's Go engine in-process, loaded from a directory (or given sources) and reloaded
    when the files change. A set that fails to compile leaves the last good one active."""

    kind = "embedded"

    def __init__(self, directory: Path | None, *, reload_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic,
                 policies: PolicySet | None = None) -> None:
        self.directory = directory
        self._watch = ChangeWatch(reload_seconds if directory is not None else 0, clock)
        self._lock = threading.Lock()
        self._loaded: tuple[OpaEngine, PolicySet] | None = None
        self._signature: Signature | None = None
        self.problems: list[PolicyProblem] = []
        if policies is not None:
            self._loaded = compile_policy_set(policies), policies
        else:
            self.reload(force=True)

    @property
    def revision(self) -> str:
        return self._loaded[1].revision if self._loaded else "none"

    @property
    def policy_set(self) -> PolicySet | None:
        return self._loaded[1] if self._loaded else None

    def reload(self, *, force: bool = False) -> list[PolicyProblem]:
        """Load the directory if it changed; returns the problems (empty: loaded or unchanged)."""
        assert self.directory is not None
        with self._lock:
            current = signature(policy_files(self.directory)) if self.directory.is_dir() else ()
            self._watch.checked()
            if not force and current == self._signature:
                return []
            self._signature = current
            try:
                policies = load_policy_set(self.directory)
                engine = compile_policy_set(policies)
            except PolicyInvalid as exc:
                self.problems = exc.problems
                for problem in exc.problems:
                    log.error("policy rejected, previous policies stay active: %s", problem)
                return exc.problems
            # Evaluations in flight keep their reference to the old engine.
            self._loaded, self.problems = (engine, policies), []
            log.info("policies loaded from %s, revision %s", self.directory, policies.revision)
            return []

    def _current(self) -> tuple[OpaEngine, str]:
        if self._watch.due():
            self.reload()
        loaded = self._loaded
        if loaded is None:
            reason = "; ".join(str(p) for p in self.problems) or "no policies loaded"
            raise PolicyUnavailable(f"no policies are loaded: {reason}")
        return loaded[0], loaded[1].revision

    def decide(self, path: str, common: dict[str, Any], items: list[dict[str, Any]], *,
               item_key: str = "action") -> Answer:
        engine, revision = self._current()
        try:
            rows = evaluate_query(engine, batch_query(path, item_key),
                                  {"common": common, "items": items})
        except OpaError as exc:
            raise PolicyUnavailable(f"policy evaluation failed: {exc.message}") from exc
        return Answer(_results(rows[0] if rows else {}, len(items)), revision)

    def readiness(self) -> str:
        try:
            self._current()
        except PolicyUnavailable as exc:
            return exc.detail
        return "ok"


# --- sidecar ---------------------------------------------------------------------------


class _QueryApiMissing(Exception):
    pass


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


class SidecarPolicyEngine:
    """An OPA server over its REST API, through one pooled endpoint with a short timeout.

    One action: `POST /v1/data/<path>?provenance=true`. Several: one `POST /v1/query`
    with the batch query; an OPA that refuses ad-hoc queries (404/405/403) is asked
    per action instead. The revision is the bundle revisions OPA reports, or a hash of
    the modules `GET /v1/policies` lists when it serves plain files. The request's W3C
    `traceparent`, when there is one, goes along. After three timeouts or refused
    connections in a row it stops asking for half a second (see `_Breaker`).
    """

    kind = "sidecar"

    def __init__(self, base_url: str, *, timeout_seconds: float = 0.25,
                 revision_ttl_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self.revision_ttl_seconds = revision_ttl_seconds
        self._clock = clock
        self.endpoint = Endpoint(self.base_url, pool_size=16,
                                 headers={"Content-Type": "application/json"})
        self._query_api = True
        self._revision = "unknown"
        self._revision_at = float("-inf")
        self.round_trips = 0  # for tests and benchmarks: HTTP calls made
        self.breaker = _Breaker(clock)

    @property
    def revision(self) -> str:
        return self._revision

    @property
    def policy_set(self) -> PolicySet | None:
        return None  # the sidecar's files are its own

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
        if path == "/v1/query" and response.status_code in (403, 404, 405, 501):
            raise _QueryApiMissing(response.status_code)
        try:
            payload = jsontext.loads(response.content)
        except ValueError:
            payload = None
        if response.status_code != 200:
            message = payload.get("message") if isinstance(payload, dict) else None
            raise PolicyUnavailable(f"OPA answered HTTP {response.status_code}"
                                    + (f": {message}" if message else ""))
        if not isinstance(payload, dict):
            raise PolicyUnavailable("OPA answered with something that is not a JSON object")
        return payload

    def _one(self, path: str, policy_input: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        payload = self._call("POST", f"/v1/data/{check_policy_path(path)}?provenance=true",
                             {"input": policy_input})
        bundles = (payload.get("provenance") or {}).get("bundles") or {}
        revisions = {name: b.get("revision", "") for name, b in bundles.items()
                     if isinstance(b, dict)}
        return payload.get("result", UNDEFINED), revisions

    def decide(self, path: str, common: dict[str, Any], items: list[dict[str, Any]], *,
               item_key: str = "action") -> Answer:
        if not items:
            return Answer([], self._revision)
        if len(items) == 1 or not self._query_api:
            answers = [self._one(path, {**common, item_key: item}) for item in items]
            revisions = answers[-1][1]
            return Answer([result for result, _ in answers], self._current_revision(revisions))
        try:
            payload = self._call("POST", "/v1/query", {
                "query": batch_query(path, item_key),
                "input": {"common": common, "items": items}})
        except _QueryApiMissing as exc:
            log.warning("OPA at %s refuses ad-hoc queries (HTTP %s): asking per item",
                        self.base_url, exc)
            self._query_api = False
            return self.decide(path, common, items, item_key=item_key)
        rows = payload.get("result") or [{}]
        return Answer(_results(rows[0], len(items)),
                      self._current_revision(rows[0].get("revisions") or {}))

    def _current_revision(self, bundle_revisions: dict[str, Any]) -> str:
        if bundle_revisions:
            self._revision = ",".join(f"{name}={rev}"
                                      for name, rev in sorted(bundle_revisions.items()))
            return self._revision
        if self._clock() - self._revision_at >= self.revision_ttl_seconds:
            self._revision_at = self._clock()
            try:
                modules = self._call("GET", "/v1/policies").get("result") or []
                digest = hashlib.sha256()
                for raw in sorted(m.get("raw", "") for m in modules if isinstance(m, dict)):
                    digest.update(raw.encode())
                self._revision = "opa-" + digest.hexdigest()[:16]
            except PolicyUnavailable as exc:
                log.warning("could not read OPA's policies for the revision: %s", exc.detail)
        return self._revision

    def readiness(self) -> str:
        try:
            response = self.endpoint.request("GET", "/health", timeout=self.timeout_seconds)
        except requests.RequestException as exc:
            return f"OPA at {self.base_url} is unreachable: {type(exc).__name__}"
        return "ok" if response.status_code == 200 else f"OPA health is HTTP {response.status_code}"
