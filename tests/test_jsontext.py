"""The hot-path JSON codec reads and writes whatever the standard library does."""

from __future__ import annotations

import json

import pytest

from app.shared import jsontext


@pytest.mark.parametrize("value", [
    {"vendor": "Zürich AG", "amount": 12.5, "ok": True, "none": None, "list": [1, "a"]},
    {"half": "a\ud800b"},  # a lone surrogate: orjson refuses it, json escapes it
    {"big": 2**70},  # past 64 bits: orjson refuses it
])
def test_round_trips_like_the_standard_library(value: dict[str, object]) -> None:
    text = jsontext.dumps(value)
    assert jsontext.loads(text) == value
    assert json.loads(text) == value


def test_reads_what_only_the_standard_library_reads_and_refuses_what_is_not_json() -> None:
    assert jsontext.loads('{"x": "\\ud800"}') == {"x": "\ud800"}
    with pytest.raises(ValueError, match="Expecting"):
        jsontext.loads('{"x": ')


def test_non_string_keys_become_strings_as_in_json() -> None:
    assert jsontext.loads(jsontext.dumps({1: "a"})) == json.loads(json.dumps({1: "a"}))
