"""Replay and what-if: pinned replays change nothing; candidates show what they would change."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from click.testing import CliRunner
from executor_server import Executor
from flask import Flask
from flask.testing import FlaskClient
from golden_support import decide_golden, differences

from app import create_app
from app.cli import main
from app.policy.access import hash_key
from app.shared.config import Settings

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"


def limits_data(threshold: int) -> str:
    """The text of a candidate rego/decision/limits/data.json."""
    return json.dumps({"currency": "EUR", "legal_review_threshold": threshold,
                       "max_risk_score": 0.5})


def case(subject: str, *, amount: int = 60000, vendor: str = "Globex", approver: str = "bob",
         score: float = 0.2, legal: str | None = None,
         urgency: str | None = "normal") -> list[dict[str, Any]]:
    facts: list[dict[str, Any]] = [
        {"type": "purchase_request", "department": "procurement",
         "data": {"request_id": subject, "amount": amount, "vendor": vendor,
                  "requester": "alice"}},
        {"type": "budget_check", "department": "finance",
         "data": {"request_id": subject, "available": 200000, "approver": approver,
                  "cost_center": "CC-7"}},
        {"type": "risk_assessment", "department": "risk",
         "data": {"request_id": subject, "score": score}},
    ]
    if legal:
        facts.append({"type": "legal_review", "department": "legal",
                      "data": {"request_id": subject, "status": legal, "reviewer": "carol"}})
    if urgency:
        facts.append({"type": "urgency_assessment", "department": "operations",
                      "data": {"request_id": subject, "level": urgency}})
    return [{"subject": subject, **fact} for fact in facts]


def varied_cases(count: int) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Many different purchase requests: amounts, legal, vendors, risk, urgency, approvers."""
    for n in range(count):
        subject = f"PR-{n:03d}"
        yield subject, case(subject, amount=20000 + 7919 * n % 220000,
                            vendor="Acme Shell Corp" if n % 11 == 0 else "Globex",
                            approver="alice" if n % 13 == 0 else "bob",
                            score=(0.1, 0.3, 0.6, 0.8)[n % 4],
                            legal=(None, "cleared", "rejected")[n % 3],
                            urgency=(None, "normal", "high", "critical")[n % 4])


@pytest.fixture
def live(tmp_path: Path) -> Path:
    """A rules and a policy directory of this test's own, which it may change."""
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    shutil.copytree(ROOT / "rego", tmp_path / "rego")
    return tmp_path


@pytest.fixture
def app(redis_url: str, redis_client: redis.Redis, live: Path) -> Iterator[Flask]:
    flask_app = create_app(Settings.load(environ={}, overrides={
        "redis_url": redis_url, "data_dir": live, "rules_dir": live / "rules",
        "policy_dir": live / "rego", "background_worker": False,
        "rules_reload_seconds": 0, "policy_reload_seconds": 0}))
    yield flask_app
    flask_app.extensions["decision_service"].close()


def record(client: FlaskClient, subject: str, facts: list[dict[str, Any]]) -> str:
    assert client.post("/v1/facts", json={"facts": facts}).status_code == 201
    response = client.post("/v1/decisions", json={"subject": subject, "ruleset": "procurement"})
    assert response.status_code == 201
    return str(response.get_json()["decision_id"])


def replay(client: FlaskClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/replays", json=body)
    assert response.status_code == 200, response.get_json()
    return dict(response.get_json())


def test_replaying_decisions_with_their_own_versions_changes_nothing(
        app: Flask, live: Path) -> None:
    client = app.test_client()
    ids = [record(client, subject, facts) for subject, facts in varied_cases(60)]
    # The live files move on; the recorded decisions stay pinned to what they used.
    rules = live / "rules" / "procurement.yaml"
    rules.write_text(rules.read_text().replace('{">": 100000}', '{">": 5000}'))
    limits = live / "rego" / "decision" / "limits" / "data.json"
    limits.write_text(limits_data(1))
    service = app.extensions["decision_service"]
    service.rulesets.reload()
    service.policy.engine.reload()
    report = replay(client, decision_ids=ids)
    assert report["summary"]["decisions"] == 60
    assert report["summary"]["errors"] == 0
    assert [r["decision_id"] for r in report["results"] if r["changed"]] == []
    assert any(r["diff"]["rules"] == {"now_fire": [], "no_longer_fire": []}
               for r in report["results"])


def test_candidate_rules_show_the_actions_and_rules_that_change(app: Flask) -> None:
    client = app.test_client()
    small = record(client, "PR-S", case("PR-S", amount=60000))
    large = record(client, "PR-L", case("PR-L", amount=120000))
    source = (ROOT / "rules" / "procurement.yaml").read_text().replace(
        'amount: {"<=": 100000}', 'amount: {"<=": 50000}').replace(
        'amount: {">": 100000}', 'amount: {">": 50000}')
    report = replay(client, decision_ids=[small, large],
                    ruleset={"name": "procurement", "source": source})
    by_id = {r["decision_id"]: r for r in report["results"]}
    assert by_id[large]["changed"] is False
    changed = by_id[small]
    assert changed["changed"] is True
    assert changed["diff"]["rules"]["now_fire"] == ["legal_review_required"]
    assert "issue_purchase_order" in changed["diff"]["rules"]["no_longer_fire"]
    assert [a["type"] for a in changed["diff"]["actions"]["removed"]] == ["issue_purchase_order"]
    assert [a["type"] for a in changed["diff"]["actions"]["added"]] == ["request_legal_review"]
    summary = report["summary"]
    assert (summary["changed"], summary["unchanged"]) == (1, 1)
    assert {"rule": "legal_review_required", "decisions": 1, "now_fires": 1,
            "no_longer_fires": 0} in summary["most_changed_rules"]
    assert {"rule": "issue_purchase_order", "decisions": 1, "now_fires": 0,
            "no_longer_fires": 1} in summary["most_changed_rules"]
    assert summary["candidates"]["rulesets"]["procurement"] != changed["versions"]["before"][
        "ruleset"]


def test_candidate_policies_flip_verdicts_and_say_why(app: Flask) -> None:
    client = app.test_client()
    decision = record(client, "PR-P", case("PR-P", amount=80000))
    report = replay(client, decision_ids=[decision], policies={
        "decision/limits/data.json": limits_data(60000)})
    [result] = report["results"]
    [flip] = result["diff"]["verdicts"]
    assert flip["type"] == "issue_purchase_order"
    assert (flip["before"]["outcome"], flip["after"]["outcome"]) == ("allow", "deny")
    reason = "Purchase orders above EUR 60000 need a cleared legal review; PR-P has none."
    assert flip["after"]["reasons"] == [reason]
    assert report["summary"]["most_changed_policies"] == [
        {"reason": reason, "decisions": 1, "now_given": 1, "no_longer_given": 0}]


def test_the_reasons_of_removed_actions_are_no_policy_change(app: Flask) -> None:
    """Candidate rules that stop proposing a denied order remove it with its reason; no
    verdict flipped, so no policy changed anything: "most changed policies" stays empty."""
    client = app.test_client()
    denied = record(client, "PR-D", case("PR-D", vendor="Acme Shell Corp"))
    urgency = 'urg: {type: urgency_assessment, request_id: "$ok.request_id"}'
    source = (ROOT / "rules" / "procurement.yaml").read_text()
    assert urgency in source
    source = source.replace(urgency, urgency[:-1] + ", level: critical}", 1)
    report = replay(client, decision_ids=[denied],
                    ruleset={"name": "procurement", "source": source})
    [result] = report["results"]
    [removed] = [a for a in result["diff"]["actions"]["removed"]
                 if a["type"] == "issue_purchase_order"]
    assert removed["verdict"]["outcome"] == "deny" and removed["verdict"]["reasons"]
    assert result["diff"]["verdicts"] == []
    summary = report["summary"]
    assert summary["most_changed_policies"] == []
    assert {"rule": "issue_purchase_order", "decisions": 1, "now_fires": 0,
            "no_longer_fires": 1} in summary["most_changed_rules"]


def test_a_subject_and_a_time_range_select_decisions(app: Flask) -> None:
    client = app.test_client()
    first = record(client, "PR-T", case("PR-T"))
    second = record(client, "PR-T", case("PR-T", urgency="high"))
    other = record(client, "PR-U", case("PR-U"))
    by_subject = replay(client, subject="PR-T")
    assert [r["decision_id"] for r in by_subject["results"]] == [first, second]
    everything = replay(client, since="2000-01-01T00:00:00+00:00")
    assert {r["decision_id"] for r in everything["results"]} == {first, second, other}
    assert replay(client, until="2000-01-01T00:00:00+00:00")["results"] == []


def test_fact_sets_are_decided_against_the_candidates(app: Flask) -> None:
    client = app.test_client()
    fact_set = {"subject": "FS-1", "ruleset": "procurement",
                "facts": [{k: v for k, v in f.items() if k != "subject"}
                          for f in case("FS-1", amount=70000)]}
    report = replay(client, fact_sets=[fact_set], policies={
        "decision/limits/data.json": limits_data(60000)})
    [result] = report["results"]
    assert result["decision_id"] == "fact-set-1"
    assert result["diff"]["verdicts"][0]["after"]["outcome"] == "deny"


def test_a_missing_decision_is_an_error_in_the_report(app: Flask) -> None:
    report = replay(app.test_client(), decision_ids=["no-such-decision"])
    [result] = report["results"]
    assert "no decision with id" in result["error"]
    assert report["summary"]["errors"] == 1


def test_replay_never_dispatches(redis_url: str, redis_client: redis.Redis, live: Path) -> None:
    executor = Executor()
    executors = live / "executors.yaml"
    executors.write_text(yaml.safe_dump({"issue_purchase_order": {"url": executor.url}}))
    flask_app = create_app(Settings.load(environ={}, overrides={
        "redis_url": redis_url, "data_dir": live, "rules_dir": live / "rules",
        "policy_dir": live / "rego", "background_worker": False, "executors_file": executors}))
    try:
        client = flask_app.test_client()
        decision = record(client, "PR-D", case("PR-D"))
        service = flask_app.extensions["decision_service"]
        redis_client.delete("ds:{dispatch}:due")  # forget the live delivery
        replay(client, decision_ids=[decision])
        replay(client, decision_ids=[decision], policies={
            "decision/limits/data.json": limits_data(1)})
        assert redis_client.zcard("ds:{dispatch}:due") == 0
        assert service.dispatcher.run_once() == 0
        assert executor.deliveries == []
    finally:
        flask_app.extensions["decision_service"].close()
        executor.stop()


@pytest.mark.parametrize(("body", "field", "reason"), [
    ({}, "body", "name decision_ids"),
    ({"subject": "PR-1", "ruleset": {"name": "other", "source": "ruleset: procurement\n"
                                     "rules: [{name: r, when: {a: {type: t}}, "
                                     "then: [{assert: {type: u}}]}]"}},
     "other.yaml", "declares ruleset 'procurement'"),
    ({"subject": "PR-1", "ruleset": {"name": "procurement", "source": "ruleset: procurement\n"
                                     "rules:\n  - {name: r, when: {a: {x: {'~': 1}}}}\n"}},
     "procurement.yaml:3 rule r", "unknown operator"),
    ({"subject": "PR-1", "policies": {"decision/governance/governance.rego":
                                      "package decision.governance\nallow if {\n"}},
     "decision/governance/governance.rego:", "rego_parse_error"),
    ({"decision_ids": ["x"] * 501}, "decision_ids", "between 1 and 500"),
])
def test_a_bad_replay_request_says_what_is_wrong(app: Flask, body: dict[str, Any], field: str,
                                                 reason: str) -> None:
    response = app.test_client().post("/v1/replays", json=body)
    assert response.status_code == 422
    params = response.get_json()["invalid-params"]
    assert any(p["name"].startswith(field) and reason in p["reason"] for p in params), params


def test_replay_needs_the_analyst_grant(redis_url: str, redis_client: redis.Redis,
                                        tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [
        {"id": "portal", "sha256": hash_key("portal-key"), "departments": ["procurement"],
         "rulesets": ["procurement"]},
        {"id": "analyst", "sha256": hash_key("analyst-key"), "grants": ["analyst"]}]}))
    flask_app = create_app(Settings.load(environ={}, overrides={
        "redis_url": redis_url, "data_dir": tmp_path, "rules_dir": ROOT / "rules",
        "policy_dir": ROOT / "rego", "background_worker": False, "api_keys_file": keys}))
    client = flask_app.test_client()
    body = {"subject": "PR-1"}
    refused = client.post("/v1/replays", json=body, headers={"X-API-Key": "portal-key"})
    assert refused.status_code == 403
    assert refused.get_json()["reasons"] == ["portal needs the analyst grant to replay decisions."]
    assert client.post("/v1/replays", json=body,
                       headers={"X-API-Key": "analyst-key"}).status_code == 200
    flask_app.extensions["decision_service"].close()


def test_the_cli_writes_json_and_html_reports_and_gates_on_change(
        app: Flask, redis_url: str, live: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    client = app.test_client()
    for subject, facts in varied_cases(12):
        record(client, subject, facts)
    for name, value in {"DECISION_REDIS_URL": redis_url, "DECISION_RULES_DIR": live / "rules",
                        "DECISION_POLICY_DIR": live / "rego"}.items():
        monkeypatch.setenv(name, str(value))
    pinned = CliRunner().invoke(main, ["replay", "--since", "2000-01-01", "--fail-on-change"])
    assert pinned.exit_code == 0, pinned.output
    assert "12 replayed: 0 changed, 12 unchanged, 0 errors" in pinned.output

    candidate = tmp_path / "candidate.yaml"
    candidate.write_text((ROOT / "rules" / "procurement.yaml").read_text().replace(
        '{score: "< 0.5", clear: true', '{score: "< 0.7", clear: true').replace(
        '      - {score: "[0.5..0.7)"}\n', ""))
    report, page = tmp_path / "report.json", tmp_path / "report.html"
    what_if = CliRunner().invoke(main, ["replay", "--since", "2000-01-01", "--rules",
                                        str(candidate), "--json", str(report), "--html",
                                        str(page), "--fail-on-change"])
    assert what_if.exit_code == 1, what_if.output
    written = json.loads(report.read_text())
    assert written["summary"]["changed"] > 0
    changed = written["summary"]["changed"]
    assert {"rule": "risk_acceptable", "decisions": changed, "now_fires": changed,
            "no_longer_fires": 0} in written["summary"]["most_changed_rules"]
    html = page.read_text()
    assert '"most_changed_rules"' in html and "/*REPORT*/null" not in html

    broken = CliRunner().invoke(main, ["replay", "--decision", "nope"])
    assert broken.exit_code == 2
    assert "no decision with id 'nope'" in broken.output


def test_fact_sets_from_a_file_through_the_cli(tmp_path: Path, redis_url: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DECISION_REDIS_URL", redis_url)
    monkeypatch.setenv("DECISION_RULES_DIR", str(ROOT / "rules"))
    monkeypatch.setenv("DECISION_POLICY_DIR", str(ROOT / "rego"))
    result = CliRunner().invoke(main, ["replay", "--fact-sets",
                                       str(GOLDEN / "procurement.jsonl")])
    assert result.exit_code == 0, result.output
    cases = len((GOLDEN / "procurement.jsonl").read_text().splitlines())
    assert f"{cases} replayed: 0 changed" in result.output


def test_golden_fact_sets_still_decide_as_recorded() -> None:
    """A change to rules/ or rego/ that alters a golden decision fails here until
    tests/golden/*.expected.json is regenerated on purpose: scripts/update-golden. Every
    subject that decides differently is reported, each with its diff."""
    problems = []
    for expected_file, actual in decide_golden(ROOT).items():
        expected = json.loads(expected_file.read_text())
        problems += [f"{expected_file.name}: {found}" for found in differences(expected, actual)]
    assert not problems, (
        f"{len(problems)} golden subject(s) decide differently now; if that is intended, run "
        "scripts/update-golden and review the diff:\n\n" + "\n\n".join(problems))


def test_golden_differences_name_every_subject_with_its_diff() -> None:
    """Not only the first difference: each changed, new and gone subject, with a diff that
    shows the changed lines."""
    order = {"fired": ["a", "b"], "actions": [{"type": "po", "verdict": "allow"}]}
    expected = {"S-1": order, "S-2": order, "S-3": order, "S-4": order}
    actual = {"S-1": order, "S-2": {**order, "fired": ["a"]},
              "S-3": {**order, "actions": [{"type": "po", "verdict": "deny"}]},
              "S-5": order}
    found = differences(expected, actual)
    assert [entry.split(" ", 1)[0] for entry in found] == ["S-2", "S-3", "S-4", "S-5"]
    s2, s3, s4, s5 = found
    assert s2.startswith("S-2 decides differently:") and '-  "b"' in s2
    assert '-   "verdict": "allow"' in s3 and '+   "verdict": "deny"' in s3
    assert s4.startswith("S-4 is gone:") and s5.startswith("S-5 is new:")
    assert differences(expected, dict(expected)) == []


def test_a_time_range_is_replayed_a_page_at_a_time(app: Flask,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The log is read a page at a time, the limit first: a request never loads more
    records than it replays, and never calls the process-wide collector."""
    import gc

    from app.decisions.log import DecisionLog

    client = app.test_client()
    ids = [record(client, f"PR-T{n}", case(f"PR-T{n}")) for n in range(7)]
    fetched: list[int] = []
    real = DecisionLog.records

    def counting(self: DecisionLog, decision_ids: Any, **kwargs: Any) -> Any:
        wanted = list(decision_ids)
        fetched.append(len(wanted))
        return real(self, wanted, **kwargs)

    monkeypatch.setattr(DecisionLog, "records", counting)
    for name in ("collect", "freeze"):
        monkeypatch.setattr(gc, name, lambda *_, n=name: pytest.fail(f"gc.{n} from a request"))
    seen: list[str] = []
    cursor = None
    while True:
        report = replay(client, since="2000-01-01T00:00:00Z", limit=3,
                        **({"cursor": cursor} if cursor else {}))
        seen += [r["decision_id"] for r in report["results"]]
        assert not any(r["changed"] for r in report["results"])
        cursor = report["summary"]["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    assert fetched == [3, 3, 1]


def test_no_text_of_a_report_can_break_out_of_its_html_page() -> None:
    from app.web import replay_report_html

    hostile = "<!--<script></script><b>&amp;"
    page = replay_report_html({"summary": {}, "results": [{"note": hostile}]})
    assert hostile not in page and "<!--<script" not in page
    assert page.count("</script>") == replay_report_html({}).count("</script>")
