"""The explorer and replay pages, as a person sees them: headless Chromium over real HTTP.

Each layout test saves screenshots at 1280 and 1920 px under test-artifacts/pages/
(git-ignored) for a person to look at, and asserts the layout facts the screenshots
show: the actions before the facts, a parameters column wide enough to read, a colour
for every status, labels shown whole."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from click.testing import CliRunner
from executor_server import Executor
from flask import Flask
from test_decisions import executors_file
from test_replay import case, limits_data, record
from webdriver import MISSING, Browser
from werkzeug.serving import make_server

from app import create_app
from app.cli import main
from app.policy.access import hash_key
from app.shared.config import Settings
from app.shared.schemas import DecisionActionSchema

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "pages"
WIDTHS = (1280, 1920)
LIMITS = "decision/limits/data.json"
LEGAL_REASON = "Purchase orders above EUR 50000 need a cleared legal review; PR-7 has none."

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = Browser()
    yield chromium
    chromium.quit()


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Path:
    """Where this test's screenshots go (kept after the run, to be looked at)."""
    directory = ARTIFACTS / request.node.name
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@dataclass
class Site:
    url: str
    app: Flask

    def serves(self, rule: str) -> bool:
        return rule in {r.rule for r in self.app.url_map.iter_rules()}


def serve(app: Flask) -> Iterator[Site]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Site(f"http://127.0.0.1:{server.server_port}", app)
    finally:
        server.shutdown()
        app.extensions["decision_service"].close()


def settings(redis_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    return Settings.load(environ={}, overrides={
        "redis_url": redis_url, "data_dir": tmp_path, "rules_dir": ROOT / "rules",
        "policy_dir": ROOT / "rego", "background_worker": False, **overrides})


@pytest.fixture
def site(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Iterator[Site]:
    app = create_app(settings(redis_url, tmp_path))
    client = app.test_client()
    record(client, "PR-7", case("PR-7", amount=70000, urgency="critical"))
    record(client, "PR-8", case("PR-8", vendor="Acme Shell Corp"))
    yield from serve(app)


KEYS = {  # name: (departments, rulesets, grants)
    "loader": (["*"], ["*"], []),
    "analyst": ([], ["*"], ["analyst"]),
    "operator": ([], [], ["operator"]),
}


def key_of(name: str) -> str:
    return f"page-key-{name}-0123456789"


@dataclass
class Secured(Site):
    decision_id: str = ""


@pytest.fixture
def secured(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Iterator[Secured]:
    """A service with API keys whose executor refuses the purchase order (HTTP 400): the
    order is parked as failed after one attempt, for an operator to re-drive."""
    executor = Executor()
    executor.failing_status = 400
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [
        {"id": name, "sha256": hash_key(key_of(name)), "departments": departments,
         "rulesets": rulesets, "grants": grants}
        for name, (departments, rulesets, grants) in KEYS.items()]}))
    app = create_app(settings(redis_url, tmp_path, api_keys_file=keys,
                              executors_file=executors_file(tmp_path, executor.url)))
    client = app.test_client()
    loader = {"X-API-Key": key_of("loader")}
    assert client.post("/v1/facts", headers=loader, json={"facts": case(
        "PR-9", amount=70000, urgency="critical")}).status_code == 201
    decided = client.post("/v1/decisions", headers=loader,
                          json={"subject": "PR-9", "ruleset": "procurement"})
    assert decided.status_code == 201
    decision_id = decided.get_json()["decision_id"]
    assert app.extensions["decision_service"].dispatcher.run_once() >= 1
    executor.failing_status = None  # a re-drive is delivered
    for served in serve(app):
        yield Secured(served.url, served.app, decision_id)
    executor.stop()


def look_up(browser: Browser, site: Site, *, decision: str = "", subject: str = "",
            key: str = "") -> None:
    browser.get(f"{site.url}/explorer")
    if key:
        browser.clear("#apikey")  # the tab kept the last one
        browser.type("#apikey", key)
    if decision:
        browser.type("#decision", decision)
    if subject:
        browser.type("#subject", subject)
    browser.click("#lookup button")


def open_decision(browser: Browser, site: Site, subject: str) -> None:
    browser.get(f"{site.url}/explorer?subject={subject}")
    browser.click("#decisions a.decision")
    browser.wait_for("#actions tr[data-action]")


def top(browser: Browser, css: str) -> float:
    return float(browser.run(
        "return document.querySelector(arguments[0]).getBoundingClientRect().top", css))


def test_the_explorer_shows_a_subject_and_how_its_decision_was_taken(
        browser: Browser, site: Site, shots: Path) -> None:
    browser.get(f"{site.url}/explorer?subject=PR-7")
    browser.wait_for("#decisions a.decision")
    departments = [e.split(" (")[0] for e in browser.texts("#facts .dept h4")]
    assert departments == ["finance", "operations", "procurement", "risk"]
    finance = browser.text("#facts [data-department='finance'] .fact")
    assert "available\n200000" in finance and "[object" not in finance
    assert browser.texts("#decisions .badge.status") == ["recorded", "recorded"]
    for width in WIDTHS:
        browser.resize(width, 1000)
        browser.screenshot_page(shots / f"subject-{width}.png", width)

    browser.click("#decisions a.decision")
    browser.wait_for("#fired li")
    assert browser.texts("#fired li strong") == [
        "budget_confirmed", "risk_acceptable", "legal_not_needed", "approve_purchase",
        "issue_purchase_order", "expedite_critical_order"]
    assert "rules" in [e.split(" (")[0] for e in browser.texts("#facts .dept h4")]
    first, second = browser.texts("#fired li")[:2]
    assert first == ("budget_confirmed matched req=purchase_request (procurement), "
                     "bud=budget_check (finance)")
    # a rule compiled from a decision table's row says which
    assert second.startswith("risk_acceptable (table risk_routing, row 1) matched ")
    assert "[object" not in browser.text("main")
    rows = browser.texts("#actions tr[data-action]")
    assert rows[0].startswith("issue_purchase_order") and "allow" in rows[0]
    assert "recorded" in rows[0]


def test_the_explorer_shows_a_denial_with_its_reason(browser: Browser, site: Site) -> None:
    open_decision(browser, site, "PR-8")
    row = "#actions tr[data-action='issue_purchase_order']"
    reasons = browser.texts(f"{row} li.reason")
    assert reasons == ["Vendor Acme Shell Corp is on the EU consolidated sanctions list "
                       "(reference EU-2024-113): no order may be placed."]
    assert browser.text(f"{row} .badge.outcome") == "deny"
    assert browser.text(f"{row} .badge.status") == "denied"
    assert "status-denied" in (browser.attribute(f"{row} .badge.status", "class") or "")


def test_the_explorer_says_what_went_wrong(browser: Browser, site: Site) -> None:
    browser.get(f"{site.url}/explorer?decision=no-such-decision")
    browser.wait_for("main .problem .error")
    assert "no decision with id" in browser.text("main .error").lower()
    assert len(browser.elements("main .error")) == 1


SHORT_VALUES_ON_ONE_LINE = """
return [...document.querySelectorAll('#actions dl.fields dd')].map((dd) => {
  const range = document.createRange();
  range.selectNodeContents(dd);
  const lines = new Set([...range.getClientRects()].map((r) => Math.round(r.top)));
  return [dd.textContent, lines.size];
});
"""


def test_the_decision_view_puts_the_actions_first_with_readable_parameters(
        browser: Browser, site: Site, shots: Path) -> None:
    open_decision(browser, site, "PR-8")  # a denial: the reasons column is full
    assert top(browser, "#actions") < top(browser, "#fired") < top(browser, "#facts")
    for width, least in zip(WIDTHS, (360, 450), strict=True):
        browser.resize(width, 1000)
        assert browser.run("return window.innerWidth") == width
        widths = browser.run("return [...document.querySelectorAll('#actions td.params')]"
                             ".map((td) => td.getBoundingClientRect().width)")
        assert widths and min(widths) >= least, (width, widths)
        # the actions table starts within the first screen, above every fact card
        assert top(browser, "#actions table") < 300
        values = browser.run(SHORT_VALUES_ON_ONE_LINE)
        short = [(text, lines) for text, lines in values if len(text) <= 30 and " " not in text]
        assert short and all(lines == 1 for _, lines in short), short
        assert ["Acme Shell Corp", 1] in values
        browser.screenshot_page(shots / f"decision-{width}.png", width)


STATUS_LOOK = """
const look = (status) => {
  const badge = statusBadge(status);
  document.body.append(badge);
  const style = getComputedStyle(badge);
  const seen = [badge.className, style.backgroundColor, style.color, style.borderTopColor,
                style.borderTopStyle];
  badge.remove();
  return seen;
};
return Object.fromEntries(arguments[0].map((status) => [status, look(status)]));
"""


def test_every_status_has_a_colour_of_its_own(browser: Browser, site: Site) -> None:
    statuses = DecisionActionSchema().fields["status"].metadata["enum"]
    assert {"queued", "waiting", "dispatched", "failed", "denied", "held", "blocked",
            "withdrawn", "dry_run", "recorded"} <= set(statuses)
    browser.get(f"{site.url}/explorer")
    browser.wait_for("#lookup")
    looks = browser.run(STATUS_LOOK, [*statuses, "no-such-status"])
    unknown = looks.pop("no-such-status")
    assert unknown[0].endswith("status-unknown")
    for status, (class_name, *colours) in looks.items():
        assert class_name.endswith(f"status-{status}"), class_name
        assert colours != unknown[1:], f"{status} has no colour of its own"
    distinct = {tuple(colours) for _, *colours in looks.values()}
    assert len(distinct) == len(looks), looks
    # failed must not look like anything that was sent or allowed
    assert looks["failed"][1] not in (looks["dispatched"][1], looks["queued"][1])


def test_an_operator_re_drives_a_failed_action_from_the_explorer(
        browser: Browser, secured: Secured, shots: Path) -> None:
    order = "#actions tr[data-action='issue_purchase_order']"
    look_up(browser, secured, decision=secured.decision_id, key=key_of("analyst"))
    browser.wait_for(f"{order} .badge.status-failed")
    assert "attempts: 1" in browser.text(f"{order} td.status")
    assert not browser.elements(".redrive-button")  # the analyst has no operator grant
    assert browser.elements("#replay-this")  # ...but may replay

    look_up(browser, secured, decision=secured.decision_id, key=key_of("operator"))
    browser.wait_for(f"{order} .redrive-button")
    assert not browser.elements("#replay-this")  # the operator may not replay
    assert len(browser.elements(".redrive-button")) == 1  # only the failed action has one
    for width in WIDTHS:
        browser.resize(width, 1000)
        browser.screenshot_page(shots / f"failed-{width}.png", width)
    browser.resize(1280, 1000)
    browser.click(f"{order} .redrive-button")
    browser.wait_for(f"{order} .badge.status-queued")
    assert not browser.elements(".redrive-button")


def test_a_decision_links_to_its_subject_its_versions_and_its_replay(
        browser: Browser, site: Site, shots: Path) -> None:
    open_decision(browser, site, "PR-7")
    decision_id = browser.text("#summary h2 .mono")
    browser.click("#subject-link")
    browser.wait_for("#decisions a.decision")
    assert decision_id in browser.texts("#decisions a.decision")
    browser.run("history.back()")

    browser.click("#ruleset-link")
    browser.wait_for("#ruleset-source pre")
    assert browser.text("#ruleset-source pre") == (
        ROOT / "rules" / "procurement.yaml").read_text().strip()
    assert "The active version" in browser.text("#ruleset-source")
    browser.run("history.back()")

    browser.click("#policy-link")
    browser.click(f"#policy-source details[data-path='{LIMITS}'] summary")
    shown = browser.text(f"#policy-source details[data-path='{LIMITS}'] pre")
    assert shown == (ROOT / "rego" / LIMITS).read_text().strip()
    assert not browser.elements("#policy-source details[data-path$='_test.rego']")
    for width in WIDTHS:
        browser.resize(width, 1000)
        browser.screenshot(shots / f"policies-{width}.png")
    browser.resize(1280, 1000)
    browser.click("#back-link")

    browser.click("#replay-this")
    browser.wait_for("#prefilled:not([hidden])")
    assert browser.run("return document.getElementById('decision-ids').value") == decision_id
    browser.wait_for("#reset-rules:not([hidden])")
    assert browser.run("return document.getElementById('candidate-ruleset').value") == (
        "procurement")
    assert browser.run("return document.getElementById('candidate-rules').value") == (
        ROOT / "rules" / "procurement.yaml").read_text()


def test_the_why_not_panel_offers_the_rules_that_did_not_fire(
        browser: Browser, site: Site, shots: Path) -> None:
    open_decision(browser, site, "PR-7")
    browser.wait_for("#why-not-rule option")
    offered = browser.texts("#why-not-rule option")
    assert "budget_shortfall" in offered and "legal_review_required" in offered
    assert not {"budget_confirmed", "issue_purchase_order"} & set(offered)
    browser.run("document.getElementById('why-not-rule').value = 'budget_shortfall'")
    browser.click("#why-not-ask")
    if site.serves("/v1/decisions/<decision_id>/why-not"):
        browser.wait_for("#why-not-answer .explanation")
        assert browser.text("#why-not-answer .explanation")
        steps = browser.texts("#why-not-answer tr[data-step] td:first-child")
        assert steps and not [step for step in steps if step.startswith("req: req:")]
        assert browser.elements("#why-not-answer tr[data-step='failed']")
        for width in WIDTHS:
            browser.resize(width, 1000)
            browser.screenshot_page(shots / f"why-not-{width}.png", width)
        browser.resize(1280, 1000)
    else:  # a service without the endpoint: the panel says so
        assert "no why-not endpoint" in browser.text("#why-not-missing")


def candidate_policy(browser: Browser, site: Site, path: str, text: str) -> None:
    """Edit a live policy file in place, or where the service cannot hand out its live
    files (no GET /v1/policies/sources), name the file and give its text."""
    if site.serves("/v1/policies/sources"):
        browser.click(f"details.policy-file[data-path='{path}'] summary")
        area = f"textarea[data-path='{path}']"
        browser.clear(area)
        browser.type(area, text)
    else:
        assert "no GET /v1/policies/sources" in browser.text("#policies-unavailable")
        browser.type(".extra-policy .policy-path", path)
        browser.type(".extra-policy .policy-text", text)


CHART = """
return [...document.querySelectorAll(arguments[0] + ' .bar-row')].map((row) => ({
  label: row.querySelector('.label-text').textContent,
  note: (row.querySelector('.bar-note') || {}).textContent || null,
  title: row.getAttribute('title'),
  whole: row.querySelector('.label-text').scrollWidth
         <= row.querySelector('.label-text').clientWidth}));
"""


def test_the_replay_page_runs_a_what_if_on_candidate_policies(
        browser: Browser, site: Site, shots: Path) -> None:
    browser.get(f"{site.url}/explorer/replay")
    browser.type("#subject", "PR-7")
    browser.wait_for("#policies-note")
    browser.wait_for(".policy-file, #policies-unavailable")
    candidate_policy(browser, site, LIMITS, limits_data(50000))
    browser.click("#run")
    browser.wait_for("#summary .card")
    cards = dict(reversed(text.split("\n")) for text in browser.texts("#summary .card"))
    assert (cards["decisions"], cards["changed"], cards["verdicts flipped"]) == ("1", "1", "1")
    assert "issue_purchase_order allow→deny" in browser.text("#results tr.result")
    policies = browser.run(CHART, "#chart-policies")
    assert [p["label"] for p in policies] == [LEGAL_REASON], policies  # whole, not cut
    assert policies[0]["note"] == "now given" and LEGAL_REASON in policies[0]["title"]
    for width in WIDTHS:
        browser.resize(width, 1000)
        assert all(row["whole"] for row in browser.run(CHART, "#charts"))
        browser.screenshot_page(shots / f"replay-{width}.png", width)
    browser.resize(1280, 1000)


def test_the_replay_page_edits_the_live_ruleset_and_says_which_rules_changed(
        browser: Browser, site: Site, shots: Path) -> None:
    open_decision(browser, site, "PR-7")
    browser.click("#replay-this")
    browser.wait_for("#reset-rules:not([hidden])")
    assert browser.elements("#rules-changed[hidden]")
    browser.run("""
        const area = document.getElementById('candidate-rules');
        area.value = area.value.replace('level: {in: [critical, high]}', 'level: {in: [high]}')
                               .replace('urgency: {in: [critical, high]}', 'urgency: {in: [high]}');
        area.dispatchEvent(new Event('input'));""")
    assert not browser.elements("#rules-changed[hidden]")
    browser.click("#run")
    browser.wait_for("#summary .card")
    rules = {row["label"]: row["note"] for row in browser.run(CHART, "#chart-rules")}
    assert rules == {"expedite_critical_order": "no longer fires"}
    assert browser.run(CHART, "#chart-policies") == []
    assert "nothing changed" in browser.text("#chart-policies")
    browser.click("#results details summary")
    assert "rules that no longer fire\nexpedite_critical_order" in browser.text(
        "#results details")
    for width in WIDTHS:
        browser.resize(width, 1000)
        browser.screenshot_page(shots / f"replay-rules-{width}.png", width)
    browser.resize(1280, 1000)


def test_the_replay_page_says_what_is_wrong_once_in_plain_words(
        browser: Browser, site: Site, shots: Path) -> None:
    browser.get(f"{site.url}/explorer/replay")
    browser.wait_for("#policies-note")
    browser.click("#run")
    said = browser.text("#report .problem")
    assert len(browser.elements("#report .problem")) == 1
    assert said.count("Say which decisions to replay") == 1
    assert "body" not in said and "decision_ids" not in said

    browser.type("#subject", "PR-7")
    browser.type("#since", "last tuesday")
    browser.click("#run")
    browser.wait_for("#replay-problem")
    said = browser.text("#replay-problem")
    assert said.startswith("The replay could not run")
    assert said.count("Since: ") == 1 and "body" not in said
    assert browser.run("const r = document.getElementById('replay-problem')"
                       ".getBoundingClientRect(); return r.top >= 0 && r.top < innerHeight")
    for width in WIDTHS:
        browser.resize(width, 1000)
        browser.screenshot_page(shots / f"replay-problem-{width}.png", width)
    browser.resize(1280, 1000)


def test_the_html_report_of_the_cli_stands_alone(browser: Browser, site: Site, redis_url: str,
                                                  tmp_path: Path, shots: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DECISION_REDIS_URL", redis_url)
    monkeypatch.setenv("DECISION_RULES_DIR", str(ROOT / "rules"))
    monkeypatch.setenv("DECISION_POLICY_DIR", str(ROOT / "rego"))
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text((ROOT / "rules" / "procurement.yaml").read_text().replace(
        "level: {in: [critical, high]}", "level: {in: [high]}").replace(
        "urgency: {in: [critical, high]}", "urgency: {in: [high]}"))
    # the sample's scenarios, beside the candidate: those of critical orders now fail
    (tmp_path / "candidate_test.yaml").write_text(
        (ROOT / "rules" / "procurement_test.yaml").read_text())
    page, written = tmp_path / "report.html", tmp_path / "report.json"
    result = CliRunner().invoke(main, ["replay", "--since", "2000-01-01", "--rules",
                                       str(candidate), "--html", str(page), "--json",
                                       str(written)])
    assert result.exit_code == 0, result.output
    scenarios = json.loads(written.read_text())["scenarios"]
    assert scenarios["passed"] and scenarios["failed"]
    browser.get(page.as_uri())
    browser.wait_for("#summary .card")
    assert browser.elements("#request")  # the form is there, but hidden
    assert not browser.run("return document.getElementById('request').offsetParent")
    rows = browser.elements("#results tr.result")
    assert len(rows) == 2
    assert [row["note"] for row in browser.run(CHART, "#chart-rules")] == ["no longer fires"]
    assert browser.text("#scenarios h2") == (
        f"The candidate's scenarios: {scenarios['passed']} passed, "
        f"{scenarios['failed']} failed")
    failed = [r["name"] for r in scenarios["results"] if r["outcome"] != "PASS"]
    assert browser.texts("#scenarios li:not([data-outcome='PASS']) strong") == failed
    assert browser.elements("#scenarios li[data-outcome='FAIL'] pre.failures")
    browser.click("#only-changed")
    shown = browser.run("return [...document.querySelectorAll('#results tr.result')]"
                        ".filter(r => !r.hidden).map(r => r.textContent)")
    assert len(shown) == 1 and "\u2212expedite_delivery" in shown[0]  # minus sign
    for width in WIDTHS:
        browser.resize(width, 1000)
        browser.screenshot_page(shots / f"report-{width}.png", width)
    browser.resize(1280, 1000)
