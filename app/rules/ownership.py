"""Which department may post which fact type, across the active rulesets.

A ruleset's `facts:` section names the departments that own each fact type it reads;
the types its rules derive (`assert`) belong to the rules and nobody may post them, nor
`verdict` facts (the policy gate's, see app.decisions.decision).
Over several rulesets the owners of a type are every department any of them names,
and a type that any of them derives may not be posted at all. A type that no active
ruleset declares is open to any department (`rules validate` warns about it). Pooled
facts are judged again when decided on: one posted before the rulesets gave its type to
another department, or to the rules, is left out of the decision and named in its record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from app.rules.model import Ruleset
from app.shared.errors import RuleProblem
from app.shared.schemas import VERDICT_TYPE

FactT = TypeVar("FactT", bound=Mapping[str, Any])


@dataclass(frozen=True)
class FactOwnership:
    owners: Mapping[str, frozenset[str]]  # fact type -> the departments that may post it
    derived: Mapping[str, tuple[str, ...]]  # fact type -> the rulesets that derive it
    conflicts: tuple[RuleProblem, ...] = ()  # a type one ruleset derives and another owns

    @classmethod
    def of(cls, rulesets: Iterable[Ruleset]) -> FactOwnership:
        owners: dict[str, set[str]] = {}
        derived: dict[str, list[str]] = {}
        declared_in: dict[str, list[Ruleset]] = {}
        for ruleset in rulesets:
            for fact_type in ruleset.derived_types:
                derived.setdefault(fact_type, []).append(ruleset.name)
            for fact_type, declared in ruleset.fact_types.items():
                owners.setdefault(fact_type, set()).update(declared.owners)
                declared_in.setdefault(fact_type, []).append(ruleset)
        conflicts = tuple(
            RuleProblem(ruleset.file, f"facts.{fact_type}: ruleset {ruleset.name} lets "
                        f"{', '.join(ruleset.fact_types[fact_type].owners)} post {fact_type!r}, "
                        f"but ruleset {', '.join(derived[fact_type])} derives it: it cannot be "
                        "posted")
            for fact_type in sorted(derived.keys() & declared_in.keys())
            for ruleset in declared_in[fact_type])
        return cls({t: frozenset(d) for t, d in owners.items()},
                   {t: tuple(sorted(r)) for t, r in derived.items()}, conflicts)

    def refusal(self, fact_type: str, department: str) -> str | None:
        """Why `department` may not post a fact of `fact_type`, or None if it may."""
        if fact_type == VERDICT_TYPE:
            return (f"{VERDICT_TYPE} facts are the policy gate's verdicts, which enter a "
                    "decision by themselves; no department may post them.")
        if fact_type in self.derived:
            return (f"{fact_type} facts are derived by the rules (ruleset "
                    f"{', '.join(self.derived[fact_type])}); no department may post them.")
        owners = self.owners.get(fact_type)
        if owners is not None and department not in owners:
            return (f"The {department} department may not post {fact_type} facts: only "
                    f"{', '.join(sorted(owners))} may.")
        return None

    def admissible(self, facts: Sequence[FactT]) -> tuple[list[FactT], list[dict[str, str]]]:
        """The facts their departments may have posted as things stand, and the others
        (posted before the rulesets said otherwise) with the reason each is left out."""
        kept: list[FactT] = []
        ignored: list[dict[str, str]] = []
        for fact in facts:
            reason = self.refusal(fact["type"], fact["department"])
            if reason is None:
                kept.append(fact)
            else:
                ignored.append({"id": fact["id"], "type": fact["type"],
                                "department": fact["department"], "reason": reason})
        return kept, ignored

    def refusals(self, facts: Sequence[Mapping[str, Any]]) -> list[str]:
        """Every distinct reason why these facts may not be posted as they are."""
        reasons = (self.refusal(fact["type"], fact["department"]) for fact in facts)
        return list(dict.fromkeys(reason for reason in reasons if reason is not None))
