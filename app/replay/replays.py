"""Looking back at recorded decisions in a running service: replays, what-ifs, why-not.

`Replays` selects the cases a replay names, gathers candidate rules and policies for a
sandbox, replays (at most DECISION_WHATIF_CONCURRENCY what-ifs at once across the
service), and finds the exact ruleset version and policy revision a decision ran with,
which the explorer shows and why-not explains on.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import redis

from app.decisions.path import DecisionPath
from app.decisions.whynot import why_not
from app.policy.files import PolicySet
from app.policy.live import LivePolicies
from app.replay.replayer import ReplayCase, Replayer, candidate_scenarios, summarize
from app.replay.sandbox import Budget, CandidateSources, Sandbox
from app.rules import Ruleset
from app.shared import keys
from app.shared.clock import rfc3339, system_clock
from app.shared.config import REQUEST_TIMEOUT_SECONDS, Settings
from app.shared.errors import (
    ConfigurationError,
    Conflict,
    NotFound,
    RulesetInvalid,
    RulesetUnavailable,
    UnknownRuleset,
)
from app.shared.store import Slots

ARCHIVED_RULESETS_KEPT = 16  # parsed archived ruleset versions a process keeps at hand
# A decision id as the service makes them (a UUID); anything else names no decision.
_DECISION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")


class Replays:
    """Replays run what the decision path runs (its rules, gate, limits and executors,
    its log and archive), and candidates in a sandbox; `policies` are the live ones a
    candidate policy overlay starts from."""

    def __init__(self, settings: Settings, redis_client: redis.Redis, decider: DecisionPath,
                 policies: LivePolicies) -> None:
        if settings.whatif_seconds > REQUEST_TIMEOUT_SECONDS - 5:
            raise ConfigurationError(
                f"DECISION_WHATIF_SECONDS ({settings.whatif_seconds:g}) must leave a what-if "
                f"request 5 s of the {REQUEST_TIMEOUT_SECONDS} s a request may take")
        self.settings = settings
        self.decider = decider
        self.policies = policies
        self.whatifs = Slots(redis_client, keys.whatifs_running(),
                             limit=settings.whatif_concurrency,
                             hold_seconds=settings.whatif_seconds + 5,
                             busy=f"{settings.whatif_concurrency} what-if(s) with candidate "
                                  "rules or policies run already (DECISION_WHATIF_CONCURRENCY)")
        self._archived: dict[tuple[str, str], Ruleset] = {}

    # --- explaining ----------------------------------------------------------------------

    def why_not(self, decision_id: str, rule: str) -> dict[str, Any]:
        """Whether `rule` fired in a recorded decision and, if not, its nearest partial match
        (app/decisions/whynot.py), computed from the record on the ruleset version the decision ran
        with, never on another: NotFound for an unknown decision, RulesetUnavailable when
        that version is gone, UnknownRule when it has no such rule."""
        if not _DECISION_ID.fullmatch(decision_id):
            raise NotFound(f"no decision with id {decision_id[:200]!r}")
        record = self.decider.decisions.get(decision_id)
        return why_not(record, self.recorded_ruleset(record), rule)

    def recorded_ruleset(self, record: Mapping[str, Any]) -> Ruleset:
        """The exact ruleset version a decision ran with: loaded by this process, or from
        the archive (its version is the hash of its source, so either is the same text)."""
        name, version = record["ruleset"]["name"], record["ruleset"]["version"]
        try:
            return self._loaded_or_archived(name, version)
        except (NotFound, RulesetInvalid) as exc:
            raise RulesetUnavailable(
                f"decision {record['decision_id']} ran with ruleset {name} version "
                f"{version}, which is neither archived nor loaded any more ({exc.detail}); "
                "it is explained on that version or not at all") from exc

    def _loaded_or_archived(self, name: str, version: str) -> Ruleset:
        """A ruleset version loaded by this process, or parsed from the archive once and
        kept (the last ARCHIVED_RULESETS_KEPT): NotFound, or RulesetInvalid."""
        try:
            return self.decider.rulesets.get(name, version)
        except UnknownRuleset:
            pass
        key = (name, version)
        if key not in self._archived:
            self._archived[key] = self.decider.archive.ruleset(name, version)
            for stale in list(self._archived)[:-ARCHIVED_RULESETS_KEPT]:
                self._archived.pop(stale, None)
        return self._archived[key]

    # --- what a decision ran with (the explorer links to it) ---------------------------

    def ruleset_version(self, name: str, version: str) -> tuple[Ruleset, bool]:
        """A ruleset version a decision ran with (loaded by this process, else archived;
        NotFound if neither has it), and whether it is the active version now."""
        try:
            ruleset = self._loaded_or_archived(name, version)
        except RulesetInvalid as exc:  # archived, but no longer read as rules here
            raise RulesetUnavailable(f"ruleset {name} version {version} is archived but "
                                     f"cannot be read any more: {exc.detail}") from exc
        try:
            live = self.decider.rulesets.get(name).version == version
        except NotFound:
            live = False
        return ruleset, live

    def policy_revision(self, revision: str) -> tuple[dict[str, str], bool]:
        """The policy files (path -> text) of a revision a decision ran with (NotFound if
        it is not archived), and whether it is the revision in use now."""
        return (self.decider.archive.policy_sources(revision),
                revision == self.decider.policy.revision)

    # --- replay ------------------------------------------------------------------------

    def candidates(self, *, rule_sources: Mapping[str, str] | None = None,
                   policy_sources: Mapping[str, str] | None = None,
                   policy_overlay: bool = True,
                   declared: Mapping[str, str] | None = None,
                   scenarios: Mapping[str, str] | None = None,
                   policy_base: str | None = None) -> CandidateSources:
        """Candidate rule files (file name -> text; `declared`: the ruleset each should be)
        and policy files (path -> text), as a sandbox will load them. With
        `policy_overlay`, the given policy files replace (or, when empty, remove) the files
        of the same path in the policies in use, so an analyst sends only what changed.
        The policies in use are those live now, after a reload check (this worker may not
        have decided since the files changed); `policy_base`, the revision the analyst
        edited, must still be theirs (Conflict otherwise). Nothing is parsed here: the
        sandbox does, within the what-if's budget."""
        policies = None
        if policy_sources:
            files = dict(self._policy_base(policy_base).sources) if policy_overlay else {}
            files.update(policy_sources)
            policies = {k: v for k, v in files.items() if v}
        return CandidateSources(dict(rule_sources or {}), policies, dict(declared or {}),
                                dict(scenarios or {}))

    def _policy_base(self, expected: str | None) -> PolicySet:
        live = self.policies.live()[1]
        if expected is not None and expected != live.revision:
            raise Conflict(f"the live policies changed since you loaded revision {expected} "
                           f"(now {live.revision}): load them again and redo your edits, so "
                           "the candidate does not mix your copy with newer files")
        return live

    def replay_cases(self, *, decision_ids: Sequence[str] = (), subject: str | None = None,
                     since_ms: int | None = None, until_ms: int | None = None,
                     fact_sets: Sequence[Mapping[str, Any]] = (), limit: int | None = None,
                     cursor: str | None = None) -> tuple[list[ReplayCase], str | None]:
        """The cases a selection names: recorded decisions (by id, by subject, by time),
        oldest first, then fact sets; at most `limit` of the recorded ones selected by
        subject or time, read a page of the log at a time, starting after `cursor`. Also
        the cursor of the next page (None: there is none)."""
        decisions = self.decider.decisions
        ids = list(decision_ids)
        next_cursor = None
        if subject is not None:
            ids += decisions.ids_of(subject, since_ms=since_ms, until_ms=until_ms, limit=limit)
        elif since_ms is not None or until_ms is not None:
            if limit is None:
                ids += decisions.all_ids(since_ms=since_ms, until_ms=until_ms)
            else:
                page, next_cursor = decisions.ids_between(
                    since_ms=since_ms, until_ms=until_ms, after=cursor, limit=limit)
                ids += page
        records = {r["decision_id"]: r for r in decisions.records(dict.fromkeys(ids))}
        cases = [ReplayCase.of_record(records[i]) if i in records else ReplayCase.missing(i)
                 for i in dict.fromkeys(ids) if i in records or i in decision_ids]
        now = rfc3339(system_clock())
        cases += [ReplayCase.of_fact_set(fact_set, number, now)
                  for number, fact_set in enumerate(fact_sets, start=1)]
        return cases, next_cursor

    @contextlib.contextmanager
    def replayer(self, sources: CandidateSources | None = None, *,
                 per_call_budget: bool = False) -> Iterator[Replayer]:
        """A Replayer; with candidates, they are loaded into a sandbox of their own first (a
        budget for the job, or with `per_call_budget` for each call: a large CLI job),
        where they are parsed and compiled: RulesetInvalid, PolicyInvalid or
        CandidateFailed if they fail."""
        decider = self.decider
        replayer = functools.partial(
            Replayer, archive=decider.archive, registry=decider.rulesets, gate=decider.policy,
            evaluator=decider.evaluate, limits=decider.limits, executors=decider.executors,
            allowed_builtins=frozenset(self.settings.policy_allowed_builtins))
        if sources is None or sources.empty:
            yield replayer()
            return
        budget = Budget(seconds=self.settings.whatif_seconds,
                        memory_mb=self.settings.whatif_memory_mb, per_call=per_call_budget)
        with Sandbox.start(budget) as sandbox:
            candidates = sandbox.load(sources, governance_path=decider.policy.governance_path,
                                      access_path=decider.policy.access_path,
                                      limits=decider.limits)
            yield replayer(candidates=candidates, sandbox=sandbox)

    def replay(self, cases: Sequence[ReplayCase],
               sources: CandidateSources | None = None) -> dict[str, Any]:
        """{results, summary} of replaying `cases` (against candidates, if any: one what-if
        at a time per DECISION_WHATIF_CONCURRENCY, else Busy)."""
        what_if = sources is not None and not sources.empty
        scenarios = None
        with self.whatifs.hold() if what_if else contextlib.nullcontext(), \
                self.replayer(sources) as replayer:
            results = list(replayer.run(cases))
            if sources is not None and sources.scenarios and replayer.sandbox is not None:
                scenarios = candidate_scenarios(replayer, sources.scenarios)
            failure = replayer.sandbox.failure if replayer.sandbox else None
        summary = summarize(results, replayer.candidates)
        if failure:
            summary["candidate_error"] = failure
        return {"results": results, "summary": summary,
                **({"scenarios": scenarios} if scenarios is not None else {})}
