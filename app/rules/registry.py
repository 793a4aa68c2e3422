"""Which version of each ruleset is active, and reloading them from the rules directory.

Reload is a swap: the new version is validated and registered with the engine
first, then the name points to it. An evaluation holds the `Ruleset` it started
with, so a decision in flight finishes on that version. A file that does not
validate leaves the previous version of its ruleset active; its problems are kept
for `problems` (and `GET /v1/rulesets`). Every worker process checks the
directory for changes at most every `check_interval_seconds`, on use.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from app.rules import engine
from app.rules.loader import load_ruleset_file, rule_files
from app.rules.model import Ruleset
from app.rules.ownership import FactOwnership
from app.shared.errors import RuleProblem, RulesetInvalid, UnknownRuleset
from app.shared.watch import ChangeWatch, Signature, signature

log = logging.getLogger(__name__)


@dataclass
class ReloadReport:
    loaded: list[str] = field(default_factory=list)  # "name@version" newly active
    removed: list[str] = field(default_factory=list)
    problems: list[RuleProblem] = field(default_factory=list)


class RulesetRegistry:
    def __init__(self, directory: Path, *, check_interval_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = Path(directory)
        self._watch = ChangeWatch(check_interval_seconds, clock)
        self._lock = threading.Lock()
        self._active: dict[str, Ruleset] = {}
        self._by_file: dict[str, Ruleset] = {}
        self._versions: dict[tuple[str, str], Ruleset] = {}
        self._signature: Signature | None = None
        self._ownership = FactOwnership.of(())
        self.problems: list[RuleProblem] = []

    def _files(self) -> list[Path]:
        try:
            return rule_files(self.directory)
        except OSError:
            return []

    def reload(self, *, force: bool = False) -> ReloadReport:
        """Load what changed in the directory; keep the last good version of what fails."""
        with self._lock:
            files = self._files()
            current = signature(files)
            self._watch.checked()
            if not force and current == self._signature:
                return ReloadReport()
            report = ReloadReport()
            by_file: dict[str, Ruleset] = {}
            active: dict[str, Ruleset] = {}
            owner: dict[str, str] = {}
            for path in files:
                try:
                    ruleset = load_ruleset_file(path)
                    engine.register(ruleset)
                except RulesetInvalid as exc:
                    report.problems.extend(exc.problems)
                    previous = self._by_file.get(str(path))
                    if previous is None:
                        continue
                    ruleset = previous
                if ruleset.name in owner:
                    report.problems.append(RuleProblem(
                        str(path), f"ruleset {ruleset.name!r} is already defined in "
                                   f"{Path(owner[ruleset.name]).name}; this file is ignored"))
                    continue
                owner[ruleset.name] = str(path)
                by_file[str(path)] = ruleset
                active[ruleset.name] = ruleset
                self._versions[(ruleset.name, ruleset.version)] = ruleset
                old = self._active.get(ruleset.name)
                if old is None or old.version != ruleset.version:
                    report.loaded.append(ruleset.engine_name)
            report.removed = sorted(set(self._active) - set(active))
            ownership = FactOwnership.of(active.values())
            report.problems.extend(ownership.conflicts)
            self._active, self._by_file, self._ownership = active, by_file, ownership
            self._signature = current
            self.problems = report.problems
        for problem in report.problems:
            log.error("rule file rejected, previous version stays active: %s", problem)
        if report.loaded or report.removed:
            log.info("rulesets loaded: %s; removed: %s", report.loaded or "none",
                     report.removed or "none")
        return report

    def _maybe_reload(self) -> None:
        if self._watch.due():
            self.reload()

    def get(self, name: str, version: str | None = None) -> Ruleset:
        """The active version of `name`, or a specific version loaded by this process."""
        self._maybe_reload()
        if version is not None:
            pinned = self._versions.get((name, version))
            if pinned is None:
                raise UnknownRuleset(f"ruleset {name!r} version {version!r} is not loaded")
            return pinned
        ruleset = self._active.get(name)
        if ruleset is None:
            known = ", ".join(sorted(self._active)) or "none"
            raise UnknownRuleset(f"no ruleset named {name!r} (loaded: {known})")
        return ruleset

    def active(self) -> list[Ruleset]:
        self._maybe_reload()
        return sorted(self._active.values(), key=lambda r: r.name)

    def ownership(self) -> FactOwnership:
        """Who may post which fact type, by the active rulesets."""
        self._maybe_reload()
        return self._ownership
