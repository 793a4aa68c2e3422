"""The golden fact sets (tests/golden/*.jsonl) and what they decide (*.expected.json), shared
by the golden test and `scripts/update-golden`: both decide them alike and report every
subject that decides differently, each with a diff, not only the first."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from app.policy.embedded import EmbeddedPolicyEngine
from app.policy.gate import PolicyGate
from app.replay.replayer import outcomes_of_fact_sets
from app.rules import RulesetRegistry

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
GOLDEN_TIME = "2026-11-24T00:00:00.000000Z"  # fixed, so policies that read the time agree


def decide_golden(root: Path = ROOT) -> dict[Path, dict[str, Any]]:
    """Each golden expected file -> what its fact sets decide now (subject -> outcome), with
    the rules in `root`/rules and the policies in `root`/rego."""
    registry = RulesetRegistry(root / "rules", check_interval_seconds=0)
    registry.reload()
    gate = PolicyGate(EmbeddedPolicyEngine(root / "rego", reload_seconds=0),
                      governance_path="decision/governance", access_path="decision/access")
    return {
        fact_sets.with_suffix(".expected.json"): outcomes_of_fact_sets(
            fact_sets.read_text().splitlines(), registry=registry, gate=gate,
            created_at=GOLDEN_TIME)
        for fact_sets in sorted((root / "tests" / "golden").glob("*.jsonl"))
    }


def expected_text(outcomes: dict[str, Any]) -> str:
    """An expected file's text, as `scripts/update-golden` writes it."""
    return json.dumps(outcomes, indent=1) + "\n"


def differences(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """One entry per subject that decides differently now, is new or is gone: its name and
    a unified diff of its outcome, expected against now. Empty when all agree."""
    found = []
    for subject in sorted(set(expected) | set(actual)):
        before, after = expected.get(subject), actual.get(subject)
        if before == after:
            continue
        lines = difflib.unified_diff(_lines(before), _lines(after), lineterm="",
                                     fromfile=f"{subject} (expected)", tofile=f"{subject} (now)")
        what = ("is new" if before is None else "is gone" if after is None
                else "decides differently")
        found.append(f"{subject} {what}:\n" + "\n".join(lines))
    return found


def _lines(outcome: Any) -> list[str]:
    return [] if outcome is None else json.dumps(outcome, indent=1).splitlines()
