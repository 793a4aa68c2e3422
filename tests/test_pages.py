"""The explorer and replay pages, as a person sees them: headless Chromium over real HTTP."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from test_replay import case, record
from webdriver import MISSING, Browser
from werkzeug.serving import make_server

from app import create_app
from app.cli import main
from app.config import Settings

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = Browser()
    yield chromium
    chromium.quit()


@pytest.fixture
def site(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Iterator[str]:
    app = create_app(Settings.load(environ={}, overrides={
        "redis_url": redis_url, "data_dir": tmp_path, "rules_dir": ROOT / "rules",
        "policy_dir": ROOT / "rego", "background_worker": False}))
    client = app.test_client()
    record(client, "PR-7", case("PR-7", amount=70000, urgency="critical"))
    record(client, "PR-8", case("PR-8", vendor="Acme Shell Corp"))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    app.extensions["decision_service"].close()


def test_the_explorer_shows_a_subject_and_how_its_decision_was_taken(
        browser: Browser, site: str, tmp_path: Path) -> None:
    browser.get(f"{site}/explorer?subject=PR-7")
    browser.wait_for("#decisions a.decision")
    departments = [e.split(" (")[0] for e in browser.texts("#facts .dept h4")]
    assert departments == ["finance", "operations", "procurement", "risk"]
    finance = browser.text("#facts [data-department='finance'] .fact")
    assert "available\n200000" in finance and "[object" not in finance

    browser.click("#decisions a.decision")
    browser.wait_for("#fired li")
    assert browser.texts("#fired li strong") == [
        "budget_confirmed", "risk_acceptable", "legal_not_needed", "approve_purchase",
        "issue_purchase_order", "expedite_critical_order"]
    assert "rules" in [e.split(" (")[0] for e in browser.texts("#facts .dept h4")]
    first = browser.texts("#fired li")[0]
    assert first == ("budget_confirmed matched req=purchase_request (procurement), "
                     "bud=budget_check (finance)")
    assert "[object" not in browser.text("main")
    rows = browser.texts("#actions tr[data-action]")
    assert rows[0].startswith("issue_purchase_order") and "allow" in rows[0]
    assert "recorded" in rows[0]
    browser.screenshot(tmp_path / "explorer.png")


def test_the_explorer_shows_a_denial_with_its_reason(browser: Browser, site: str) -> None:
    browser.get(f"{site}/explorer?subject=PR-8")
    browser.click("#decisions a.decision")
    browser.wait_for("#actions tr[data-action='issue_purchase_order'] li.reason")
    reasons = browser.texts("#actions tr[data-action='issue_purchase_order'] li.reason")
    assert reasons == ["Vendor Acme Shell Corp is on the EU consolidated sanctions list "
                       "(reference EU-2024-113): no order may be placed."]
    assert browser.text("#actions tr[data-action='issue_purchase_order'] .badge") == "deny"


def test_the_explorer_says_what_went_wrong(browser: Browser, site: str) -> None:
    browser.get(f"{site}/explorer?decision=no-such-decision")
    browser.wait_for("main .error")
    assert "no decision with id" in browser.text("main .error")


def test_the_replay_page_runs_a_what_if_and_shows_the_report(
        browser: Browser, site: str, tmp_path: Path) -> None:
    browser.get(f"{site}/explorer/replay")
    browser.type("#subject", "PR-7")
    browser.type("#candidate-policy-path", "decision/limits/data.json")
    browser.type("#candidate-policy", '{"currency": "EUR", "legal_review_threshold": 50000}')
    browser.click("#run")
    browser.wait_for("#summary .card")
    cards = dict(reversed(text.split("\n")) for text in browser.texts("#summary .card"))
    assert (cards["decisions"], cards["changed"], cards["verdicts flipped"]) == ("1", "1", "1")
    assert browser.elements("#charts svg.chart rect")
    assert "issue_purchase_order allow→deny" in browser.text("#results tr.result")
    browser.screenshot(tmp_path / "replay.png")


def test_the_html_report_of_the_cli_stands_alone(browser: Browser, site: str, redis_url: str,
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DECISION_REDIS_URL", redis_url)
    monkeypatch.setenv("DECISION_RULES_DIR", str(ROOT / "rules"))
    monkeypatch.setenv("DECISION_POLICY_DIR", str(ROOT / "rego"))
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text((ROOT / "rules" / "procurement.yaml").read_text().replace(
        "level: {in: [critical, high]}", "level: {in: [high]}").replace(
        "urgency: {in: [critical, high]}", "urgency: {in: [high]}"))
    page = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["replay", "--since", "2000-01-01", "--rules",
                                       str(candidate), "--html", str(page)])
    assert result.exit_code == 0, result.output
    browser.get(page.as_uri())
    browser.wait_for("#summary .card")
    assert browser.elements("#request")  # the form is there, but hidden
    assert not browser.run("return document.getElementById('request').offsetParent")
    rows = browser.elements("#results tr.result")
    assert len(rows) == 2
    browser.click("#only-changed")
    shown = browser.run("return [...document.querySelectorAll('#results tr.result')]"
                        ".filter(r => !r.hidden).map(r => r.textContent)")
    assert len(shown) == 1 and "\u2212expedite_delivery" in shown[0]  # minus sign
    browser.screenshot(tmp_path / "report.png")
