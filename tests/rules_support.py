"""Shared helpers for the rules tests: sample facts and small rulesets written inline."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from typing import Any

from app.rules import Ruleset, load_ruleset_file, parse_ruleset

SAMPLE_RULES = Path(__file__).resolve().parent.parent / "rules" / "procurement.yaml"


def procurement() -> Ruleset:
    return load_ruleset_file(SAMPLE_RULES)


def ruleset(text: str, file: str = "inline.yaml") -> Ruleset:
    return parse_ruleset(textwrap.dedent(text), file)


def fact(fact_id: str, fact_type: str, department: str = "ops", **data: Any) -> dict[str, Any]:
    return {"id": fact_id, "type": fact_type, "department": department, "data": data}


def purchase_case(request_id: str = "PR-1", *, amount: int = 120000, available: int = 300000,
                  score: float = 0.2, legal: str | None = "cleared",
                  urgency: str | None = "normal") -> list[dict[str, Any]]:
    """The facts four departments report about one purchase request."""
    facts = [
        fact(f"{request_id}-req", "purchase_request", "procurement", request_id=request_id,
             amount=amount, vendor="Globex", requester="alice", needed_by="2026-12-01"),
        fact(f"{request_id}-bud", "budget_check", "finance", request_id=request_id,
             available=available, approver="bob", cost_center="CC-7"),
        fact(f"{request_id}-rsk", "risk_assessment", "risk", request_id=request_id, score=score),
    ]
    if legal is not None:
        facts.append(fact(f"{request_id}-leg", "legal_review", "legal", request_id=request_id,
                          status=legal, reviewer="carol", note="vendor contract unsigned"))
    if urgency is not None:
        facts.append(fact(f"{request_id}-urg", "urgency_assessment", "operations",
                          request_id=request_id, level=urgency))
    return facts


def own_domain(directory: Path, rule_files: dict[str, str], governance: str) -> tuple[Path, Path]:
    """A domain the samples do not cover: its rule files (name -> text) in `directory`/rules,
    and the sample policies in `directory`/rego with `governance` as the governance policy
    (the access policy stays the sample's). Returns (rules directory, policy directory)."""
    rules = directory / "rules"
    rules.mkdir()
    for name, text in rule_files.items():
        (rules / name).write_text(text)
    policies = directory / "rego"
    shutil.copytree(SAMPLE_RULES.parent.parent / "rego", policies)
    folder = policies / "decision" / "governance"
    (folder / "governance_test.rego").unlink()  # the sample's tests, of the sample's policy
    (folder / "governance.rego").write_text(governance)
    return rules, policies
