"""What both ways of asking OPA answer: the `PolicyEngine` interface, its `Answer` and
`PolicyStatus`, and the batch query both evaluate. The engines themselves live beside it:
embedded in this process (app/policy/embedded.py), or an OPA sidecar over HTTP
(app/policy/sidecar.py).

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

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from app.policy.files import PolicySet
from app.shared.errors import ConfigurationError, PolicyProblem

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


def batch_results(by_index: Any, count: int) -> list[Any]:
    """The batch's `results` object ({"0": r, ...}) as one result per item, in order;
    UNDEFINED where an item has none."""
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


class WatchedDirectory(Protocol):
    """A policy directory as this process reads it (`app.policy.embedded.PolicyDirectory`):
    what the service asks of it, whichever engine answers the verdicts."""

    path: Path
    problems: list[PolicyProblem]  # of the last rejected change, while the last good is live
    rejected_at: str | None

    def current(self, *, check: bool = False) -> tuple[Any, PolicySet]:
        """(the compiled engine, if kept; the policies live), re-read first with `check`."""
        ...


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
    def directory(self) -> WatchedDirectory | None:
        """The policy directory this process reads (and serves as a bundle), if any."""

    def status(self, *, check: bool = True) -> PolicyStatus:
        """What is live, after re-reading the directory if its files changed (without
        `check`: only if a reload is due); a sidecar's after asking OPA what it runs
        (PolicyUnavailable when it cannot be asked)."""
