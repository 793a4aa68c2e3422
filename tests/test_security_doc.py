"""docs/SECURITY.md names, for each line of the threat model, the test that shows it: every
test it names exists, so the page cannot quietly point at nothing."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "SECURITY.md"
# `file.py::name`, or a name after such a reference in the same cell (`, other_name`)
CELL = re.compile(r"`([\w/]+\.(?:py|rego))::(\w+)`((?:, `\w+`)*)")


def _defined(file: str, name: str) -> bool:
    candidates = [ROOT / "tests" / file, ROOT / file, *ROOT.glob(f"rego/**/{file}")]
    pattern = re.compile(rf"^(def {name}\(|{name} if\b)", re.MULTILINE)
    return any(path.is_file() and pattern.search(path.read_text()) for path in candidates)


def test_every_test_the_security_page_names_exists() -> None:
    named = []
    for match in CELL.finditer(PAGE.read_text()):
        file = match.group(1)
        named.append((file, match.group(2)))
        named += [(file, extra) for extra in re.findall(r"`(\w+)`", match.group(3))]
    assert len(named) > 30
    missing = [f"{file}::{name}" for file, name in named if not _defined(file, name)]
    assert not missing, missing
