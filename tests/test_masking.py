"""Masking sensitive fact fields: hidden in the decision record as stored, returned,
exported and logged; the fact pool, the rules, the policies and the executors still see
the real values."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import redis
from executor_server import Executor
from test_decisions import AppFactory, case, executors_file, make_app  # noqa: F401

from app.decisions.masking import MASK, Masking
from app.shared import keys
from app.shared.logs import JsonFormatter


def test_masking_nothing_leaves_the_record_as_it_is() -> None:
    record = {"facts": [{"id": "f", "type": "t", "data": {"iban": "DE00"}}],
              "derived_facts": [], "actions": []}
    assert Masking(()).record(record) is record
    assert Masking(("other",)).record(record) is record


def test_a_field_is_masked_everywhere_or_for_one_type() -> None:
    record = {"facts": [{"id": "a", "type": "vendor", "data": {"iban": "DE1", "name": "X"}},
                        {"id": "b", "type": "budget", "data": {"iban": "DE2", "cc": "7"}}],
              "derived_facts": [{"id": "d", "type": "budget", "data": {"cc": "7"}}],
              "actions": [{"id": "1", "params": {"cc": "7", "iban": "DE1"}}]}
    masked = Masking(("budget.cc", "iban")).record(record)
    assert masked["facts"][0]["data"] == {"iban": MASK, "name": "X"}
    assert masked["facts"][1]["data"] == {"iban": MASK, "cc": MASK}
    assert masked["derived_facts"][0]["data"] == {"cc": MASK}
    # action parameters carry no fact type: a name masked for any type is masked in them,
    # or a rule copying budget.cc into an action would show what the record hides
    assert masked["actions"][0]["params"] == {"cc": MASK, "iban": MASK}
    assert masked["masked"] == ["facts.a.iban", "facts.b.cc", "facts.b.iban",
                                "derived_facts.d.cc", "actions.1.params.cc",
                                "actions.1.params.iban"]
    assert record["facts"][0]["data"]["iban"] == "DE1"  # the input is not changed


def test_decision_records_hide_masked_fields_but_executors_get_them(
        make_app: AppFactory, tmp_path: Path, redis_client: redis.Redis,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    executor = Executor()
    try:
        app = make_app(mask_fields=("vendor", "budget_check.cost_center"),
                       executors_file=executors_file(tmp_path, executor.url))
        client = app.test_client()
        client.post("/v1/facts", json={"facts": case(urgency="normal", vendor="Initech")})
        response = client.post("/v1/decisions",
                               json={"subject": "PR-1", "ruleset": "procurement"})
        assert response.status_code == 201
        decision = response.get_json()
        [order] = [a for a in decision["actions"] if a["type"] == "issue_purchase_order"]
        assert order["params"]["vendor"] == MASK and order["status"] == "queued"
        by_type = {f["type"]: f for f in decision["facts"]}
        assert by_type["purchase_request"]["data"]["vendor"] == MASK
        assert by_type["budget_check"]["data"]["cost_center"] == MASK
        assert by_type["purchase_request"]["data"]["amount"] == 120000  # the rest is kept
        assert f"facts.{by_type['budget_check']['id']}.cost_center" in decision["masked"]
        assert f"actions.{order['id']}.params.vendor" in decision["masked"]

        stored = client.get(f"/v1/decisions/{decision['decision_id']}").get_json()
        assert stored["masked"] == decision["masked"]
        assert "Initech" not in json.dumps(stored)
        raw = redis_client.get(keys.decision_record("PR-1", decision["decision_id"]))
        assert raw is not None and "Initech" not in raw and MASK in raw

        pooled = client.get("/v1/subjects/PR-1/facts").get_json()["facts"]
        assert {f["data"].get("vendor") for f in pooled} >= {"Initech"}  # the pool is intact

        dispatcher = app.extensions["decision_service"].dispatcher
        dispatcher.run_once()
        [delivery] = executor.deliveries
        assert delivery.body["data"]["action"]["params"]["vendor"] == "Initech"
        assert not any("Initech" in JsonFormatter().format(r) for r in caplog.records)
    finally:
        executor.stop()


def test_a_replay_of_a_masked_decision_says_it_ran_on_masked_values(
        make_app: AppFactory) -> None:  # noqa: F811
    client = make_app(mask_fields=("vendor",)).test_client()
    client.post("/v1/facts", json={"facts": case()})
    decision = client.post("/v1/decisions", json={"subject": "PR-1", "ruleset": "procurement",
                                                  "dry_run": True}).get_json()
    report = client.post("/v1/replays",
                         json={"decision_ids": [decision["decision_id"]]}).get_json()
    [result] = report["results"]
    assert result["masked"] == decision["masked"]
    assert result["changed"] is False, json.dumps(result["diff"])
