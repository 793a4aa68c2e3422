"""The two ways of asking OPA: embedded in this process, or an OPA sidecar over HTTP.

Both answer `decide(path, common, items)`: the document at `path` evaluated once
per item with `input = common + {item_key: item}` (`item_key` is "action" for the
governance policy), in one round trip. Both evaluate the same comprehension for a batch:

    results := {k: r | some k, item in input.items
                       r := data.<path> with input as object.union(input.common, {"action": item})}

embedded as a query, and on a sidecar that runs the bundle this service serves as a
module of that bundle (app/policy/bundle.py), through OPA's Data API, which answers with
OPA's decision id. A result that is missing means the document is undefined for that
action. Any failure to decide raises `PolicyUnavailable` with the reason; the gate turns
that into held actions, never into an allow.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
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

from app.policy.bundle import batch_document
from app.policy.files import (
    PolicySet,
    disk_revision,
    load_policy_set,
    policy_files,
    problems_from_opa,
)
from app.shared import jsontext
from app.shared.clock import rfc3339, system_clock
from app.shared.errors import ConfigurationError, PolicyInvalid, PolicyProblem, PolicyUnavailable
from app.shared.http_client import Endpoint
from app.shared.logs import traceparent
from app.shared.watch import ChangeWatch, Signature, signature

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


def batch_query(path: str, item_key: str, *, whole: bool = False) -> str:
    """One query for a batch of items, under `input` = the common part and the item: each
    item's `allow` and `deny`, and only those (the package's helper rules are evaluated as
    far as those two need them and no further), or with `whole` the whole document (for
    a document that is not a package, which the first form cannot even compile)."""
    document = "data." + ".".join(check_policy_path(path).split("/"))
    verdict = document if whole else (
        f"{{key: value | some key in [\"allow\", \"deny\"]; value := {document}[key]}}")
    return ("results := {k: r | some k, item in input.items; "
            f"r := {verdict} with input as object.union(input.common, "
            f"{{\"{item_key}\": item}}); {'true' if whole else 'count(r) > 0'}}}")


def _results(by_index: Any, count: int) -> list[Any]:
    if not isinstance(by_index, dict):
        return [UNDEFINED] * count
    return [by_index.get(str(k), UNDEFINED) for k in range(count)]


@dataclass(frozen=True)
class Answer:
    results: list[Any]  # one per action: the document's value, or UNDEFINED
    revision: str
    decision_ids: tuple[str | None, ...] = ()  # OPA's, one per action (a sidecar's)


@dataclass(frozen=True)
class PolicyStatus:
    """What is live in this process, after a reload check, and what the policy directory
    holds now. `problems` and `rejected_at` are the directory's last rejected change, while
    it is not superseded by one that loaded (the last good set stays live meanwhile)."""

    kind: str  # "embedded" or "sidecar"
    revision: str  # what decisions are evaluated with ("none": nothing ever loaded)
    policies: PolicySet | None  # its files, when this process has their text
    problems: tuple[PolicyProblem, ...] = ()
    rejected_at: str | None = None  # RFC 3339
    disk_revision: str | None = None  # the directory as it is now (None: no directory)
    served: str | None = None  # a sidecar's: the revision of the bundle this service serves

    @property
    def live(self) -> bool:
        """The directory on disk is what is live (always, without a directory)."""
        return self.disk_revision is None or self.disk_revision == self.revision


class PolicyEngine(Protocol):
    kind: str  # "embedded" or "sidecar"

    def decide(self, path: str, common: dict[str, Any], items: list[dict[str, Any]], *,
               item_key: str = "action") -> Answer: ...

    def readiness(self) -> str: ...

    def revisions(self) -> dict[str, str]:
        """The policy revision each side has: {"embedded": r}, or {"served": r (the
        bundle this service serves), "sidecar": r (what OPA runs)}."""

    def stable_revision(self) -> str | None:
        """The revision in force when its verdicts are a function of the input alone and
        may be kept; None when each must be asked (a sidecar logs every decision; a policy
        may read the clock)."""

    @property
    def revision(self) -> str: ...

    @property
    def policy_set(self) -> PolicySet | None:
        """The policies the revision names, when this process has their text, else None."""

    @property
    def directory(self) -> PolicyDirectory | None:
        """The policy directory this process reads (and serves as a bundle), if any."""

    def status(self, *, check: bool = True) -> PolicyStatus:
        """What is live, after re-reading the directory if its files changed (without
        `check`: only if a reload is due); a sidecar's after asking OPA what it runs
        (PolicyUnavailable when it cannot be asked)."""


# --- embedded --------------------------------------------------------------------------


# The built-ins that reach outside the evaluation: the network, files (http.send's TLS
# file options) and the process's environment. Policies may not call them: candidates
# never, the service's own only those DECISION_POLICY_ALLOWED_BUILTINS names. (net.cidr_*
# and the like only compute, so they stay.)
OUTSIDE_BUILTINS = frozenset({"http.send", "net.lookup_ip_addr", "opa.runtime"})

# The built-ins whose answer is not a function of their arguments: the outside, the clock,
# randomness. A policy set that refers to none of them gives the same verdict to the same
# input, so its verdicts may be kept (stable_revision).
VOLATILE_BUILTINS = OUTSIDE_BUILTINS | frozenset({
    "time.now_ns", "rand.intn", "uuid.rfc4122", "io.jwt.decode_verify",
    "crypto.x509.parse_and_verify_certificates",
    "crypto.x509.parse_and_verify_certificates_with_keys"})


def _refers_to(engine: OpaEngine, name: str, source: str, names: frozenset[str]) -> list[str]:
    """The built-ins of `names` a module refers to."""
    try:
        [row] = engine.eval_query("m := rego.parse_module(input.file, input.source)",
                                  {"file": name, "source": source})
    except OpaError:
        return []  # it does not parse: compiling it says where
    found: set[str] = set()
    pending: list[Any] = [row["m"]]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending.extend(node)
        elif isinstance(node, dict):
            terms = node.get("value")
            if node.get("type") == "ref" and isinstance(terms, list) and terms and \
                    terms[0].get("type") == "var":
                path = str(terms[0]["value"])
                for term in terms[1:]:
                    if term.get("type") != "string":
                        break
                    path += "." + str(term["value"])
                    if path in names:
                        found.add(path)
            pending.extend(node.values())
    return sorted(found)


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


def compile_policy_set(policies: PolicySet, *, with_tests: bool = False,
                       allowed_builtins: frozenset[str] = frozenset()) -> OpaEngine:
    """A ready OPA engine for `policies`, or PolicyInvalid with file and line (also for a
    module that calls a built-in of OUTSIDE_BUILTINS not in `allowed_builtins`)."""
    modules = {**policies.modules, **(policies.tests if with_tests else {})}
    _check_annotations(modules)
    engine = OpaEngine()
    try:
        outside = [PolicyProblem(name, f"calls {builtin}, which reaches outside the policy "
                                       "(network, files or the environment); policies here "
                                       "may not")
                   for name, source in sorted(policies.modules.items())
                   for builtin in _refers_to(engine, name, source,
                                             OUTSIDE_BUILTINS - allowed_builtins)]
        if outside:
            raise PolicyInvalid(outside)
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


class PolicyDirectory:
    """A policy directory, read again when its files change (at most every
    `reload_seconds`, when used). It keeps the last set that compiled, and, with
    `keep_engine`, its compiled engine; a set that does not compile leaves the last good
    one in place, and `problems` says why."""

    def __init__(self, path: Path, *, reload_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic, keep_engine: bool = True,
                 allowed_builtins: frozenset[str] = frozenset(),
                 on_rejected: Callable[[PolicyDirectory], None] | None = None) -> None:
        self.path = path
        self.keep_engine = keep_engine
        self.allowed_builtins = allowed_builtins
        self.on_rejected = on_rejected  # told of each change rejected (once per change)
        self._watch = ChangeWatch(reload_seconds, clock)
        self._lock = threading.Lock()
        self._loaded: tuple[OpaEngine | None, PolicySet] | None = None
        self._signature: Signature | None = None
        self.problems: list[PolicyProblem] = []
        self.rejected_at: str | None = None  # RFC 3339, while `problems` has any
        self.reload(force=True)

    @property
    def policy_set(self) -> PolicySet | None:
        return self._loaded[1] if self._loaded else None

    @property
    def revision(self) -> str:
        return self._loaded[1].revision if self._loaded else "none"

    def reload(self, *, force: bool = False) -> list[PolicyProblem]:
        """Load the directory if it changed; returns the problems (empty: loaded or unchanged)."""
        with self._lock:
            current = signature(policy_files(self.path)) if self.path.is_dir() else ()
            self._watch.checked()
            if not force and current == self._signature:
                return []
            self._signature = current
            try:
                policies = load_policy_set(self.path)
                engine = compile_policy_set(policies, allowed_builtins=self.allowed_builtins)
            except PolicyInvalid as exc:
                self.problems, self.rejected_at = exc.problems, rfc3339(system_clock())
                outcome = (f"revision {self._loaded[1].revision} stays active" if self._loaded
                           else "no policies are loaded: every action is held until a valid "
                                "set loads")
                for problem in exc.problems:
                    log.error("policy rejected, %s: %s", outcome, problem)
                result, rejected = list(exc.problems), True
            else:
                if not self.keep_engine:
                    engine.close()
                # Evaluations in flight keep their reference to the old engine.
                self._loaded = (engine if self.keep_engine else None, policies)
                self.problems, self.rejected_at = [], None
                log.info("policies loaded from %s, revision %s", self.path, policies.revision)
                result, rejected = [], False
        if rejected and self.on_rejected is not None:
            try:  # outside the lock: it may take a round trip
                self.on_rejected(self)
            except Exception:  # telling of it never stands in the way of deciding
                log.exception("could not report the rejected policy change")
        return result

    def status(self, kind: str, *, check: bool = True) -> PolicyStatus:
        """What is live from this directory, after a reload check (see `current`)."""
        with contextlib.suppress(PolicyUnavailable):
            self.current(check=check)
        policies = self.policy_set
        return PolicyStatus(kind, policies.revision if policies else "none", policies,
                            tuple(self.problems), self.rejected_at, disk_revision(self.path))

    def current(self, *, check: bool = False) -> tuple[OpaEngine | None, PolicySet]:
        """The loaded policies (re-read first if due, or with `check` if the files changed);
        PolicyUnavailable when none ever loaded."""
        if check or self._watch.due():
            self.reload()
        loaded = self._loaded
        if loaded is None:
            reason = "; ".join(str(p) for p in self.problems) or "no policies loaded"
            raise PolicyUnavailable(f"no policies are loaded: {reason}")
        return loaded


class EmbeddedPolicyEngine:
    """OPA's Go engine in-process, loaded from a directory (or given sources) and reloaded
    when the files change. A set that fails to compile leaves the last good one active."""

    kind = "embedded"

    def __init__(self, directory: Path | None, *, reload_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic,
                 policies: PolicySet | None = None,
                 allowed_builtins: frozenset[str] = frozenset(),
                 on_rejected: Callable[[PolicyDirectory], None] | None = None) -> None:
        self._directory = None if directory is None else PolicyDirectory(
            directory, reload_seconds=reload_seconds, clock=clock,
            allowed_builtins=allowed_builtins, on_rejected=on_rejected)
        self._fixed = None if policies is None else (
            compile_policy_set(policies, allowed_builtins=allowed_builtins), policies)
        self._stable: dict[str, bool] = {}  # revision -> stable_revision's finding

    @property
    def directory(self) -> PolicyDirectory | None:
        return self._directory

    @property
    def problems(self) -> list[PolicyProblem]:
        return self._directory.problems if self._directory is not None else []

    @property
    def revision(self) -> str:
        policies = self.policy_set
        return policies.revision if policies is not None else "none"

    @property
    def policy_set(self) -> PolicySet | None:
        if self._fixed is not None:
            return self._fixed[1]
        assert self._directory is not None
        return self._directory.policy_set

    def reload(self, *, force: bool = False) -> list[PolicyProblem]:
        """Load the directory if it changed; returns the problems (empty: loaded or unchanged)."""
        assert self._directory is not None
        return self._directory.reload(force=force)

    def _current(self) -> tuple[OpaEngine, PolicySet]:
        if self._fixed is not None:
            return self._fixed
        assert self._directory is not None
        engine, policies = self._directory.current()
        assert engine is not None
        return engine, policies

    def decide(self, path: str, common: dict[str, Any], items: list[dict[str, Any]], *,
               item_key: str = "action") -> Answer:
        engine, policies = self._current()
        batch = {"common": common, "items": items}
        try:
            try:
                rows = evaluate_query(engine, batch_query(path, item_key), batch)
            except OpaError as exc:
                if "rego_type_error" not in exc.message:
                    raise
                rows = evaluate_query(engine, batch_query(path, item_key, whole=True), batch)
        except OpaError as exc:
            raise PolicyUnavailable(f"policy evaluation failed: {exc.message}") from exc
        return Answer(_results((rows[0] if rows else {}).get("results", {}), len(items)),
                      policies.revision)

    def readiness(self) -> str:
        try:
            self._current()
        except PolicyUnavailable as exc:
            return exc.detail
        return "ok"

    def revisions(self) -> dict[str, str]:
        return {"embedded": self.revision}

    def status(self, *, check: bool = True) -> PolicyStatus:
        if self._fixed is not None:
            return PolicyStatus(self.kind, self._fixed[1].revision, self._fixed[1])
        assert self._directory is not None
        return self._directory.status(self.kind, check=check)

    def stable_revision(self) -> str | None:
        engine, policies = self._current()  # reloads first when the files changed
        stable = self._stable.get(policies.revision)
        if stable is None:
            stable = not any(_refers_to(engine, name, source, VOLATILE_BUILTINS)
                             for name, source in policies.modules.items())
            self._stable = {policies.revision: stable}
        return policies.revision if stable else None


# --- sidecar ---------------------------------------------------------------------------


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
                return Answer(_results(result, len(items)), self._current_revision(bundles),
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
