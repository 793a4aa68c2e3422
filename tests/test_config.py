"""Settings: defaults serve the embedded mode; DECISION_* variables override them."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.shared.config import OPTIONS, Settings
from app.shared.errors import ConfigurationError


def test_defaults_serve_the_embedded_mode() -> None:
    settings = Settings.load(environ={})
    assert settings.redis_url is None
    assert settings.opa_url is None
    assert settings.data_dir == Path("./var")
    assert settings.rules_dir == Path("./rules")
    assert settings.policy_dir == Path("./rego")
    assert settings.policy_path == "decision/governance"
    assert settings.host == "127.0.0.1"


def test_environment_variables_override_defaults() -> None:
    settings = Settings.load(environ={"DECISION_REDIS_URL": "redis://r:6379/0",
                                      "DECISION_MAX_BATCH": "50",
                                      "DECISION_API_KEYS_FILE": "/etc/keys.yaml"})
    assert settings.redis_url == "redis://r:6379/0"
    assert settings.max_batch == 50
    assert settings.api_keys_file == Path("/etc/keys.yaml")


def test_every_setting_is_in_the_readmes_table() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme[readme.index("## Configuration"):readme.index("\n## ", readme.index(
        "## Configuration") + 1)]
    assert [o.env for o in OPTIONS if f"`{o.env}`" not in table] == []


def test_every_documented_name_is_a_setting() -> None:
    names = {option.env for option in OPTIONS}
    assert {"DECISION_REDIS_URL", "DECISION_DATA_DIR", "DECISION_OPA_URL", "DECISION_POLICY_DIR",
            "DECISION_POLICY_PATH", "DECISION_RULES_DIR", "DECISION_EXECUTORS_FILE",
            "DECISION_API_KEYS_FILE"} <= names


@pytest.mark.parametrize(("name", "value"), [
    ("DECISION_PORT", "eighty"), ("DECISION_MAX_BATCH", "0"), ("DECISION_ENV", "staging"),
    ("DECISION_REDIS_TIMEOUT_SECONDS", "-1"),
])
def test_an_invalid_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        Settings.load(environ={name: value})


def test_an_unknown_override_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="colour"):
        Settings.load(environ={}, overrides={"colour": "red"})
