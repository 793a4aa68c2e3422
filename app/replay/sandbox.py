"""Analysts' candidate rules and policies run here: in a child process of their own, with a
time and a memory budget, so that a runaway or hostile candidate costs the serving worker
nothing but the wait, and its registrations in the rule engine die with the child.

    parent (a web worker, the CLI)               child (python -m app.replay.sandbox)
    Sandbox.start(budget)   one JSON line each way on stdin/stdout
      .load(candidates)     ─▶ parse the rules, register them in its own C core, compile
                               the policies (no built-in that reaches outside)
      .evaluate(r, facts)   ─▶ app.rules.evaluate, within the evaluation limits
      .decide(path, ...)    ─▶ the candidate policies' verdicts

The child starts with a minimal environment, a lower priority than the worker, its own
network namespace where the kernel allows one (no network even by accident) and an
address-space ceiling as a backstop. The parent keeps the budget: it kills the child
when an answer comes late or its resident memory passes the budget, and from then on
every call fails at once with the reason (CandidateFailed), which a replay reports as
that candidate's error. Nothing here reads Redis: the child sees only what it is sent.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from app.policy.engines import UNDEFINED, Answer, PolicyStatus
from app.policy.files import PolicySet
from app.replay.scenarios import bind, parse_scenarios  # imported before the child confines itself
from app.rules import Evaluation, Ruleset
from app.rules.engine import Limits
from app.shared import errors
from app.shared.errors import (
    CandidateFailed,
    DecisionServiceError,
    InvalidParam,
    PolicyProblem,
    RuleProblem,
)

log = logging.getLogger(__name__)

_CLONE_NEWNET = 0x40000000
_CLONE_NEWUSER = 0x10000000
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38
_NOBODY = 65534
MAX_REPLY_BYTES = 64 * 2**20
_PAGE = resource.getpagesize()
# The Go runtime of embedded OPA reserves about 1 GB of address space as it starts: the
# ceiling is only a backstop above the budget the parent watches.
_ADDRESS_SPACE_HEADROOM = 2 * 2**30
_WATCH_SECONDS = 0.02


@dataclass(frozen=True)
class CandidateSources:
    """What an analyst sends: candidate rule files (file name -> text, and the ruleset name
    each should declare, if the analyst said) and the candidate policy files in full (path
    -> text; None: the policies in use). Only a sandbox parses and runs them."""

    rules: Mapping[str, str] = field(default_factory=dict)
    policies: Mapping[str, str] | None = None
    declared: Mapping[str, str] = field(default_factory=dict)  # file -> ruleset name
    # rule file -> the text of its scenarios (app.replay.scenarios), run against its candidate
    scenarios: Mapping[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.rules and self.policies is None


@dataclass(frozen=True)
class Candidates:
    """Candidates as their sandbox loaded them: each ruleset by name (its rules run only
    in the sandbox) and the candidate policies' revision."""

    rulesets: Mapping[str, Ruleset] = field(default_factory=dict)
    policy_revision: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"rulesets": {name: r.version for name, r in self.rulesets.items()},
                "policies": self.policy_revision}


@dataclass(frozen=True)
class Budget:
    """What one what-if may take: `seconds` for the whole job (the API's answer cannot
    wait longer), or for each call (`per_call`: a large CLI job) and `memory_mb` of
    resident memory in the child."""

    seconds: float
    memory_mb: int
    per_call: bool = False


# --- the parent's side -------------------------------------------------------------------


class Sandbox:
    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.failure: str | None = None  # why it stopped, once it has
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        # No preexec_fn: Python code between fork and exec in a process with Go's threads
        # can deadlock. The child confines itself first thing (`_confine`).
        self._process = subprocess.Popen(
            [sys.executable, "-m", "app.replay.sandbox", str(budget.memory_mb), str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            env=_child_environment(), cwd=tempfile.gettempdir())
        self._deadline = time.monotonic() + budget.seconds
        self._buffer = bytearray()
        self._scanned = 0  # how much of the buffer holds no newline
        self._watching = threading.Event()
        self._watcher = threading.Thread(target=self._watch_memory, name="sandbox-memory",
                                         daemon=True)
        self._watcher.start()

    @classmethod
    @contextlib.contextmanager
    def start(cls, budget: Budget) -> Iterator[Sandbox]:
        sandbox = cls(budget)
        try:
            yield sandbox
        finally:
            sandbox.close()

    @property
    def pid(self) -> int:
        return self._process.pid

    # the three calls

    def load(self, sources: CandidateSources, *, governance_path: str, access_path: str,
             limits: Limits) -> Candidates:
        """The candidates, parsed, validated and compiled in the child, within the budget:
        RulesetInvalid or PolicyInvalid if they are wrong (the file and line, a built-in
        that reaches outside), CandidateFailed past the budget."""
        loaded = self._call({"op": "load", "rulesets": dict(sources.rules),
                             "policies": None if sources.policies is None
                             else dict(sources.policies),
                             "governance_path": governance_path, "access_path": access_path,
                             "limits": dataclasses.asdict(limits)})
        rulesets = {}
        for file, (name, version) in loaded["rulesets"].items():
            declared = sources.declared.get(file)
            if declared is not None and declared != name:
                raise errors.RulesetInvalid([RuleProblem(
                    file, f"declares ruleset {name!r}, not {declared!r}")])
            rulesets[name] = Ruleset(name=name, version=version, source=sources.rules[file],
                                     file=file, rules=())  # its rules run only in the child
        return Candidates(rulesets, loaded["policy_revision"])

    def scenarios(self, ruleset: Ruleset, source: str, file: str) -> list[dict[str, Any]]:
        """A candidate ruleset's scenarios (app.replay.scenarios), read and bound to it in the
        child (each as `Scenario.as_dict`): ScenarioInvalid with file and line if malformed."""
        reply = self._call({"op": "scenarios", "ruleset": ruleset.name, "source": source,
                            "file": file})
        return list(reply["scenarios"])

    def evaluate(self, ruleset: Ruleset, facts: Sequence[Mapping[str, Any]], *,
                 seconds: float | None = None) -> Evaluation:
        """A candidate ruleset over `facts`: an `Evaluator` for `make_decision`."""
        return Evaluation.from_dict(self._call(
            {"op": "evaluate", "ruleset": ruleset.name, "facts": list(facts),
             "seconds": seconds}))

    def decide(self, path: str, common: dict[str, Any], items: list[dict[str, Any]], *,
               item_key: str = "action") -> Answer:
        answer = self._call({"op": "decide", "path": path, "common": common, "items": items,
                             "item_key": item_key})
        return Answer([result.get("value", UNDEFINED) for result in answer["results"]],
                      answer["revision"])

    # the wire

    def _call(self, request: dict[str, Any]) -> Any:
        if self.failure is not None:
            raise CandidateFailed(f"not run: {self.failure}")
        deadline = (time.monotonic() + self.budget.seconds if self.budget.per_call
                    else self._deadline)
        try:
            line = None
            if self._write(orjson.dumps(request) + b"\n", deadline):
                line = self._read_line(deadline)
        except (BrokenPipeError, OSError, EOFError):
            line = None
        if line is None:
            self._stop(self.failure or self._exit_reason())
            raise CandidateFailed(str(self.failure))
        reply = orjson.loads(line)
        if "error" in reply:
            raise _error_from(reply["error"])
        return reply["ok"]

    def _out_of_time(self) -> None:
        self.failure = self.failure or (f"the candidate ran past its time budget of "
                                        f"{self.budget.seconds:g} s (DECISION_WHATIF_SECONDS)")

    def _write(self, data: bytes, deadline: float) -> bool:
        """All of `data` to the child before the deadline (a child that stops reading
        cannot block the worker), or False."""
        stdin = self._process.stdin
        assert stdin is not None
        os.set_blocking(stdin.fileno(), False)
        view = memoryview(data)
        with selectors.DefaultSelector() as selector:
            selector.register(stdin, selectors.EVENT_WRITE)
            while view:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    self._out_of_time()
                    return False
                with contextlib.suppress(BlockingIOError):
                    view = view[os.write(stdin.fileno(), view):]
        return True

    def _read_line(self, deadline: float) -> bytes | None:
        """A line from the child, or None when it stops, the deadline passes or the line
        grows past MAX_REPLY_BYTES (then the failure says so)."""
        stdout = self._process.stdout
        assert stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while (end := self._buffer.find(b"\n", self._scanned)) < 0:
                self._scanned = len(self._buffer)
                if len(self._buffer) > MAX_REPLY_BYTES:
                    self.failure = self.failure or (
                        f"the candidate's answer is larger than {MAX_REPLY_BYTES // 2**20} MB")
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    self._out_of_time()
                    return None
                chunk = os.read(stdout.fileno(), 1 << 20)
                if not chunk:
                    return None
                self._buffer += chunk
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        self._scanned = 0
        return line

    def _watch_memory(self) -> None:
        limit = self.budget.memory_mb * 2**20
        while not self._watching.wait(_WATCH_SECONDS):
            if self._process.poll() is not None:
                return
            if _resident_bytes(self._process.pid) > limit:
                self._stop(f"the candidate used more than {self.budget.memory_mb} MB "
                           "(DECISION_WHATIF_MEMORY_MB)")
                return

    def _exit_reason(self) -> str:
        """Why the child stopped, for the report; what it printed goes to the log only."""
        code = self._process.wait()
        self._stderr.seek(0)
        tail = self._stderr.read()[-2000:].decode(errors="replace").strip()
        if tail:
            log.warning("the what-if sandbox stopped (exit code %s): %s", code, tail)
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        return f"the sandbox stopped ({how})"

    def _stop(self, reason: str) -> None:
        if self.failure is None or self.failure == reason:
            self.failure = reason
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()

    def close(self) -> None:
        self._watching.set()
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()
        self._process.wait()
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._stderr.close()
        self._watcher.join(1)


class SandboxedPolicyEngine:
    """Candidate policies as a `PolicyEngine`: each decision asks the sandbox."""

    kind = "sandbox"

    def __init__(self, sandbox: Sandbox, revision: str) -> None:
        self.sandbox = sandbox
        self._revision = revision

    @property
    def revision(self) -> str:
        return self._revision

    @property
    def policy_set(self) -> PolicySet | None:
        return None  # candidates are never archived

    @property
    def directory(self) -> None:
        return None  # candidates come as text, not from a directory

    def revisions(self) -> dict[str, str]:
        return {"candidate": self._revision}

    def stable_revision(self) -> str | None:
        return None  # a candidate is asked once per replayed decision

    def status(self, *, check: bool = True) -> PolicyStatus:
        return PolicyStatus(self.kind, self._revision, None)  # text stays in the sandbox

    def decide(self, path: str, common: dict[str, Any], items: list[dict[str, Any]], *,
               item_key: str = "action") -> Answer:
        return self.sandbox.decide(path, common, items, item_key=item_key)

    def readiness(self) -> str:
        return self.sandbox.failure or "ok"


def _resident_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _child_environment() -> dict[str, str]:
    """What the child inherits: how to find Python and this package, the Go runtime's
    settings, nothing else (no proxies, credentials or service settings)."""
    keep = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "GOGC", "GOMAXPROCS")
    return {key: os.environ[key] for key in keep if key in os.environ} | {
        "GOGC": os.environ.get("GOGC", "400"), "GOMAXPROCS": "1"}


def _confine(memory_mb: int, parent: int) -> None:
    """The child's first act: a lower priority, an address-space ceiling, death with its
    parent, a network namespace of its own, no way to gain privileges, and (started as
    root) the unprivileged user `nobody`, which cannot open the embedded Redis's socket
    or anything else that is not everyone's."""
    os.nice(10)
    ceiling = memory_mb * 2**20 + _ADDRESS_SPACE_HEADROOM
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)
    if libc.unshare(_CLONE_NEWNET) != 0 and libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        print("what-if sandbox: no network namespace on this kernel", file=sys.stderr)
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if os.getuid() == 0:
        with contextlib.suppress(OSError):
            os.setgroups([])
            os.setgid(_NOBODY)
            os.setuid(_NOBODY)


_ERRORS = {cls.__name__: cls for cls in (
    errors.EvaluationFailed, errors.EvaluationTimeout, errors.PolicyUnavailable)}


def _error_from(error: dict[str, Any]) -> DecisionServiceError:
    kind, detail = error["class"], error["detail"]
    if kind == "RulesetInvalid":
        return errors.RulesetInvalid([RuleProblem(**p) for p in error["problems"]])
    if kind == "ScenarioInvalid":
        return errors.ScenarioInvalid([RuleProblem(**p) for p in error["problems"]])
    if kind == "PolicyInvalid":
        return errors.PolicyInvalid([PolicyProblem(**p) for p in error["problems"]])
    if kind == "InvalidInput":
        return errors.InvalidInput(detail, [InvalidParam(**p) for p in error["params"]])
    return _ERRORS.get(kind, CandidateFailed)(detail)


# --- the child's side --------------------------------------------------------------------


def _error_reply(exc: DecisionServiceError) -> dict[str, Any]:
    error: dict[str, Any] = {"class": type(exc).__name__, "detail": exc.detail}
    if isinstance(exc, errors.RulesetInvalid | errors.PolicyInvalid | errors.ScenarioInvalid):
        error["problems"] = [dataclasses.asdict(p) for p in exc.problems]
    elif isinstance(exc, errors.InvalidInput):
        error["params"] = [p.as_dict() for p in exc.invalid_params]
    return {"error": error}


class _Child:
    """What the child holds between calls: the candidates, loaded."""

    def __init__(self) -> None:
        self.rulesets: dict[str, Ruleset] = {}
        self.engine: Any = None
        self.limits = Limits()

    def load(self, request: dict[str, Any]) -> dict[str, Any]:
        from app.policy.embedded import EmbeddedPolicyEngine
        from app.rules import engine, parse_ruleset

        self.limits = Limits(**request["limits"])
        files = {}
        for file, source in request["rulesets"].items():
            ruleset = parse_ruleset(source, file)
            engine.register(ruleset)
            self.rulesets[ruleset.name] = ruleset
            files[file] = (ruleset.name, ruleset.version)
        revision = None
        if request["policies"] is not None:
            policies = PolicySet.from_sources(request["policies"])
            self.engine = EmbeddedPolicyEngine(None, policies=policies)
            revision = policies.revision
        return {"rulesets": files, "policy_revision": revision}

    def scenarios(self, request: dict[str, Any]) -> dict[str, Any]:
        ruleset = self.rulesets[request["ruleset"]]
        data, lines = parse_scenarios(request["source"], request["file"])
        named = data.get("ruleset")
        if named is not None and named != ruleset.name:
            raise errors.ScenarioInvalid([RuleProblem(
                request["file"], f"ruleset: names {named!r}, but these are the scenarios of "
                f"the candidate ruleset {ruleset.name!r}")])
        bound = bind(data, lines, request["file"], ruleset)
        return {"scenarios": [scenario.as_dict() for scenario in bound.scenarios]}

    def evaluate(self, request: dict[str, Any]) -> dict[str, Any]:
        from app.rules import evaluate

        ruleset = self.rulesets[request["ruleset"]]
        seconds = request.get("seconds")
        return evaluate(ruleset, request["facts"], limits=self.limits,
                        seconds=seconds if isinstance(seconds, int | float) else None).as_dict()

    def decide(self, request: dict[str, Any]) -> dict[str, Any]:
        answer = self.engine.decide(request["path"], request["common"], request["items"],
                                    item_key=request["item_key"])
        return {"results": [{} if r is UNDEFINED else {"value": r} for r in answer.results],
                "revision": answer.revision}


def serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    child = _Child()
    calls = {"load": child.load, "evaluate": child.evaluate, "decide": child.decide,
             "scenarios": child.scenarios}
    for line in stdin:
        request = orjson.loads(line)
        try:
            reply = orjson.dumps({"ok": calls[request["op"]](request)})
        except DecisionServiceError as exc:
            reply = orjson.dumps(_error_reply(exc))
        except Exception:  # a candidate's oddity: its error, with the trace in the log
            traceback.print_exc(file=sys.stderr)
            reply = orjson.dumps({"error": {"class": "CandidateFailed",
                                            "detail": "the candidate could not be run (the "
                                                      "service's log says why)"}})
        stdout.write(reply + b"\n")
        stdout.flush()


if __name__ == "__main__":
    _confine(int(sys.argv[1]), int(sys.argv[2]))
    serve(sys.stdin.buffer, sys.stdout.buffer)
