"""Embedded OPA and the real OPA server (`opa run --server` on loopback, pulling the bundle
the service serves, conftest.opa_bundled) give identical verdicts: allow, outcome and
reasons, on every golden fact set and on generated inputs (hypothesis) that miss and
mistype fields of the facts, the action, the request and the input itself. Both run OPA
v1.20.2: the bindings' engine in-process, and the binary `make opa` builds."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import CLUSTER
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opa_sidecar import OpaServer
from test_governance_properties import ALLOWED, ANY_JSON

from app.decisions.decision import make_decision
from app.dispatch.executors import Executors
from app.policy.embedded import EmbeddedPolicyEngine
from app.policy.gate import PolicyGate, Verdict
from app.policy.sidecar import SidecarPolicyEngine
from app.replay.replayer import ReplayCase
from app.rules import RulesetRegistry, evaluate

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(
    CLUSTER, reason="nothing here depends on Redis: once, in the single-server run")
GENERATED = 1000  # examples; each compares one to three verdicts


def gate_for(engine: Any) -> PolicyGate:
    return PolicyGate(engine, governance_path="decision/governance",
                      access_path="decision/access")


def view(verdicts: list[Verdict]) -> list[tuple[bool, str, tuple[str, ...]]]:
    return [(v.allow, v.outcome, v.reasons) for v in verdicts]


def test_every_golden_fact_set_gets_the_same_verdicts(opa_bundled: OpaServer) -> None:
    registry = RulesetRegistry(ROOT / "rules", check_interval_seconds=0)
    registry.reload()
    embedded = gate_for(EmbeddedPolicyEngine(ROOT / "rego", reload_seconds=0))
    sidecar = gate_for(SidecarPolicyEngine(opa_bundled.url, timeout_seconds=5))
    compared = 0
    lines = [line for path in sorted((ROOT / "tests" / "golden").glob("*.jsonl"))
             for line in path.read_text().splitlines() if line.strip()]
    assert len(lines) >= 12
    for number, line in enumerate(lines, start=1):
        case = ReplayCase.of_fact_set(json.loads(line), number, "2026-11-24T00:00:00Z")
        records = [make_decision(decision_id=case.decision_id, subject=case.subject,
                                 ruleset=registry.get(case.ruleset), facts=case.facts,
                                 gate=gate, caller=case.caller, dry_run=False,
                                 created_at=case.created_at, executors=Executors({}),
                                 evaluator=evaluate).record
                   for gate in (embedded, sidecar)]
        mine, theirs = ([{k: a[k] for k in ("id", "type", "params", "status")} |
                         {k: a["verdict"][k] for k in ("allow", "outcome", "reasons")}
                         for a in record["actions"]] for record in records)
        assert mine == theirs, case.subject
        assert records[0]["policy"]["revision"] == records[1]["policy"]["revision"]
        compared += len(mine)
    assert compared >= 12


# --- generated inputs ---------------------------------------------------------------------

CATALOG = sorted(json.loads((ROOT / "rego" / "decision" / "catalog" / "data.json")
                            .read_text())["actions"])
OPERATIONS = ["facts.write", "facts.read", "facts.retract", "decisions.create",
              "decisions.read", "replays.create", "rulesets.read", "actions.operate"]


def _retyped(value: Any) -> st.SearchStrategy[Any]:
    return ANY_JSON.filter(lambda v: type(v) is not type(value))


CHANGES = ["remove fact", "duplicate fact", "remove field", "retype field", "retype meta",
           "remove param", "retype param", "add param", "action type", "remove key",
           "retype key"]


@st.composite
def governance_input(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An allowed sample case, then up to four changes: facts removed, duplicated, their
    fields removed or retyped, their type or department changed; parameters removed,
    retyped or added; another action type; a key of the input removed or retyped."""
    name = draw(st.sampled_from(sorted(ALLOWED)))
    action, facts = copy.deepcopy(ALLOWED[name])
    common: dict[str, Any] = {
        "subject": "PR-1", "facts": facts,
        "decision": {"id": "d-1", "ruleset": "procurement", "ruleset_version": "v",
                     "dry_run": False, "created_at": "2026-12-01T00:00:00Z"},
        "caller": {"id": "portal", "departments": ["procurement"]}}
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(CHANGES))
        if kind in ("remove key", "retype key"):
            _change_key(draw, kind, common)
        elif kind == "action type":
            action["type"] = draw(st.one_of(st.sampled_from(CATALOG), ANY_JSON))
        elif kind in ("remove param", "retype param", "add param"):
            _change_param(draw, kind, action["params"])
        elif isinstance(common.get("facts"), list) and common["facts"]:
            _change_fact(draw, kind, common["facts"])
    actions = [action] + [copy.deepcopy(action) | {"id": f"act-{n}"}
                          for n in range(draw(st.integers(0, 2)))]
    return common, actions


def _change_key(draw: st.DrawFn, kind: str, common: dict[str, Any]) -> None:
    key = draw(st.sampled_from(sorted(common)))
    if kind == "remove key":
        del common[key]
    else:
        common[key] = draw(_retyped(common[key]))


def _change_param(draw: st.DrawFn, kind: str, params: dict[str, Any]) -> None:
    if kind == "add param" or not params:
        params[draw(st.text(max_size=6))] = draw(ANY_JSON)
    else:
        param = draw(st.sampled_from(sorted(params)))
        if kind == "remove param":
            del params[param]
        else:
            params[param] = draw(_retyped(params[param]))


def _change_fact(draw: st.DrawFn, kind: str, facts: list[Any]) -> None:
    """Remove, duplicate or retype one fact, or remove or retype one of its fields."""
    index = draw(st.integers(0, len(facts) - 1))
    target = facts[index]
    if kind == "remove fact":
        del facts[index]
    elif kind == "duplicate fact":
        facts.append({**copy.deepcopy(target), "id": f"{target.get('id')}-copy"})
    elif kind == "retype meta":
        key = draw(st.sampled_from(["type", "department", "id", "data"]))
        target[key] = draw(st.one_of(ANY_JSON, st.sampled_from(
            ["procurement", "finance", "risk", "legal", "rules", "purchase_request"])))
    elif isinstance(target.get("data"), dict) and target["data"]:
        field = draw(st.sampled_from(sorted(target["data"])))
        if kind == "remove field":
            del target["data"][field]
        else:
            target["data"][field] = draw(_retyped(target["data"][field]))


@st.composite
def access_input(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """A caller and a request of the access policy, with fields missing or mistyped."""
    caller: dict[str, Any] = {
        "id": draw(st.sampled_from(["finance-erp", "portal", "analyst"])),
        "departments": draw(st.lists(st.sampled_from(["finance", "procurement", "*"]),
                                     max_size=2)),
        "rulesets": draw(st.lists(st.sampled_from(["procurement", "*"]), max_size=2)),
        "grants": draw(st.lists(st.sampled_from(["analyst", "operator"]), max_size=2))}
    request: dict[str, Any] = {
        "operation": draw(st.one_of(st.sampled_from(OPERATIONS), ANY_JSON)),
        "departments": draw(st.lists(st.sampled_from(["finance", "procurement"]), max_size=2)),
        "ruleset": "procurement"}
    for target in draw(st.lists(st.sampled_from(["caller", "request"]), max_size=3)):
        document = caller if target == "caller" else request
        key = draw(st.sampled_from(sorted(document)))
        if draw(st.booleans()):
            del document[key]
        else:
            document[key] = draw(_retyped(document[key]))
    return caller, request


def test_generated_inputs_get_the_same_verdicts(opa_bundled: OpaServer) -> None:
    embedded = gate_for(EmbeddedPolicyEngine(ROOT / "rego", reload_seconds=0))
    sidecar = gate_for(SidecarPolicyEngine(opa_bundled.url, timeout_seconds=5))
    compared: list[str] = []

    @settings(max_examples=GENERATED, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(governance_input(), access_input()))
    def one(case: tuple[dict[str, Any], Any]) -> None:
        if isinstance(case[1], list):
            common, actions = case
            ours, theirs = embedded.check(common, actions), sidecar.check(common, actions)
            assert all(v.outcome != "hold" for v in ours + theirs), (ours, theirs)
            assert view(ours) == view(theirs), (common, actions)
            compared.extend(v.outcome for v in ours)
        else:
            caller, request = case
            ours_one, theirs_one = (gate.authorize(caller, request)
                                    for gate in (embedded, sidecar))
            assert view([ours_one]) == view([theirs_one]), (caller, request)
            compared.append(ours_one.outcome)

    one()
    assert len(compared) >= GENERATED
    # The inputs reach both sides of the policies, not only their refusals.
    assert compared.count("allow") >= 50 and compared.count("deny") >= 500, (
        compared.count("allow"), compared.count("deny"))
