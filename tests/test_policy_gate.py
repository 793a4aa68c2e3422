"""The policy gate: verdicts from real OPA, embedded or the real OPA server as a sidecar
(`opa run --server` on loopback, tests/opa_sidecar.py), and every way of failing closed."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opa_bindings import OpaError
from opa_sidecar import OpaServer, ServedApp
from rules_support import purchase_case

from app.policy.embedded import (
    EmbeddedPolicyEngine,
    PolicyDirectory,
    compile_policy_set,
    evaluate_query,
)
from app.policy.engines import batch_query
from app.policy.files import PolicySet, load_policy_set
from app.policy.gate import ALLOW, DENY, HOLD, PolicyGate, Verdict
from app.policy.sidecar import SidecarPolicyEngine

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


class CountingEngine(EmbeddedPolicyEngine):
    """Real embedded OPA that counts the evaluations it is asked for."""

    asked = 0

    def decide(self, *args: Any, **kwargs: Any) -> Any:
        self.asked += 1
        return super().decide(*args, **kwargs)


ACCESS = "decision/access/access.rego"


def _access_policy(policy_dir: Path, rule: str) -> None:
    (policy_dir / "decision" / "access").mkdir(parents=True, exist_ok=True)
    (policy_dir / ACCESS).write_text(f"package decision.access\ndefault allow := false\n{rule}\n")


def test_an_access_verdict_is_kept_for_its_input_and_revision_only(policy_dir: Path) -> None:
    _access_policy(policy_dir, 'allow if input.caller.departments[_] == "finance"')
    engine = CountingEngine(policy_dir, reload_seconds=0)
    gate = gate_for(engine)
    finance = {"id": "erp", "departments": ["finance"]}
    legal = {"id": "counsel", "departments": ["legal"]}
    request = {"operation": "facts.write", "departments": ["finance"]}
    assert [gate.authorize(finance, request).outcome for _ in range(3)] == [ALLOW] * 3
    assert engine.asked == 1
    assert gate.authorize(legal, request).outcome == DENY  # another caller: asked
    assert gate.authorize(finance, {**request, "departments": ["legal"]}).outcome == ALLOW
    assert engine.asked == 3
    _access_policy(policy_dir, 'allow if input.caller.departments[_] == "legal"')
    assert engine.reload() == []
    # the new policy is in force as soon as it is loaded: no verdict of the old one is used
    assert (gate.authorize(finance, request).outcome,
            gate.authorize(legal, request).outcome) == (DENY, ALLOW)
    assert engine.asked == 5


def test_access_verdicts_of_a_policy_that_reads_the_clock_are_never_kept(
        policy_dir: Path) -> None:
    _access_policy(policy_dir, "allow if time.now_ns() > 0")
    engine = CountingEngine(policy_dir, reload_seconds=0)
    gate = gate_for(engine)
    caller, request = {"id": "x", "departments": []}, {"operation": "rulesets.read"}
    assert [gate.authorize(caller, request).outcome for _ in range(3)] == [ALLOW] * 3
    assert engine.asked == 3


def test_kept_access_verdicts_are_bounded(policy_dir: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    monkeypatch.setattr("app.policy.gate.ACCESS_VERDICTS_KEPT", 10)
    _access_policy(policy_dir, "allow if true")
    engine = CountingEngine(policy_dir, reload_seconds=0)
    gate = gate_for(engine)
    caller = {"id": "x", "departments": []}
    for n in range(50):  # a caller sending a new subject each time fills nothing
        gate.authorize(caller, {"operation": "facts.read", "subject": f"S-{n}"})
    assert len(gate._kept) == 10
    gate.authorize(caller, {"operation": "facts.read", "subject": "S-49"})  # the latest kept
    assert engine.asked == 50


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


# --- sidecar: the real OPA server ------------------------------------------------------


@pytest.fixture
def bundled(opa_bundled: OpaServer) -> OpaServer:
    """The real OPA, pulling the service's bundle (conftest.opa_bundled)."""
    return opa_bundled


@pytest.fixture
def plain(tmp_path: Path) -> Iterator[OpaServer]:
    """The real OPA serving rego/ as plain files (`opa run --server rego/`), no bundle."""
    server = OpaServer(tmp_path / "opa.log", policies=REGO)
    yield server
    server.close()


# A timeout long enough for a busy machine, where a test is not about timeouts.
def sidecar_engine(url: str, timeout: float = 5.0, **options: Any) -> SidecarPolicyEngine:
    return SidecarPolicyEngine(url, timeout_seconds=timeout, **options)


def sidecar_gate(url: str, timeout: float = 5.0, **options: Any) -> PolicyGate:
    return gate_for(sidecar_engine(url, timeout, **options))


def _summary(verdicts: list[Verdict]) -> list[tuple[str, tuple[str, ...]]]:
    return [(v.outcome, v.reasons) for v in verdicts]


@pytest.mark.parametrize("mode", ["bundle", "plain files"])
def test_embedded_and_sidecar_give_identical_verdicts(mode: str, request: pytest.FixtureRequest
                                                      ) -> None:
    opa: OpaServer = request.getfixturevalue("bundled" if mode == "bundle" else "plain")
    embedded, sidecar = embedded_gate(), sidecar_gate(opa.url)
    for _, shared, action, outcome, _ in SAMPLE_CASES:
        [verdict] = sidecar.check(shared, [action])
        assert verdict.outcome == outcome
        assert _summary([verdict]) == _summary(embedded.check(shared, [action]))
    actions = [case[2] for case in SAMPLE_CASES]
    for _ in range(2):  # the first batch tells the sidecar whether OPA runs the bundle
        assert _summary(sidecar.check(common(), actions)) == _summary(
            embedded.check(common(), actions))


def test_one_round_trip_per_decision_whatever_the_number_of_actions(bundled: OpaServer
                                                                    ) -> None:
    engine = sidecar_engine(bundled.url)
    gate = gate_for(engine)
    gate.check(common(), [order()])  # the first answer says OPA runs the service's bundle
    notify = {"id": "a", "type": "notify_finance", "params": {"request_id": "PR-1"}}
    for actions, outcomes in (([order()], [ALLOW]), ([order(), notify], [ALLOW, ALLOW]),
                              ([order(), order(approver="alice"), notify], [ALLOW, DENY, ALLOW])):
        before, logged, asked = bundled.requests_served(), len(bundled.decision_log()), \
            engine.round_trips
        verdicts = gate.check(common(), actions)
        assert [v.outcome for v in verdicts] == outcomes
        after = bundled.requests_served()
        assert after["POST v1/data"] - before.get("POST v1/data", 0) == 1
        assert engine.round_trips - asked == 1
        assert _wait_for(lambda n=logged: len(bundled.decision_log()) == n + 1)


def _wait_for(condition: Any, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_every_verdict_names_opas_decision_log_entry(bundled: OpaServer) -> None:
    """The auditor's join: a verdict's opa_decision_id is the id of the entry in OPA's
    decision log that holds the very input and result of that verdict."""
    gate = sidecar_gate(bundled.url)
    gate.check(common(), [order()])
    [single] = gate.check(common(), [order(approver="alice")])
    first, second = gate.check(common(), [order(), order(vendor="ACME Shell Corp")])
    assert single.opa_decision_id and first.opa_decision_id
    assert first.opa_decision_id == second.opa_decision_id  # one OPA decision for the batch
    assert single.opa_decision_id != first.opa_decision_id
    one = bundled.logged_decision(single.opa_decision_id)
    batch = bundled.logged_decision(first.opa_decision_id)
    assert one["path"] == "decision/governance"
    assert one["input"]["action"]["params"]["approver"] == "alice"
    assert one["result"]["deny"] == list(single.reasons)
    assert batch["path"] == "decision_service/batch/decision/governance/results"
    assert batch["input"]["items"][1]["params"]["vendor"] == "ACME Shell Corp"
    assert batch["result"]["0"]["allow"] is True
    assert batch["result"]["1"]["deny"] == list(second.reasons)
    assert single.as_dict()["opa_decision_id"] == single.opa_decision_id


def test_an_opa_on_plain_files_is_asked_per_action_each_with_a_decision_id(
        plain: OpaServer) -> None:
    engine = sidecar_engine(plain.url)
    verdicts = gate_for(engine).check(common(), [order(), order(approver="alice")])
    assert [v.outcome for v in verdicts] == [ALLOW, DENY]
    assert engine.round_trips == 2 + 2  # two actions, then the policies and data it serves
    assert len({v.opa_decision_id for v in verdicts} - {None}) == 2


def test_the_sidecar_revision_is_the_bundle_revision_the_embedded_engine_records(
        bundled: OpaServer) -> None:
    gate = sidecar_gate(bundled.url)
    revision = load_policy_set(REGO).revision
    assert embedded_gate().check(common(), [order()])[0].revision == revision
    assert gate.check(common(), [order()])[0].revision == revision
    assert gate.check(common(), [order(), order()])[0].revision == revision


def test_without_a_bundle_the_revision_hashes_the_modules_and_the_data_opa_serves(
        tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(REGO, policies)
    opa = OpaServer(tmp_path / "opa.log", policies=policies, extra_args=("--watch",))
    try:
        engine = sidecar_engine(opa.url, revision_ttl_seconds=0)
        gate = gate_for(engine)
        first = gate.check(common(), [order(vendor="Globex")])[0]
        assert first.outcome == ALLOW and first.revision.startswith("opa-")
        assert not first.revision.startswith("opa-modules-")  # the data was read too
        sanctions = policies / "decision" / "sanctions" / "data.json"
        sanctions.write_text(sanctions.read_text().replace("Acme Shell Corp", "Globex"))
        assert _wait_for(lambda: gate.check(common(), [order()])[0].outcome == DENY)
        second = gate.check(common(), [order()])[0]
        assert second.revision.startswith("opa-") and second.revision != first.revision
        assert not second.revision.startswith("opa-modules-")
        assert "sanctions list" in second.reasons[0]
    finally:
        opa.close()


def test_a_unix_socket_sidecar_decides_as_a_tcp_one(opa_bundle_host: ServedApp,
                                                    tmp_path: Path) -> None:
    opa = OpaServer(tmp_path / "opa.log", bundle_url=f"{opa_bundle_host.url}/v1",
                    socket_path=tmp_path / "opa.sock")
    try:
        assert opa.url.startswith("unix://")
        embedded, sidecar = embedded_gate(), sidecar_gate(opa.url)
        actions = [case[2] for case in SAMPLE_CASES]
        for _ in range(2):
            assert _summary(sidecar.check(common(), actions)) == _summary(
                embedded.check(common(), actions))
        assert sidecar.readiness() == "ok"
    finally:
        opa.close()


# --- sidecar: failing closed --------------------------------------------------------------


def test_a_killed_sidecar_holds_every_action(plain: OpaServer) -> None:
    gate = sidecar_gate(plain.url)
    assert [v.outcome for v in gate.check(common(), [order()])] == [ALLOW]
    plain.kill()
    verdicts = gate.check(common(), [order(), order()])
    assert [v.outcome for v in verdicts] == [HOLD, HOLD]
    assert "is unreachable" in verdicts[0].reasons[0]
    assert "unreachable" in gate.readiness()


def test_a_hung_sidecar_holds_the_actions_after_the_timeout(plain: OpaServer) -> None:
    gate = sidecar_gate(plain.url, timeout=5.0)
    assert [v.outcome for v in gate.check(common(), [order()])] == [ALLOW]
    engine = gate.engine
    assert isinstance(engine, SidecarPolicyEngine)
    engine.timeout_seconds = 0.1
    plain.pause()  # SIGSTOP: the connection stays open, nothing answers
    try:
        started = time.monotonic()
        [verdict] = gate.check(common(), [order()])
        assert verdict.outcome == HOLD
        assert "did not answer within 100 ms" in verdict.reasons[0]
        assert time.monotonic() - started < 1.0
    finally:
        plain.resume()
    engine.timeout_seconds = 5.0  # on a busy machine OPA may take over 100 ms to wake up
    assert [v.outcome for v in gate.check(common(), [order()])] == [ALLOW]


def test_a_sidecar_that_keeps_timing_out_is_not_waited_for_until_a_trial_succeeds(
        plain: OpaServer) -> None:
    now = [0.0]
    engine = SidecarPolicyEngine(plain.url, timeout_seconds=5.0, clock=lambda: now[0])
    gate = gate_for(engine)
    assert [v.outcome for v in gate.check(common(), [order()])] == [ALLOW]
    engine.timeout_seconds = 0.1
    plain.pause()
    try:
        for _ in range(3):
            [verdict] = gate.check(common(), [order()])
            assert "did not answer within 100 ms" in verdict.reasons[0]
        asked = engine.round_trips
        [verdict] = gate.check(common(), [order()])  # the circuit is open: held at once,
        assert engine.round_trips == asked  # without a call (so without its timeout)
        assert verdict.outcome == HOLD
        assert "not asked again for 500 ms after 3 failures in a row" in verdict.reasons[0]
    finally:
        plain.resume()
    engine.timeout_seconds = 5.0  # on a busy machine OPA may take over 100 ms to wake up
    now[0] = 0.6  # half a second later one call goes through, and closes the circuit
    assert [v.outcome for v in gate.check(common(), [order()])] == [ALLOW]
    assert [v.outcome for v in gate.check(common(), [order()])] == [ALLOW]


CONFLICT = ("package decision.governance\n\nallow := true if input.action.a\n\n"
            "allow := false if input.action.b\n")


@pytest.mark.parametrize("actions", [1, 2])
def test_an_evaluation_error_on_the_sidecar_holds_the_actions(tmp_path: Path,
                                                               actions: int) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "policy.rego").write_text(CONFLICT)
    opa = OpaServer(tmp_path / "opa.log", policies=tmp_path / "policies")
    try:
        action = {"id": "a", "type": "t", "params": {}, "a": True, "b": True}
        verdicts = sidecar_gate(opa.url).check(common(), [action] * actions)
        assert [v.outcome for v in verdicts] == [HOLD] * actions
        assert verdicts[0].reasons[0].startswith("OPA answered HTTP 500")
        assert "eval_conflict_error" in verdicts[0].reasons[0]
        embedded = gate_from_sources({GOVERNANCE: CONFLICT}).check(common(), [action])
        assert embedded[0].outcome == HOLD and "eval_conflict_error" in embedded[0].reasons[0]
    finally:
        opa.close()


BUILTIN_ERROR = ("package decision.governance\n\ndefault allow := false\n\n"
                 "allow if count(deny) == 0\n\n"
                 'deny contains "too much per unit" if input.action.params.amount / '
                 "input.action.params.units > 100\n")


def test_a_failing_builtin_holds_in_both_modes(tmp_path: Path) -> None:
    """A division by zero in a deny rule: OPA's server would make the rule undefined, so
    nothing denies and the action is allowed, unless asked for strict built-in errors
    (the embedded engine's way). Both hold it."""
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "policy.rego").write_text(BUILTIN_ERROR)
    opa = OpaServer(tmp_path / "opa.log", policies=tmp_path / "policies")
    try:
        action = {"id": "a", "type": "t", "params": {"amount": 500, "units": 0}}
        lax = opa.post("/v1/data/decision/governance", {"input": {"action": action}})
        assert lax == {"allow": True, "deny": []}  # what a sidecar asked plainly would do
        sidecar = sidecar_gate(opa.url).check(common(), [action])
        embedded = gate_from_sources({GOVERNANCE: BUILTIN_ERROR}).check(common(), [action])
        for [verdict] in (sidecar, embedded):
            assert verdict.outcome == HOLD
            assert "eval_builtin_error" in verdict.reasons[0]
            assert "div: divide by zero" in verdict.reasons[0]
        fine = {**action, "params": {"amount": 500, "units": 1}}
        assert _summary(sidecar_gate(opa.url).check(common(), [fine])) == [
            (DENY, ("too much per unit",))]
    finally:
        opa.close()


def test_an_undefined_document_on_the_sidecar_holds_the_action(bundled: OpaServer) -> None:
    """Also: the bundle has no batch document for a path it was not served for, so
    several actions are asked one by one (after one try)."""
    engine = sidecar_engine(bundled.url)
    gate = PolicyGate(engine, governance_path="decision/missing",
                      access_path="decision/access")
    for actions, round_trips in (([order()], 1), ([order(), order()], 3),
                                 ([order(), order()], 2)):
        asked = engine.round_trips
        verdicts = gate.check(common(), actions)
        assert [v.outcome for v in verdicts] == [HOLD] * len(actions)
        assert "data.decision.missing is undefined" in verdicts[0].reasons[0]
        assert engine.round_trips - asked == round_trips


def test_a_sidecar_with_no_policy_loaded_holds_the_actions(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    opa = OpaServer(tmp_path / "opa.log", policies=tmp_path / "empty")
    try:
        verdicts = sidecar_gate(opa.url).check(common(), [order(), order()])
        assert [v.outcome for v in verdicts] == [HOLD, HOLD]
        assert "is undefined for this action" in verdicts[0].reasons[0]
    finally:
        opa.close()


def test_a_sidecar_whose_bundle_is_not_activated_is_not_ready_and_holds(tmp_path: Path) -> None:
    """OPA pulls a bundle from a service that does not answer: it has no policy at all."""
    nowhere = OpaServer(tmp_path / "opa.log", bundle_url=f"http://127.0.0.1:{_closed_port()}/v1",
                        wait=False)
    try:
        assert _wait_for(lambda: nowhere.health(bundles=False) == 200)
        assert nowhere.health() == 500
        gate = sidecar_gate(nowhere.url)
        assert gate.readiness() == "OPA has not activated its bundles yet (health is HTTP 500)"
        [verdict] = gate.check(common(), [order()])
        assert verdict.outcome == HOLD
        assert "is undefined for this action" in verdict.reasons[0]
    finally:
        nowhere.close()


def test_an_unreachable_sidecar_holds_every_action() -> None:
    gate = sidecar_gate(f"http://127.0.0.1:{_closed_port()}")
    verdicts = gate.check(common(), [order(), order()])
    assert [v.outcome for v in verdicts] == [HOLD, HOLD]
    assert "is unreachable" in verdicts[0].reasons[0]
    assert "unreachable" in gate.readiness()


def _closed_port() -> int:
    from opa_sidecar import free_port

    return free_port()


def test_the_served_directory_is_what_the_sidecar_compares_with(bundled: OpaServer,
                                                                tmp_path: Path) -> None:
    """Readiness compares the revision OPA runs with the one the service serves."""
    same = sidecar_engine(bundled.url, served=PolicyDirectory(REGO, keep_engine=False))
    assert same.readiness() == "ok"
    assert same.revisions() == {"served": load_policy_set(REGO).revision,
                                "sidecar": load_policy_set(REGO).revision}
    other = tmp_path / "other"
    shutil.copytree(REGO, other)
    (other / "decision" / "limits" / "data.json").write_text(
        '{"currency": "EUR", "legal_review_threshold": 1, "max_risk_score": 0.5}')
    changed = sidecar_engine(bundled.url, served=PolicyDirectory(other, keep_engine=False))
    assert changed.readiness().startswith(
        f"OPA runs revision {load_policy_set(REGO).revision} of bundle decision-service, "
        f"the service serves {load_policy_set(other).revision}")


OUTSIDE = """package decision.governance

default allow := false

allow if http.send({"method": "get", "url": "http://127.0.0.1:9/"}).status_code == 200
"""


def test_a_policy_that_reaches_outside_is_rejected_unless_allowed(policy_dir: Path) -> None:
    engine = EmbeddedPolicyEngine(policy_dir, reload_seconds=0)
    good = engine.revision
    (policy_dir / GOVERNANCE).write_text(OUTSIDE)
    [problem] = engine.reload(force=True)
    assert problem.file == GOVERNANCE
    assert problem.message.startswith("calls http.send, which reaches outside the policy")
    assert engine.revision == good
    allowed = EmbeddedPolicyEngine(policy_dir, reload_seconds=0,
                                   allowed_builtins=frozenset({"http.send"}))
    assert allowed.revision != good and not allowed.problems
