"""The README's "Try it", run as written: every curl command of the section in order, against
the service as `make run` configures it (config/executors.local.yaml, the background
worker deciding what the facts trigger) and the echo executor, checking what the README
says happens. A README that no longer works, or says what does not happen, fails here."""

from __future__ import annotations

import json
import re
import shlex
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from werkzeug.serving import make_server

from app import create_app
from app.dispatch.echo import echo_server
from app.dispatch.executors import Executors
from app.rules.loader import load_ruleset_file
from app.rules.model import Propose
from app.shared.config import Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
LOCAL_EXECUTORS = ROOT / "config" / "executors.local.yaml"
DOCUMENTED = "http://127.0.0.1:8080"


def try_it() -> str:
    text = README.read_text()
    return text[text.index("## Try it\n"):text.index("\n## ", text.index("## Try it\n") + 1)]


def blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def commands(section: str) -> list[list[str]]:
    """Each curl command of the section's sh blocks, split as the shell would."""
    found = []
    for block in blocks(section, "sh"):
        pending = ""
        for line in block.replace("\\\n", " ").splitlines():
            pending += line + "\n"
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:  # a quote still open: the command goes on
                continue
            pending = ""
            if words and words[0] == "curl":
                found.append(words)
    return found


def curl(args: list[str], base: str) -> requests.Response:
    """What `curl` would send for these arguments (the ones the README uses)."""
    method, headers, body, url = "GET", {}, None, None
    words = iter(args[1:])
    for word in words:
        if word == "-X":
            method = next(words)
        elif word == "-H":
            name, _, value = next(words).partition(":")
            headers[name.strip()] = value.strip()
        elif word == "-d":
            body = next(words)
            method = "POST" if method == "GET" else method
        elif word in ("-o", "-w"):
            next(words)
        elif word.startswith("-"):
            assert word == "-s", f"the test does not know curl's {word}"
        else:
            url = word
    assert url is not None and url.startswith(DOCUMENTED), url
    return requests.request(method, base + url[len(DOCUMENTED):], headers=headers,
                            data=body, timeout=10)


class Printed:
    """What the echo executor printed."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def until(self, count: int, seconds: float = 15.0) -> list[str]:
        deadline = time.monotonic() + seconds
        while len(self.lines) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.lines)


@pytest.fixture
def running(redis_url: str, redis_client: redis.Redis,
            tmp_path: Path) -> Iterator[tuple[str, Printed]]:
    printed = Printed()
    echo = echo_server("127.0.0.1", 0, printed)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    executors = tmp_path / "executors.yaml"  # the local file, on the echo executor's port
    executors.write_text(LOCAL_EXECUTORS.read_text().replace(
        "127.0.0.1:9000", f"127.0.0.1:{echo.server_address[1]}"))
    app = create_app(Settings.load(environ={}, overrides={
        "redis_url": redis_url, "data_dir": tmp_path, "rules_dir": ROOT / "rules",
        "policy_dir": ROOT / "rego", "executors_file": executors,
        "worker_poll_seconds": 0.05}))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", printed
    server.shutdown()
    app.extensions["decision_service"].close()
    echo.shutdown()
    echo.server_close()


def without_ids(line: str) -> str:
    return re.sub(r"\(decision [0-9a-f-]{36}\)", "(decision <id>)", line)


def test_try_it_works_word_for_word(running: tuple[str, Printed]) -> None:
    base, printed = running
    section = try_it()
    assert "make run" in section and ".venv/bin/decision-service echo-executor" in section
    shown = [block.strip().splitlines() for block in blocks(section, "text")]
    steps = iter(commands(section))
    answer = lambda: curl(next(steps), base)  # noqa: E731 - one README command after another

    # Four departments report; the trigger decides; the order, then the expedite, arrive.
    stored = answer()
    assert stored.status_code == 201 and len(stored.json()["facts"]) == 4
    assert [without_ids(line) for line in printed.until(2)] == shown[0]

    first = answer().json()["decisions"]
    assert len(first) == 1
    assert {a["type"]: a["status"] for a in first[0]["actions"]} == {
        "issue_purchase_order": "dispatched", "expedite_delivery": "dispatched"}
    assert all(a["delivery"]["attempts"] == 1 for a in first[0]["actions"])

    # The same person requests and approves: denied, the expedite blocked, the requester told.
    assert answer().status_code == 201
    assert [without_ids(line) for line in printed.until(3)[2:]] == shown[1]
    time.sleep(0.5)  # nothing else arrives
    assert len(printed.lines) == 3
    [refused] = answer().json()["decisions"]
    actions = {a["type"]: a for a in refused["actions"]}
    reason = ("alice requested PR-1002 and may not also approve it (segregation of duties).")
    assert refused["rounds"] == 3
    assert (actions["issue_purchase_order"]["round"], actions["issue_purchase_order"]["status"],
            actions["issue_purchase_order"]["verdict"]["reasons"]) == (1, "denied", [reason])
    expedite = actions["expedite_delivery"]
    assert (expedite["round"], expedite["requires"], expedite["status"]) == (
        1, ["issue_purchase_order"], "blocked")
    assert expedite["delivery"]["blocked"] == (
        f"it requires issue_purchase_order ({actions['issue_purchase_order']['id']}), which "
        f"the policy denied: {reason}")
    assert (actions["notify_requester"]["round"], actions["notify_requester"]["status"]) == (
        2, "dispatched")
    assert "null" not in json.dumps(refused["actions"])

    # Asked again: the same order, recorded, not sent twice.
    again = answer()
    assert again.status_code == 201
    for action in again.json()["actions"]:
        assert action["status"] == "recorded"
        assert action["delivery"]["not_sent"] == (
            f"already queued for PR-1001 by decision {first[0]['decision_id']}")

    pool = answer().json()
    assert {f["department"] for f in pool["facts"]} == {"procurement", "finance", "risk",
                                                          "operations"}
    assert answer().status_code == 204
    bad = answer()
    assert bad.status_code == 422
    assert bad.json()["detail"] == "type: must not be empty (and 1 more)"
    assert bad.json()["invalid-params"] == [
        {"name": "type", "reason": "must not be empty"},
        {"name": "data", "reason": "Not a valid mapping type."}]
    assert next(steps, None) is None  # every command of the section ran
    assert len(printed.lines) == 3


def test_the_local_executors_take_every_action_the_sample_rules_propose() -> None:
    executors = Executors.load(LOCAL_EXECUTORS)
    sample = load_ruleset_file(ROOT / "rules" / "procurement.yaml")
    proposed = {step.action for rule in sample.rules for step in rule.then
                if isinstance(step, Propose)}
    assert proposed and all(action in executors for action in proposed)


def test_the_echo_executor_prints_what_it_receives_and_refuses_what_is_not_json() -> None:
    printed = Printed()
    echo = echo_server("127.0.0.1", 0, printed)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{echo.server_address[1]}/x"
    try:
        event: dict[str, Any] = {"subject": "S-1", "data": {
            "decision_id": "d-1", "action": {"type": "ship", "params": {"n": 1}}}}
        assert requests.post(url, json=event, timeout=5).status_code == 200
        assert requests.post(url, data=b"{", timeout=5).status_code == 400
        assert requests.post(url, data=b"", timeout=5).status_code == 400
        assert printed.lines == ['ship for S-1 (decision d-1): {"n": 1}']
    finally:
        echo.shutdown()
        echo.server_close()
