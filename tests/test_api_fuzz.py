"""Generated requests against /openapi.json (schemathesis): whatever a client sends, the
answer is never a 5xx and always what the document promises (status, content type,
headers, body schema). Schema-conforming and schema-violating cases for every operation,
over 1,000 requests in all."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import redis
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis.strategies import SearchStrategy
from schemathesis import GenerationMode
from schemathesis.config._checks import (
    NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES,
    NegativeDataRejectionConfig,
)
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app import create_app
from app.policy.access import hash_key
from app.shared.config import Settings

ROOT = Path(__file__).resolve().parent.parent
KEY = "fuzz-key-0123456789abcdef"
EXAMPLES = 60  # per operation and mode: 13 operations x 2 modes x up to 60
MIN_REQUESTS = 1000
# A replay carries rule files and Rego as text: a schema cannot say they compile, so a
# well-formed request may be refused (422, naming file and line) for what the text says.
SEMANTIC = {"POST /v1/replays": [positive_data_acceptance]}


def strategy(operation: Any, mode: GenerationMode) -> SearchStrategy[schemathesis.Case]:
    cases = operation.as_strategy(generation_mode=mode)
    if operation.label == "POST /v1/decisions" and mode is GenerationMode.POSITIVE:
        return cases.map(on_the_sample_ruleset)  # random names would only meet 404s
    return cases


def on_the_sample_ruleset(case: schemathesis.Case) -> schemathesis.Case:
    """On the sample ruleset; and an inline fact that names a subject names the request's
    (a rule across fields that JSON Schema cannot state: another subject is a 422)."""
    facts = [{**fact, "subject": case.body["subject"]} if "subject" in fact else fact
             for fact in case.body.get("facts", [])]
    case.body = {**case.body, "ruleset": "procurement",
                 **({"facts": facts} if "facts" in case.body else {})}
    return case


def keys_file(tmp_path: Path) -> Path:
    """One key that may do everything, so requests get past access control to the
    validation behind it (and schemathesis checks that requests without it are refused)."""
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [{
        "id": "fuzzer", "sha256": hash_key(KEY), "departments": ["*"], "rulesets": ["*"],
        "grants": ["analyst", "operator"]}]}))
    return path


def exercise(operation: Any, mode: GenerationMode, headers: dict[str, str],
             sent: Counter[str], failures: list[str]) -> None:
    """Up to EXAMPLES generated requests to one operation; what went wrong is collected."""

    @settings(max_examples=EXAMPLES, database=None, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy(operation, mode))
    def one(case: schemathesis.Case) -> None:
        try:
            response = case.call_and_validate(
                headers=headers, excluded_checks=SEMANTIC.get(operation.label, []))
        except Exception as exc:
            failures.append(f"{case.method} {case.formatted_path} ({mode}): {str(exc)[:600]}")
            return
        sent[f"{case.method} {case.path} {response.status_code}"] += 1

    try:
        one()
    except Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE  # nothing to violate: the operation has no input


def test_generated_requests_get_documented_answers(redis_url: str, redis_client: redis.Redis,
                                                   tmp_path: Path) -> None:
    app = create_app(Settings.load(environ={}, overrides={
        "redis_url": redis_url, "data_dir": tmp_path, "rules_dir": ROOT / "rules",
        "policy_dir": ROOT / "rego", "background_worker": False, "max_batch": 50,
        "api_keys_file": keys_file(tmp_path)}))
    auth = {"Authorization": f"Bearer {KEY}"}
    app.test_client().post("/v1/facts", headers=auth, json={
        "subject": "PR-1", "type": "purchase_request", "department": "procurement",
        "data": {"request_id": "PR-1", "amount": 5}})
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    schema.config.checks.negative_data_rejection = NegativeDataRejectionConfig(
        expected_statuses=[*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "413"])  # body too large
    sent: Counter[str] = Counter()
    failures: list[str] = []
    try:
        for result in schema.get_all_operations():
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                exercise(result.ok(), mode, auth, sent, failures)
    finally:
        app.extensions["decision_service"].close()
    assert not failures, "\n\n".join(failures[:10])
    assert not [line for line in sent if line[-3] == "5"]
    assert sum(sent.values()) >= MIN_REQUESTS, sent
    assert sent["POST /v1/decisions 201"] and sent["POST /v1/facts 201"], sent
