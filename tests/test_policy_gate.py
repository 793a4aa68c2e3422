"""The policy gate: verdicts from real OPA, embedded or as a sidecar over loopback HTTP,
and every way of failing closed."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opa_bindings import OpaError
from opa_server import OpaStandIn
from rules_support import purchase_case

from app.policy.engines import (
    EmbeddedPolicyEngine,
    SidecarPolicyEngine,
    batch_query,
    compile_policy_set,
    evaluate_query,
)
from app.policy.files import PolicySet, load_policy_set
from app.policy.gate import ALLOW, DENY, HOLD, PolicyGate, Verdict

REGO = Path(__file__).resolve().parent.parent / "rego"


def gate_for(engine: Any) -> PolicyGate:
    return PolicyGate(engine, governance_path="decision/governance", access_path="decision/access")


def embedded_gate() -> PolicyGate:
    return gate_for(EmbeddedPolicyEngine(REGO, reload_seconds=0))


def gate_from_sources(sources: dict[str, str]) -> PolicyGate:
    return gate_for(EmbeddedPolicyEngine(None, policies=PolicySet.from_sources(sources)))


def order(**params: Any) -> dict[str, Any]:
    base = {"request_id": "PR-1", "amount": 120000, "vendor": "Globex", "requester": "alice",
            "approver": "bob", "urgency": "normal"}
    return {"id": "act-1", "type": "issue_purchase_order", "params": {**base, **params},
            "rule": "issue_purchase_order"}


def common(*, available: int = 300000, legal: str | None = "cleared",
           **data: Any) -> dict[str, Any]:
    """What the gate is given beside the action: the four departments' facts on PR-1 (`data`
    replaces fields of whichever fact has them)."""
    facts = purchase_case("PR-1", available=available, legal=legal)
    for fact in facts:
        fact["data"].update({k: v for k, v in data.items() if k in fact["data"]})
    return {"subject": "PR-1", "facts": facts,
            "decision": {"id": "d-1", "ruleset": "procurement", "ruleset_version": "v",
                         "dry_run": False},
            "caller": {"id": "procurement-portal", "departments": ["procurement"]}}


SAMPLE_CASES = [
    ("cleared order", common(), order(), ALLOW, None),
    ("over budget", common(available=1000), order(), DENY, "exceeds the EUR 1000 available"),
    ("sanctioned vendor", common(vendor="ACME Shell Corp"), order(vendor="ACME Shell Corp"),
     DENY, "sanctions list"),
    ("no legal review", common(legal=None), order(), DENY, "need a cleared legal review"),
    ("requester approves", common(approver="alice"), order(approver="alice"), DENY,
     "segregation of duties"),
    ("unknown action", common(), {"id": "a", "type": "wire_money", "params": {}}, DENY,
     "not on the list of approved actions"),
    ("notification", common(), {"id": "a", "type": "notify_finance",
                                "params": {"request_id": "PR-1"}}, ALLOW, None),
    ("notification about nothing", common(), {"id": "a", "type": "notify_finance",
                                              "params": {}}, DENY, "names no request"),
]


def test_the_embedded_evaluation_answers_exactly_as_the_bindings_do() -> None:
    engine = compile_policy_set(load_policy_set(REGO))
    query = batch_query("decision/governance", "action")
    policy_input = {"common": common(available=1000), "items": [order(), order(vendor="x")]}
    ours = evaluate_query(engine, query, policy_input)
    assert ours == engine.eval_query(query, policy_input)
    assert ours[0]["results"]["0"]["allow"] is False


def test_no_input_leaves_input_undefined_as_the_bindings_do() -> None:
    engine = compile_policy_set(load_policy_set(REGO))
    assert evaluate_query(engine, "x := input", None) == engine.eval_query("x := input") == []


def test_input_orjson_cannot_encode_takes_the_bindings_path() -> None:
    engine = compile_policy_set(load_policy_set(REGO))
    assert evaluate_query(engine, "x := input.n", {"n": 2**70}) == [{"x": 2**70}]


def test_an_evaluation_error_raises_with_opas_message() -> None:
    engine = compile_policy_set(PolicySet.from_sources({"p.rego": "package p\n\nx := 1 / 0\n"}))
    with pytest.raises(OpaError, match="divide by zero"):
        evaluate_query(engine, "y := data.p.x", None)


def test_an_evaluation_error_holds_every_action() -> None:
    gate = gate_from_sources({"g.rego": "package decision.governance\n\n"
                                        "allow := 1 / 0\n"})
    [verdict] = gate.check(common(), [order()])
    assert verdict.outcome == HOLD
    assert "divide by zero" in verdict.reasons[0]


@pytest.mark.parametrize(("shared", "action", "outcome", "reason"),
                         [case[1:] for case in SAMPLE_CASES], ids=[c[0] for c in SAMPLE_CASES])
def test_sample_policies_decide_the_procurement_cases(shared: dict[str, Any],
                                                      action: dict[str, Any], outcome: str,
                                                      reason: str | None) -> None:
    [verdict] = embedded_gate().check(shared, [action])
    assert verdict.outcome == outcome
    assert verdict.allow is (outcome == ALLOW)
    if reason:
        assert any(reason in text for text in verdict.reasons), verdict.reasons
    else:
        assert verdict.reasons == ()


def test_every_verdict_carries_the_policy_revision() -> None:
    [verdict] = embedded_gate().check(common(), [order()])
    assert verdict.revision == load_policy_set(REGO).revision


def test_one_verdict_per_action_in_order() -> None:
    verdicts = embedded_gate().check(common(), [order(), order(approver="alice"), order()])
    assert [v.outcome for v in verdicts] == [ALLOW, DENY, ALLOW]


GOVERNANCE = "decision/governance/policy.rego"


@pytest.mark.parametrize(("source", "outcome", "reason"), [
    ('package decision.governance\nallow := true\ndeny contains "no" if true\n', DENY, "no"),
    ("package decision.governance\nallow := false\n", DENY, "not allowed by"),
    ("package decision.other\nallow := true\n", HOLD, "is undefined for this action"),
    ("package decision\ngovernance := 5\n", HOLD, "not an object with allow and deny"),
    ('package decision.governance\nallow := "yes"\n', HOLD, "allow is not a boolean"),
    ("package decision.governance\nallow := true\ndeny := [1]\n", HOLD, "not a set of strings"),
    ('package decision.governance\ndeny contains "x" if false\n', HOLD, "allow is undefined"),
    ("package decision.governance\nallow := true if input.action.a\nallow := false if "
     "input.action.b\n", HOLD, "policy evaluation failed"),
])
def test_anything_but_an_explicit_allow_is_not_an_allow(source: str, outcome: str,
                                                        reason: str) -> None:
    action = {"id": "a", "type": "t", "params": {}, "a": True, "b": True}
    [verdict] = gate_from_sources({GOVERNANCE: source}).check(common(), [action])
    assert verdict.outcome == outcome
    assert any(reason in text for text in verdict.reasons), verdict.reasons


# --- reload ----------------------------------------------------------------------------


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    (tmp_path / "decision" / "governance").mkdir(parents=True)
    (tmp_path / GOVERNANCE).write_text(
        'package decision.governance\nallow := true\ndeny contains "big" if '
        "input.action.params.amount > 10\n")
    return tmp_path


def test_a_changed_policy_is_used_with_its_new_revision(policy_dir: Path) -> None:
    engine = EmbeddedPolicyEngine(policy_dir, reload_seconds=0)
    gate = gate_for(engine)
    first = gate.check(common(), [order(amount=50)])[0]
    (policy_dir / GOVERNANCE).write_text("package decision.governance\nallow := true\n")
    assert engine.reload() == []
    second = gate.check(common(), [order(amount=50)])[0]
    assert (first.outcome, second.outcome) == (DENY, ALLOW)
    assert first.revision != second.revision


@pytest.mark.parametrize(("broken", "line", "message"), [
    ("package decision.governance\nallow if {\n  input.x ==\n}\n", 4, "rego_parse_error"),
    ("package decision.governance\nallow if { y == 1 }\n", 2, "var y is unsafe"),
    ("package decision.governance\nallow if { nope(1) }\n", 2, "undefined function nope"),
    ("package decision.governance\nallow if { a }\na if { allow }\n", 3,
     "rego_recursion_error: rule data.decision.governance.a is recursive"),
    ("package decision.governance\nallow if { a }\na if { allow }\n", 2,
     "rego_recursion_error: rule data.decision.governance.allow is recursive"),
    ('package decision.governance\nallow if {\n  x := 1 + "a"\n  x > 0\n}\n', 3,
     "rego_type_error: plus: invalid argument(s)"),
    ("package decision.governance\nallow if { count(1, 2) }\n", 2,
     "rego_type_error: count: invalid argument(s)"),
    ("allow := true\n", 1, "rego_parse_error: package expected"),
    ("", 0, "rego_parse_error: empty module"),
    ("package decision.governance\ndefault allow := false\ndefault allow := true\n", 1,
     "multiple default rules data.decision.governance.allow"),
    ("package decision.governance\nimport rego.v2\n", 2, "invalid import `rego.v2`"),
    ("package decision.governance\ndeny contains msg if { input.x == 1 }\n", 2,
     "var msg is unsafe"),
    ("package decision.governance\nallow if { not }\n", 2, "unexpected } token"),
    # METADATA is YAML, which OPA's loader reads (and refuses) whatever the rules ask for
    ("package decision.governance\n\n# METADATA\n# description: Once: twice.\nallow := true\n",
     4, "yaml: mapping values are not allowed in this context"),
    ("package decision.governance\n\n# METADATA\n# scope: nowhere\nallow := true\n", 3,
     "invalid annotation scope 'nowhere'"),
])
def test_a_policy_that_does_not_compile_is_rejected_and_the_last_good_one_stays(
        policy_dir: Path, broken: str, line: int, message: str) -> None:
    engine = EmbeddedPolicyEngine(policy_dir, reload_seconds=0)
    gate = gate_for(engine)
    revision = engine.revision
    (policy_dir / GOVERNANCE).write_text(broken)
    problems = engine.reload()  # a recursion is reported once per rule in the cycle
    assert [(p.file, p.line) for p in problems if message in p.message] == [(GOVERNANCE, line)]
    [verdict] = gate.check(common(), [order(amount=50)])
    assert (verdict.outcome, verdict.revision) == (DENY, revision)


def test_a_policy_file_that_is_not_utf8_is_rejected(policy_dir: Path) -> None:
    engine = EmbeddedPolicyEngine(policy_dir, reload_seconds=0)
    revision = engine.revision
    (policy_dir / GOVERNANCE).write_bytes(b"package decision.governance\nallow if { \xff }\n")
    [problem] = engine.reload()
    assert (problem.file, engine.revision) == (GOVERNANCE, revision)
    assert "cannot be read: 'utf-8' codec can't decode byte 0xff" in problem.message


def test_broken_data_is_rejected_with_file_and_line(policy_dir: Path) -> None:
    engine = EmbeddedPolicyEngine(policy_dir, reload_seconds=0)
    (policy_dir / "decision" / "data.json").write_text('{"limits":\n  {"a": }\n}')
    [problem] = engine.reload()
    assert (problem.file, problem.line) == ("decision/data.json", 2)


def test_without_loadable_policies_every_action_is_held(policy_dir: Path) -> None:
    (policy_dir / GOVERNANCE).write_text("package decision.governance\nallow if {\n")
    gate = gate_for(EmbeddedPolicyEngine(policy_dir, reload_seconds=0))
    [verdict] = gate.check(common(), [order()])
    assert verdict.outcome == HOLD
    assert "no policies are loaded" in verdict.reasons[0]
    assert "policy.rego" in gate.readiness()


# --- sidecar ---------------------------------------------------------------------------


@pytest.fixture
def opa() -> Iterator[OpaStandIn]:
    server = OpaStandIn(REGO)
    yield server
    server.close()


def sidecar_gate(url: str, timeout: float = 0.25) -> PolicyGate:
    return gate_for(SidecarPolicyEngine(url, timeout_seconds=timeout))


def _summary(verdicts: list[Verdict]) -> list[tuple[str, tuple[str, ...]]]:
    return [(v.outcome, v.reasons) for v in verdicts]


def test_embedded_and_sidecar_give_identical_verdicts(opa: OpaStandIn) -> None:
    embedded, sidecar = embedded_gate(), sidecar_gate(opa.url)
    for _, shared, action, _, _ in SAMPLE_CASES:
        assert _summary(sidecar.check(shared, [action])) == _summary(
            embedded.check(shared, [action]))
    actions = [case[2] for case in SAMPLE_CASES]
    assert _summary(sidecar.check(common(), actions)) == _summary(
        embedded.check(common(), actions))


def test_one_round_trip_per_decision_whatever_the_number_of_actions(opa: OpaStandIn) -> None:
    gate = sidecar_gate(opa.url)
    gate.check(common(), [order()])  # first call also reads the revision
    opa.requests.clear()
    notify = {"id": "a", "type": "notify_finance", "params": {"request_id": "PR-1"}}
    verdicts = gate.check(common(), [order(), order(approver="alice"), notify])
    assert [v.outcome for v in verdicts] == [ALLOW, DENY, ALLOW]
    assert sum(opa.requests.values()) == 1
    assert opa.requests["POST /v1/query"] == 1


def test_a_single_action_uses_the_data_api(opa: OpaStandIn) -> None:
    gate = sidecar_gate(opa.url)
    gate.check(common(), [order()])
    assert opa.requests["POST /v1/data/decision/governance"] == 1


def test_an_opa_without_ad_hoc_queries_is_asked_per_action(opa: OpaStandIn) -> None:
    opa.query_api = False
    verdicts = sidecar_gate(opa.url).check(common(), [order(), order(approver="alice")])
    assert [v.outcome for v in verdicts] == [ALLOW, DENY]


def test_the_sidecar_revision_is_the_bundle_revision_it_reports() -> None:
    server = OpaStandIn(REGO, bundles={"governance": "2026-11-24.3"})
    try:
        gate = sidecar_gate(server.url)
        assert gate.check(common(), [order()])[0].revision == "governance=2026-11-24.3"
        assert gate.check(common(), [order(), order()])[0].revision == "governance=2026-11-24.3"
    finally:
        server.close()


def test_without_bundles_the_revision_hashes_the_loaded_modules(opa: OpaStandIn) -> None:
    revision = sidecar_gate(opa.url).check(common(), [order()])[0].revision
    assert revision.startswith("opa-")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_sidecar_holds_every_action() -> None:
    gate = sidecar_gate(f"http://127.0.0.1:{_closed_port()}")
    verdicts = gate.check(common(), [order(), order()])
    assert [v.outcome for v in verdicts] == [HOLD, HOLD]
    assert "is unreachable" in verdicts[0].reasons[0]
    assert "unreachable" in gate.readiness()


def test_a_slow_sidecar_holds_the_actions_after_the_timeout(opa: OpaStandIn) -> None:
    opa.delay_seconds = 0.5
    [verdict] = sidecar_gate(opa.url, timeout=0.1).check(common(), [order()])
    assert verdict.outcome == HOLD
    assert "did not answer within 100 ms" in verdict.reasons[0]


def test_a_sidecar_that_keeps_timing_out_is_not_waited_for_until_a_trial_succeeds(
        opa: OpaStandIn) -> None:
    now = [0.0]
    engine = SidecarPolicyEngine(opa.url, timeout_seconds=0.1, clock=lambda: now[0])
    gate = gate_for(engine)
    opa.delay_seconds = 0.3
    for _ in range(3):
        [verdict] = gate.check(common(), [order()])
        assert "did not answer within 100 ms" in verdict.reasons[0]
    asked = engine.round_trips
    started = time.monotonic()
    [verdict] = gate.check(common(), [order()])  # the circuit is open: held at once
    assert time.monotonic() - started < 0.05 and engine.round_trips == asked
    assert verdict.outcome == HOLD
    assert "not asked again for 500 ms after 3 failures in a row" in verdict.reasons[0]
    opa.delay_seconds = 0.0
    now[0] = 0.6  # half a second later one call goes through, and closes the circuit
    assert [v.outcome for v in gate.check(common(), [order()])] == [ALLOW]
    assert [v.outcome for v in gate.check(common(), [order()])] == [ALLOW]


def test_a_sidecar_answering_500_holds_the_actions(opa: OpaStandIn) -> None:
    opa.fail_status = 500
    verdicts = sidecar_gate(opa.url).check(common(), [order(), order()])
    assert [v.outcome for v in verdicts] == [HOLD, HOLD]
    assert verdicts[0].reasons == ("OPA answered HTTP 500: stand-in told to fail",)


def test_an_undefined_document_on_the_sidecar_holds_the_action(opa: OpaStandIn) -> None:
    gate = PolicyGate(SidecarPolicyEngine(opa.url), governance_path="decision/missing",
                      access_path="decision/access")
    [verdict] = gate.check(common(), [order()])
    assert verdict.outcome == HOLD
    assert "undefined" in verdict.reasons[0]
