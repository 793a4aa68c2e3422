"""One way to give a date and time, in the API and on the command line: YYYY-MM-DD (midnight
UTC) or RFC 3339 / ISO 8601 with an offset; anything else is refused, saying what is wanted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from flask.testing import FlaskClient

from app.cli import main
from app.shared.schemas import epoch_ms, parse_moment

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
    ("2026-11-01T09:30:00Z", datetime(2026, 11, 1, 9, 30, tzinfo=UTC)),
    ("2026-11-01t09:30:00z", datetime(2026, 11, 1, 9, 30, tzinfo=UTC)),
    ("2026-11-01T09:30:00+01:00", datetime(2026, 11, 1, 8, 30, tzinfo=UTC)),
    ("2026-11-01 09:30-0230", datetime(2026, 11, 1, 12, 0, tzinfo=UTC)),
    ("2026-11-01T09:30:00.123456789+00:00", datetime(2026, 11, 1, 9, 30, 0, 123456,
                                                     tzinfo=UTC)),
    (" 2026-11-01T00:00:00+05 ", datetime(2026, 10, 31, 19, tzinfo=UTC)),
])
def test_accepted_moments(text: str, expected: datetime) -> None:
    assert parse_moment(text) == expected
    assert parse_moment(text).utcoffset() is not None


@pytest.mark.parametrize(("text", "says"), [
    ("2026-11-01T09:30:00", "has no offset: add Z for UTC or +hh:mm (e.g. "
                            "2026-11-01T09:30:00Z), or give the date alone"),
    ("yesterday", "is not a moment: give YYYY-MM-DD (midnight UTC) or a date and time"),
    ("20261101", "is not a moment"),
    ("2026-11", "is not a moment"),
    ("2026-02-30", "is not a valid moment: day is out of range for month"),
    ("2026-11-01T24:00:00Z", "is not a valid moment: hour must be in 0..23"),
    ("2026-11-01T09:30:00+24:00", "its offset is out of range"),
    ("\u0662\u0660\u0662\u0666-11-01", "is not a moment"),  # digits of another script
    ("", "is not a moment"),
])
def test_refused_moments_say_why(text: str, says: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_moment(text)
    assert says in str(refused.value)


def test_milliseconds_are_exact_in_any_year() -> None:
    assert epoch_ms(parse_moment("1970-01-01T00:00:00.001Z")) == 1
    assert epoch_ms(parse_moment("2026-11-01")) == 1_793_491_200_000
    assert epoch_ms(parse_moment("0001-01-01T00:00:00+23:59")) < 0  # no overflow


# --- the API ----------------------------------------------------------------------------


def _decide(client: FlaskClient, subject: str) -> str:
    response = client.post("/v1/decisions", json={"subject": subject, "ruleset": "procurement"})
    assert response.status_code == 201, response.get_json()
    decision_id: str = response.get_json()["decision_id"]
    return decision_id


def test_replays_take_a_date_or_a_moment_with_offset(client: FlaskClient) -> None:
    decision_id = _decide(client, "PR-1")
    today = datetime.now(UTC).date()
    for since in (str(today), f"{today}T00:00:00Z", f"{today}T00:00:00+00:00"):
        response = client.post("/v1/replays", json={"since": since})
        assert response.status_code == 200, response.get_json()
        assert [r["decision_id"] for r in response.get_json()["results"]] == [decision_id]
    tomorrow = str(today + timedelta(days=1))
    assert client.post("/v1/replays", json={"since": tomorrow}).get_json()["results"] == []
    assert client.post("/v1/replays", json={"until": tomorrow}).get_json()["summary"][
        "decisions"] == 1

    for bad, says in [(f"{today}T00:00:00", "has no offset"), ("soon", "is not a moment"),
                      (20261101, "must be text")]:
        refused = client.post("/v1/replays", json={"since": bad})
        assert refused.status_code == 422
        assert refused.mimetype == "application/problem+json"
        [param] = refused.get_json()["invalid-params"]
        assert param["name"] == "since" and says in param["reason"], param


def test_a_subjects_decisions_between_two_moments(client: FlaskClient) -> None:
    first = _decide(client, "PR-1")
    second = _decide(client, "PR-1")
    today = datetime.now(UTC).date()
    yesterday, tomorrow = today - timedelta(days=1), today + timedelta(days=1)

    def ids(**query: str) -> list[str]:
        response = client.get("/v1/decisions", query_string={"subject": "PR-1", **query})
        assert response.status_code == 200, response.get_json()
        return [d["decision_id"] for d in response.get_json()["decisions"]]

    assert ids(since=str(yesterday)) == [second, first]  # newest first
    assert ids(since=str(yesterday), until=f"{tomorrow}T00:00:00+01:00") == [second, first]
    assert ids(since=str(tomorrow)) == []
    assert ids(until=str(yesterday)) == []
    assert ids(since=str(yesterday), limit="1") == [second]
    refused = client.get("/v1/decisions", query_string={"subject": "PR-1",
                                                         "since": f"{today}T10:00"})
    assert refused.status_code == 422
    assert "has no offset" in refused.get_json()["invalid-params"][0]["reason"]


def test_the_api_document_says_both_forms(client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    since = document["components"]["schemas"]["ReplayIn"]["properties"]["since"]
    assert since["type"] == "string"
    assert since["anyOf"] == [{"format": "date"}, {"format": "date-time"}]


# --- the command line -------------------------------------------------------------------


def test_the_cli_reads_moments_as_the_api_does(redis_url: str, redis_client: redis.Redis,
                                               tmp_path: Path) -> None:
    env = {"DECISION_REDIS_URL": redis_url, "DECISION_RULES_DIR": str(ROOT / "rules"),
           "DECISION_POLICY_DIR": str(ROOT / "rego"), "DECISION_DATA_DIR": str(tmp_path)}
    for since in ("2026-11-01", "2026-11-01T00:00:00Z", "2026-11-01T01:00:00+01:00"):
        result = CliRunner().invoke(main, ["replay", "--since", since, "--until",
                                           "2026-11-02"], env=env)
        assert "Invalid value" not in result.output, result.output
        assert "nothing to replay" in result.output  # parsed, and no decision in that range
    refused = CliRunner().invoke(main, ["replay", "--since", "2026-11-01T00:00:00"], env=env)
    assert refused.exit_code == 2
    assert "Invalid value for '--since'" in refused.output
    assert "has no offset: add Z for UTC" in refused.output
    garbage = CliRunner().invoke(main, ["replay", "--until", "next week"], env=env)
    assert garbage.exit_code == 2
    assert "is not a moment: give YYYY-MM-DD (midnight UTC)" in garbage.output
