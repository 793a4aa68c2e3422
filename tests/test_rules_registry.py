"""Versions and reload: new versions switch atomically, bad files leave the last good one."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from rules_support import SAMPLE_RULES, fact, purchase_case

from app.rules import RulesetRegistry, evaluate
from app.rules.loader import version_of
from app.shared.errors import UnknownRuleset

SIMPLE = """
ruleset: simple
rules:
  - name: big
    when: {a: {type: order, amount: {">": THRESHOLD}}}
    then: [{propose: {action: review, params: {threshold: THRESHOLD}}}]
"""


def simple(threshold: int) -> str:
    return SIMPLE.replace("THRESHOLD", str(threshold))


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    shutil.copy(SAMPLE_RULES, tmp_path / "procurement.yaml")
    (tmp_path / "simple.yaml").write_text(simple(100))
    (tmp_path / "notes.txt").write_text("not a rule file")
    return tmp_path


def registry_of(directory: Path) -> RulesetRegistry:
    registry = RulesetRegistry(directory, check_interval_seconds=0)
    registry.reload()
    return registry


def test_every_rule_file_in_the_directory_is_loaded(rules_dir: Path) -> None:
    registry = registry_of(rules_dir)
    assert [r.name for r in registry.active()] == ["procurement", "simple"]
    assert registry.get("simple").version == version_of(simple(100))
    assert registry.problems == []


def test_an_unknown_ruleset_is_named_with_the_loaded_ones(rules_dir: Path) -> None:
    with pytest.raises(UnknownRuleset, match="procurement, simple"):
        registry_of(rules_dir).get("nope")


def test_a_changed_file_becomes_a_new_version(rules_dir: Path) -> None:
    registry = registry_of(rules_dir)
    old = registry.get("simple")
    (rules_dir / "simple.yaml").write_text(simple(500))
    report = registry.reload(force=True)
    new = registry.get("simple")
    assert report.loaded == [new.engine_name]
    assert new.version != old.version
    assert evaluate(new, [fact("o", "order", amount=300)]).actions == []
    # the old version still evaluates, for decisions in flight and for replay
    assert len(evaluate(old, [fact("o", "order", amount=300)]).actions) == 1
    assert registry.get("simple", old.version) is old


def test_a_broken_file_leaves_the_previous_version_active(rules_dir: Path) -> None:
    registry = registry_of(rules_dir)
    good = registry.get("simple")
    (rules_dir / "simple.yaml").write_text(simple(100).replace('">"', '"~"'))
    report = registry.reload(force=True)
    assert registry.get("simple") is good
    assert report.loaded == []
    [problem] = registry.problems
    assert problem.file.endswith("simple.yaml")
    assert problem.rule == "big"
    assert "unknown operator '~'" in problem.message


def test_a_new_broken_file_loads_nothing_and_says_why(rules_dir: Path) -> None:
    (rules_dir / "broken.yaml").write_text("ruleset: broken\nrules: [}\n")
    registry = registry_of(rules_dir)
    assert "broken" not in [r.name for r in registry.active()]
    assert registry.problems[0].file.endswith("broken.yaml")


def test_a_removed_file_removes_its_ruleset(rules_dir: Path) -> None:
    registry = registry_of(rules_dir)
    (rules_dir / "simple.yaml").unlink()
    assert registry.reload().removed == ["simple"]
    with pytest.raises(UnknownRuleset):
        registry.get("simple")


def test_two_files_with_one_ruleset_name_keep_the_first(rules_dir: Path) -> None:
    (rules_dir / "z_simple_again.yaml").write_text(simple(7))
    registry = registry_of(rules_dir)
    assert registry.get("simple").version == version_of(simple(100))
    assert "already defined" in registry.problems[0].message


def test_changes_are_picked_up_on_use_after_the_check_interval(rules_dir: Path) -> None:
    now = [0.0]
    registry = RulesetRegistry(rules_dir, check_interval_seconds=2, clock=lambda: now[0])
    first = registry.get("simple")
    (rules_dir / "simple.yaml").write_text(simple(900))
    now[0] = 1.0
    assert registry.get("simple") is first  # not checked yet
    now[0] = 2.5
    assert registry.get("simple").version == version_of(simple(900))


def test_a_reload_during_concurrent_evaluations(rules_dir: Path) -> None:
    registry = registry_of(rules_dir)
    versions = {version_of(simple(t)): t for t in (100, 200)}
    errors: list[str] = []
    stop = threading.Event()

    def evaluate_continuously() -> None:
        while not stop.is_set():
            ruleset = registry.get("simple")
            result = evaluate(ruleset, [fact("o", "order", amount=150)])
            threshold = versions[result.version]
            expected = [threshold] if threshold < 150 else []
            if [a.params["threshold"] for a in result.actions] != expected:
                errors.append(f"{result.version}: {result.actions}")
            procurement = evaluate(registry.get("procurement"), purchase_case())
            if [a.type for a in procurement.actions] != ["issue_purchase_order"]:
                errors.append("procurement went wrong during a reload")

    workers = [threading.Thread(target=evaluate_continuously) for _ in range(4)]
    for worker in workers:
        worker.start()
    seen = set()
    for round_ in range(40):
        (rules_dir / "simple.yaml").write_text(simple(200 if round_ % 2 else 100))
        registry.reload(force=True)
        seen.add(registry.get("simple").version)
    stop.set()
    for worker in workers:
        worker.join()
    assert errors == []
    assert seen == set(versions)


def test_the_api_lists_active_rulesets_and_rejected_files(tmp_path: Path,
                                                          redis_url: str) -> None:
    from app import create_app
    from app.shared.config import Settings

    shutil.copy(SAMPLE_RULES, tmp_path / "procurement.yaml")
    (tmp_path / "broken.yaml").write_text("ruleset: broken\nrules: 5\n")
    app = create_app(Settings.load(environ={}, overrides={
        "redis_url": redis_url, "rules_dir": tmp_path, "data_dir": tmp_path}))
    body = app.test_client().get("/v1/rulesets").get_json()
    [procurement] = body["rulesets"]
    assert procurement["name"] == "procurement"
    assert procurement["version"] == version_of(SAMPLE_RULES.read_text())
    assert "approve_purchase" in procurement["rules"]
    assert body["problems"][0]["file"] == "broken.yaml"
    app.extensions["decision_service"].close()


def test_rejected_files_name_no_server_path_in_their_messages(tmp_path: Path, redis_url: str,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """A second file of one ruleset name, and a file that cannot be read: the problems
    name the other file, and say why, as a path in the rules directory."""
    from app import create_app
    from app.shared.config import Settings

    shutil.copy(SAMPLE_RULES, tmp_path / "procurement.yaml")
    shutil.copy(SAMPLE_RULES, tmp_path / "z_again.yaml")
    (tmp_path / "locked.yaml").write_text("ruleset: locked\n")
    read_text = Path.read_text

    def unreadable(path: Path, *args: object, **kwargs: object) -> str:
        if path.name == "locked.yaml":
            raise PermissionError(13, "Permission denied", str(path))
        return read_text(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", unreadable)
    app = create_app(Settings.load(environ={}, overrides={
        "redis_url": redis_url, "rules_dir": tmp_path, "data_dir": tmp_path}))
    problems = app.test_client().get("/v1/rulesets").get_json()["problems"]
    assert {p["file"] for p in problems} == {"locked.yaml", "z_again.yaml"}
    assert not [p for p in problems if str(tmp_path) in p["message"]], problems
    assert any("already defined in procurement.yaml" in p["message"] for p in problems)
    assert any("Permission denied" in p["message"] for p in problems)
    app.extensions["decision_service"].close()
