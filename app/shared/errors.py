"""Every error the service raises on purpose, and the problem type each becomes.

    DecisionServiceError            base; knows its HTTP status and problem type
    ├── ConfigurationError          bad DECISION_* setting (the process refuses to start)
    ├── InvalidInput                422: a request or file failed validation; lists each field
    │   ├── MalformedRequest        400: the body is not JSON at all
    │   ├── RulesetInvalid          422: a rule file failed validation; lists file, line, rule
    │   ├── UnknownRule             422: the ruleset (version) asked about has no such rule
    │   ├── ScenarioInvalid         422: a scenario file failed validation; lists file, line
    │   └── PolicyInvalid           422: a policy or data file failed to load; lists file, line
    ├── UnsupportedMediaType        415: the body is not declared as JSON
    ├── Unauthorized                401: no valid API key
    ├── Forbidden                   403: the access policy or a fact's owner said no, and why
    ├── PayloadTooLarge             413: over DECISION_MAX_BODY_BYTES
    ├── NotFound                    404
    │   └── UnknownRuleset          no ruleset of that name (or version) is loaded
    ├── RulesetUnavailable          410: the ruleset version a decision ran with is gone
    ├── Conflict                    409: the request contradicts what is stored
    │   └── RedriveRefused          the current policies no longer allow a parked action
    ├── QuotaExceeded               422: a department's share of a subject's pool is full
    ├── EvaluationFailed            422: the rules could not decide the subject's facts
    ├── CandidateFailed             422: a what-if's candidate ran out of its budget
    ├── Busy                        429: a what-if is running already; come back later
    └── ServiceUnavailable          503: a dependency is down; the request may be retried
        ├── StoreUnavailable        Redis did not answer in time
        ├── PolicyUnavailable       the policy engine did not decide (error, timeout, down)
        └── EvaluationTimeout       the rules did not finish in time (a busy machine, perhaps)

Third-party errors are translated at the edge (`raise StoreUnavailable(...) from exc`),
so the views only ever see this tree. Views turn any of these into an RFC 9457
`application/problem+json` answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class InvalidParam:
    """One field that failed validation: a dotted path and the reason."""

    name: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason}


class DecisionServiceError(Exception):
    status = 500
    slug = "internal-error"
    title = "Internal error"
    retry_after_seconds: int | None = None  # a Retry-After header when set

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.decision_id: str | None = None  # set when the failure was recorded as a decision

    @property
    def problem_type(self) -> str:
        return f"urn:decision-service:problem:{self.slug}"

    def problem_extensions(self) -> dict[str, Any]:
        """Members added to the problem document beside type, title, status, detail."""
        return {}

    def as_problem(self) -> dict[str, Any]:
        """The problem document's members (without `instance`, which only a view knows)."""
        return {"type": self.problem_type, "title": self.title, "status": self.status,
                "detail": self.detail, **self.problem_extensions(),
                **({"decision_id": self.decision_id} if self.decision_id else {})}


class ConfigurationError(DecisionServiceError):
    slug = "configuration-error"
    title = "Invalid configuration"


class InvalidInput(DecisionServiceError):
    status = 422
    slug = "invalid-input"
    title = "The request is not valid"

    def __init__(self, detail: str, invalid_params: list[InvalidParam] | None = None) -> None:
        super().__init__(detail)
        self.invalid_params = invalid_params or []

    @classmethod
    def from_params(cls, invalid_params: list[InvalidParam]) -> InvalidInput:
        first = invalid_params[0]
        more = len(invalid_params) - 1
        detail = f"{first.name}: {first.reason}" + (f" (and {more} more)" if more else "")
        return cls(detail, invalid_params)

    def problem_extensions(self) -> dict[str, Any]:
        return {"invalid-params": [param.as_dict() for param in self.invalid_params]}


@dataclass(frozen=True)
class RuleProblem:
    """One thing wrong with a rule file, located as precisely as the file allows."""

    file: str
    message: str
    rule: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line else "")
        return f"{where}: " + (f"rule {self.rule}: " if self.rule else "") + self.message


class RulesetInvalid(InvalidInput):
    slug = "invalid-ruleset"
    title = "The rule file is not valid"

    def __init__(self, problems: list[RuleProblem]) -> None:
        params = [InvalidParam(f"{p.file}" + (f":{p.line}" if p.line else "")
                               + (f" rule {p.rule}" if p.rule else ""), p.message)
                  for p in problems]
        more = len(problems) - 1
        super().__init__(str(problems[0]) + (f" (and {more} more)" if more else ""), params)
        self.problems = problems


class ScenarioInvalid(InvalidInput):
    """A file of scenarios for a ruleset (`decision-service rules test`) that cannot be read:
    each problem with its file and line (`RuleProblem`, without a rule)."""

    slug = "invalid-scenarios"
    title = "The scenario file is not valid"

    def __init__(self, problems: list[RuleProblem]) -> None:
        params = [InvalidParam(p.file + (f":{p.line}" if p.line else ""), p.message)
                  for p in problems]
        more = len(problems) - 1
        super().__init__(str(problems[0]) + (f" (and {more} more)" if more else ""), params)
        self.problems = problems


@dataclass(frozen=True)
class PolicyProblem:
    """Why a policy or data file did not load: file, line, and OPA's message."""

    file: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        return self.file + (f":{self.line}" if self.line else "") + f": {self.message}"


class PolicyInvalid(InvalidInput):
    slug = "invalid-policy"
    title = "The policies did not load"

    def __init__(self, problems: list[PolicyProblem]) -> None:
        params = [InvalidParam(p.file + (f":{p.line}" if p.line else ""), p.message)
                  for p in problems]
        more = len(problems) - 1
        super().__init__(str(problems[0]) + (f" (and {more} more)" if more else ""), params)
        self.problems = problems


class UnknownRule(InvalidInput):
    """A rule asked about by name that the ruleset version in question does not have."""

    slug = "unknown-rule"
    title = "No such rule"


class MalformedRequest(InvalidInput):
    status = 400
    slug = "malformed-request"
    title = "The request body is not valid JSON"


class UnsupportedMediaType(DecisionServiceError):
    status = 415
    slug = "unsupported-media-type"
    title = "The request body must be application/json"


class Unauthorized(DecisionServiceError):
    status = 401
    slug = "unauthorized"
    title = "A valid API key is required"


class Forbidden(DecisionServiceError):
    status = 403
    slug = "forbidden"
    title = "Not allowed"

    def __init__(self, detail: str, reasons: list[str]) -> None:
        super().__init__(detail)
        self.reasons = reasons

    def problem_extensions(self) -> dict[str, Any]:
        return {"reasons": list(self.reasons)}


class PayloadTooLarge(DecisionServiceError):
    status = 413
    slug = "payload-too-large"
    title = "The request body is too large"


class NotFound(DecisionServiceError):
    status = 404
    slug = "not-found"
    title = "Not found"


class UnknownRuleset(NotFound):
    slug = "unknown-ruleset"
    title = "No such ruleset"


class RulesetUnavailable(DecisionServiceError):
    """The exact ruleset version a recorded decision ran with is neither archived nor loaded
    any more: what is asked of that decision is answered from no other version."""

    status = 410
    slug = "ruleset-unavailable"
    title = "The ruleset version is no longer available"


class EvaluationFailed(DecisionServiceError):
    """The rules cannot decide these facts: they do not come to rest, or the engine refused
    them. Not a passing fault: the same facts fail again until they change."""

    status = 422
    slug = "evaluation-failed"
    title = "The rules could not decide"


class CandidateFailed(DecisionServiceError):
    """An analyst's candidate rules or policies ran past their time or memory budget, or
    stopped their sandbox: an error of that candidate, reported as such."""

    status = 422
    slug = "candidate-failed"
    title = "The candidate ran out of its budget"


class Busy(DecisionServiceError):
    """As many what-ifs run as the service lets run at once (each holds a web worker)."""

    status = 429
    slug = "busy"
    title = "Too many what-ifs at once"
    retry_after_seconds: int | None = 5


class QuotaExceeded(DecisionServiceError):
    """A department would hold more of a subject's pool than its quota allows, so that no
    department can make a subject too large to decide."""

    status = 422
    slug = "quota-exceeded"
    title = "Fact quota exceeded"

    def __init__(self, detail: str, limit: dict[str, Any]) -> None:
        super().__init__(detail)
        self.limit = limit

    def problem_extensions(self) -> dict[str, Any]:
        return {"limit": dict(self.limit)}


class Conflict(DecisionServiceError):
    status = 409
    slug = "conflict"
    title = "The request conflicts with stored state"


class RedriveRefused(Conflict):
    """A parked action was asked about again and the policies now in force do not allow
    it: it stays parked, with this verdict recorded beside the first."""

    title = "The current policies do not allow the action"

    def __init__(self, verdict: dict[str, Any]) -> None:
        reasons = "; ".join(verdict["reasons"]) or verdict["outcome"]
        super().__init__(f"re-drive refused by the policies now in force (revision "
                         f"{verdict['policy_revision']}): {reasons}")
        self.verdict = verdict

    def problem_extensions(self) -> dict[str, Any]:
        return {"verdict": dict(self.verdict)}


class ServiceUnavailable(DecisionServiceError):
    status = 503
    slug = "service-unavailable"
    title = "A dependency is unavailable"
    retry_after_seconds = 1


class StoreUnavailable(ServiceUnavailable):
    slug = "store-unavailable"
    title = "Redis is unavailable"


class PolicyUnavailable(ServiceUnavailable):
    slug = "policy-unavailable"
    title = "The policy engine did not decide"


class EvaluationTimeout(ServiceUnavailable):
    """The rules ran past DECISION_MAX_EVALUATION_SECONDS: stopped between two calls into
    the rule engine, the worker free again. Time depends on the machine too, so unlike
    EvaluationFailed it may pass on a retry."""

    slug = "evaluation-timeout"
    title = "The rules did not finish in time"
