"""OPA in this process: the Go engine of the OPA bindings, compiled from a policy set
(`compile_policy_set`), evaluated with orjson (`evaluate_query`), reloaded when a policy
directory changes (`PolicyDirectory`), and as `EmbeddedPolicyEngine` behind the
`PolicyEngine` interface of app/policy/engines.py. Also the Go runtime's settings, which a
long-running command takes by starting itself again (`exec_with_go_runtime`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from opa_bindings import OpaEngine, OpaError

from app.policy import opa_native
from app.policy.engines import Answer, PolicyStatus, batch_query, batch_results
from app.policy.files import (
    PolicySet,
    disk_revision,
    load_policy_set,
    policy_files,
    problems_from_opa,
)
from app.shared.clock import rfc3339, system_clock
from app.shared.errors import PolicyInvalid, PolicyProblem, PolicyUnavailable
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
        opa_native.check_bindings(engine)  # now, not at the first decision
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
    native function under the same lock (app/policy/opa_native.py, the one place that
    reaches into the bindings). Input orjson refuses (an integer past 64 bits) goes through
    the bindings' own path."""
    try:
        encoded = b"" if policy_input is None else orjson.dumps(policy_input)  # "": no input
    except orjson.JSONEncodeError:
        return list(engine.eval_query(query, policy_input))
    envelope = orjson.loads(opa_native.eval_query_envelope(engine, query.encode(), encoded))
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
        return Answer(batch_results((rows[0] if rows else {}).get("results", {}), len(items)),
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
