"""The running service's parts, wired from one `Settings`: what the views and the CLI call.

Flask-free: `create_app` wraps one `DecisionService` per process, and the CLI
opens one the same way, so both run exactly the same code.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

import redis

from app.decisions.archive import Archive
from app.decisions.decision import (
    failed_decision,
    gate_input_of,
    make_decision,
    request_fingerprint,
    snapshot,
)
from app.decisions.log import DecisionLog, IdempotencyClaim, Recorded
from app.decisions.masking import Masking
from app.decisions.whynot import why_not
from app.dispatch.delivery import Dispatcher, Executors, Outbox
from app.dispatch.worker import Worker
from app.facts.pool import FactPool, FactRecord, Quotas
from app.facts.triggers import TriggerQueue, idempotency_key, parse_member
from app.policy.access import ANONYMOUS, AccessControl, ApiKeys, Caller
from app.policy.bundle import Bundle, build_bundle
from app.policy.embedded import EmbeddedPolicyEngine, PolicyDirectory
from app.policy.engines import PolicyEngine, PolicyStatus
from app.policy.files import PolicySet, disk_revision
from app.policy.gate import PolicyGate
from app.policy.sidecar import SidecarPolicyEngine
from app.replay.replayer import ReplayCase, Replayer, candidate_scenarios, summarize
from app.replay.sandbox import Budget, CandidateSources, Sandbox
from app.rules import Evaluation, Ruleset, RulesetRegistry
from app.rules.engine import Limits, evaluate
from app.shared import keys
from app.shared.clock import rfc3339, system_clock
from app.shared.config import REQUEST_TIMEOUT_SECONDS, Settings
from app.shared.errors import (
    ConfigurationError,
    Conflict,
    DecisionServiceError,
    EvaluationFailed,
    Forbidden,
    InvalidInput,
    NotFound,
    PolicyUnavailable,
    RedriveRefused,
    RulesetInvalid,
    RulesetUnavailable,
    UnknownRuleset,
)
from app.shared.logs import log_context
from app.shared.metrics import Metrics, label_value
from app.shared.store import EmbeddedRedis, Slots, connect, unavailable_on_outage

log = logging.getLogger(__name__)

TRIGGER_BATCH = 16
ARCHIVED_RULESETS_KEPT = 16  # parsed archived ruleset versions a process keeps at hand
# A decision id as the service makes them (a UUID); anything else names no decision.
_DECISION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
TRIGGER_LEASE_SECONDS = 30.0
# How often a process records in Redis what policies it has live (for `policy status`),
# and after how long without a word a process's record no longer counts.
POLICY_REPORT_SECONDS = 5.0
POLICY_REPORT_STALE_SECONDS = 60.0
# How long a rejected policy directory's content is remembered, so that every process
# rejecting it counts it once between them.
POLICY_REJECTED_KEPT_SECONDS = 7 * 24 * 3600


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _access_keys(settings: Settings) -> ApiKeys | None:
    if settings.api_keys_file is not None:
        return ApiKeys.load(settings.api_keys_file)
    if settings.env == "production":
        raise ConfigurationError("DECISION_ENV=production needs DECISION_API_KEYS_FILE")
    if not _loopback(settings.host):
        raise ConfigurationError(f"without DECISION_API_KEYS_FILE the service only serves on "
                                 f"loopback, not on {settings.host}")
    return None


def policy_engine(settings: Settings, *,
                  on_rejected: Callable[[PolicyDirectory], None] | None = None) -> PolicyEngine:
    """Embedded OPA on the policy directory, or the OPA sidecar, with the policy directory
    as the bundle this service serves it. `on_rejected` hears of each rejected change."""
    if settings.opa_url:
        served = PolicyDirectory(settings.policy_dir, keep_engine=False,
                                 reload_seconds=settings.policy_reload_seconds,
                                 allowed_builtins=frozenset(settings.policy_allowed_builtins),
                                 on_rejected=on_rejected)
        return SidecarPolicyEngine(settings.opa_url, timeout_seconds=settings.opa_timeout_seconds,
                                   bundle=settings.opa_bundle, served=served)
    return EmbeddedPolicyEngine(settings.policy_dir,
                                reload_seconds=settings.policy_reload_seconds,
                                allowed_builtins=frozenset(settings.policy_allowed_builtins),
                                on_rejected=on_rejected)


def process_name() -> str:
    """A running service, as its policy report names it: "<host>:<pid>:<token>" (the token
    tells apart two services of one process, as tests make)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def policy_report(status: PolicyStatus, reported_at: float) -> dict[str, Any]:
    """What a process records of its policies (keys.policy_processes)."""
    return {"kind": status.kind, "revision": status.revision, "served": status.served,
            "disk_revision": status.disk_revision,
            "problems": [{"file": p.file, "line": p.line, "message": p.message}
                         for p in status.problems],
            "rejected_at": status.rejected_at, "reported_at": rfc3339(reported_at)}


def policy_reports(redis_client: redis.Redis) -> dict[str, dict[str, Any]]:
    """What each process last recorded of its policies (`policy_report`), by process."""
    with unavailable_on_outage():
        raw = cast(dict[str, str], redis_client.hgetall(keys.policy_processes()))
    reports = {}
    for process, text in sorted(raw.items()):
        try:
            reports[process] = json.loads(text)
        except ValueError:
            continue
    return reports


def forget_policy_reports(redis_client: redis.Redis, processes: Sequence[str]) -> None:
    """Drop the records of processes that stopped without a word (killed)."""
    if processes:
        with unavailable_on_outage():
            redis_client.hdel(keys.policy_processes(), *processes)


class DecisionService:
    def __init__(self, settings: Settings, redis_client: redis.Redis,
                 embedded_redis: EmbeddedRedis | None = None) -> None:
        self.settings = settings
        self.redis = redis_client
        self.facts = FactPool(redis_client, quotas=Quotas(
            per_department=settings.max_facts_per_department,
            per_type=settings.max_facts_per_type, per_subject=settings.max_facts_per_subject))
        self.rulesets = RulesetRegistry(settings.rules_dir,
                                        check_interval_seconds=settings.rules_reload_seconds)
        self.rulesets.reload()
        self.limits = Limits(facts=settings.max_evaluation_facts, firings=settings.max_firings,
                             join_candidates=settings.max_join_candidates,
                             seconds=settings.max_evaluation_seconds,
                             actions=settings.max_actions, gate_pairs=settings.max_gate_pairs,
                             rounds=settings.max_rounds)
        if settings.max_facts_per_subject + settings.max_batch > self.limits.facts:
            raise ConfigurationError(
                f"DECISION_MAX_FACTS_PER_SUBJECT ({settings.max_facts_per_subject}) plus "
                f"DECISION_MAX_BATCH ({settings.max_batch}) inline facts must fit in one "
                f"evaluation (DECISION_MAX_EVALUATION_FACTS, {self.limits.facts}), or a full "
                "subject could not be decided")
        self.metrics = Metrics(redis_client)
        # The first report is due a report period after start (or at once on /readyz,
        # /v1/policies or a rejected change): a process that lives a moment writes nothing.
        self._policy_reported_at, self._policy_reported = time.monotonic(), False
        self.process_name = process_name()
        self.policy = PolicyGate(policy_engine(settings, on_rejected=self._policy_rejected),
                                 governance_path=settings.policy_path,
                                 access_path=settings.access_policy_path, metrics=self.metrics)
        self.access = AccessControl(_access_keys(settings), self.policy)
        self.executors = Executors.load(settings.executors_file)
        self.executors.check_lease(settings.dispatch_lease_seconds)
        self.outbox = Outbox(redis_client, hold_seconds=settings.dispatch_lease_seconds,
                             retention_seconds=settings.decision_retention_seconds)
        self.decisions = DecisionLog(redis_client, self.outbox,
                                     retention_seconds=settings.decision_retention_seconds,
                                     idempotency_ttl_seconds=settings.idempotency_ttl_seconds)
        self.dispatcher = Dispatcher(self.outbox, self.executors,
                                     backoff_seconds=settings.dispatch_backoff_seconds,
                                     backoff_max_seconds=settings.dispatch_backoff_max_seconds,
                                     lease_seconds=settings.dispatch_lease_seconds,
                                     metrics=self.metrics)
        self.triggers = TriggerQueue(redis_client, max_attempts=settings.trigger_max_attempts,
                                     backoff=self.dispatcher.backoff)
        self.archive = Archive(redis_client)
        self.masking = Masking(settings.mask_fields)
        if settings.whatif_seconds > REQUEST_TIMEOUT_SECONDS - 5:
            raise ConfigurationError(
                f"DECISION_WHATIF_SECONDS ({settings.whatif_seconds:g}) must leave a what-if "
                f"request 5 s of the {REQUEST_TIMEOUT_SECONDS} s a request may take")
        self.whatifs = Slots(redis_client, keys.whatifs_running(),
                             limit=settings.whatif_concurrency,
                             hold_seconds=settings.whatif_seconds + 5,
                             busy=f"{settings.whatif_concurrency} what-if(s) with candidate "
                                  "rules or policies run already (DECISION_WHATIF_CONCURRENCY)")
        self.worker = Worker([self.run_triggers_once, self.dispatcher.run_once,
                              self._flush_metrics, self._expire_parked, self._report_policy],
                             poll_seconds=settings.worker_poll_seconds)
        self._embedded_redis = embedded_redis
        self._bundle: Bundle | None = None
        self._archived: dict[tuple[str, str], Ruleset] = {}

    @classmethod
    def open(cls, settings: Settings) -> DecisionService:
        """Connect to `DECISION_REDIS_URL`, or start the embedded Redis when it is unset."""
        embedded = None
        url = settings.redis_url
        if url is None:
            embedded = EmbeddedRedis(settings.data_dir)
            url = embedded.start()
            settings = settings.replace(redis_url=url)
        client = connect(url, timeout_seconds=settings.redis_timeout_seconds,
                         cluster=settings.redis_cluster)
        try:
            return cls(settings, client, embedded)
        except BaseException:
            client.close()
            if embedded is not None:
                embedded.stop()
            raise

    # --- facts -------------------------------------------------------------------------

    def post_facts(self, facts: Sequence[dict[str, Any]]) -> list[FactRecord]:
        """Store facts and, in the same step, ask for the decisions their types trigger.
        Forbidden when a fact is of a type its department does not own (or one the rules
        derive)."""
        self._check_owners(facts)
        triggers: dict[str, list[str]] = {}
        for ruleset in self.rulesets.active():
            for fact_type in ruleset.triggers:
                triggers.setdefault(fact_type, []).append(ruleset.name)
        return self.facts.put(facts, triggers=triggers)

    def evaluate(self, ruleset: Ruleset, facts: Sequence[Mapping[str, Any]], *,
                 seconds: float | None = None) -> Evaluation:
        """The rules over `facts`, within the configured limits (and `seconds`)."""
        return evaluate(ruleset, facts, limits=self.limits, seconds=seconds)

    def _check_owners(self, facts: Sequence[Mapping[str, Any]]) -> None:
        refusals = self.rulesets.ownership().refusals(facts)
        if refusals:
            raise Forbidden(refusals[0], refusals)

    def subject_facts(self, subject: str) -> dict[str, Any]:
        """What the pool holds about a subject, how much of each department's quota that is,
        and the rulesets whose last decision on it could not run."""
        return {"subject": subject, "facts": self.facts.facts_of(subject),
                "quota": {"max_facts_per_subject": self.facts.quotas.per_subject,
                          "max_facts_per_department": self.facts.quotas.per_department,
                          "max_facts_per_type": self.facts.quotas.per_type,
                          "used": self.facts.usage(subject)},
                "decision_failures": self.decisions.failures(subject)}

    # --- decisions ---------------------------------------------------------------------

    def decide(self, *, subject: str, ruleset_name: str,
               inline_facts: Sequence[Mapping[str, Any]] = (), dry_run: bool = False,
               caller: Caller = ANONYMOUS, idempotency_key: str | None = None,
               trigger: Mapping[str, Any] | None = None) -> Recorded:
        """Decide on a subject and record the decision (or, for an Idempotency-Key already
        used, return the earlier decision: `replayed`)."""
        claim = None
        if idempotency_key is not None:
            claim = IdempotencyClaim(caller.id, idempotency_key, request_fingerprint(
                subject, ruleset_name, inline_facts, dry_run))
            earlier = self.decisions.replayed(subject, claim)
            if earlier is not None:
                return earlier
        started = time.perf_counter()
        ruleset = self.rulesets.get(ruleset_name)
        self._check_owners(inline_facts)
        decision_id = str(uuid.uuid4())
        with log_context(decision_id=decision_id, subject=subject):
            pooled, ignored = self.rulesets.ownership().admissible(self.facts.facts_of(subject))
            facts = snapshot(pooled, inline_facts)
            created_at = rfc3339(system_clock())
            try:
                decision = make_decision(
                    decision_id=decision_id, subject=subject, ruleset=ruleset, facts=facts,
                    gate=self.policy, caller=caller, dry_run=dry_run, created_at=created_at,
                    executors=self.executors, evaluator=self.evaluate, trigger=trigger,
                    limits=self.limits)
            except EvaluationFailed as exc:
                self._record_failure(exc, decision_id=decision_id, subject=subject,
                                     ruleset=ruleset, facts=facts, ignored=ignored,
                                     caller=caller, dry_run=dry_run, created_at=created_at,
                                     trigger=trigger)
                raise
            if ignored:
                decision.record["ignored_facts"] = ignored
            policies = self.policy.engine.policy_set
            if policies is not None and (
                    policies.revision != decision.record["policy"]["revision"]):
                policies = None  # reloaded meanwhile: the next decision on it archives it
            archive = self.archive.entries_for(ruleset, policies)
            recorded = self.decisions.commit(self.masking.record(decision.record),
                                             enqueue=decision.to_enqueue,
                                             prerequisites=decision.prerequisites,
                                             idempotency=claim,
                                             archive=archive)
            self.archive.written(archive)
            self._count(recorded, time.perf_counter() - started)
            log.info("decided %s: %s", ruleset.engine_name, ", ".join(
                f"{a['type']} {a['status']}" for a in recorded.record["actions"]) or
                "no action")
        return recorded

    def _record_failure(self, error: EvaluationFailed, *, decision_id: str, subject: str,
                        ruleset: Ruleset, facts: list[dict[str, Any]],
                        ignored: list[dict[str, str]], caller: Caller, dry_run: bool,
                        created_at: str, trigger: Mapping[str, Any] | None) -> None:
        """A decision the rules could not make is recorded too, and marks the subject as
        not decidable by this ruleset until a decision runs again (unless it was a dry run
        or had inline facts: those say nothing of the pool): the caller, the subject's page
        and the log all say so. `error.decision_id` names the record."""
        record = failed_decision(error, decision_id=decision_id, subject=subject,
                                 ruleset=ruleset, facts=facts, revision=self.policy.revision,
                                 caller=caller, dry_run=dry_run, created_at=created_at,
                                 max_facts=self.limits.facts, trigger=trigger)
        if ignored:
            record["ignored_facts"] = ignored
        archive = self.archive.entries_for(ruleset, None)
        self.decisions.commit(self.masking.record(record), enqueue=[], archive=archive)
        self.archive.written(archive)
        error.decision_id = decision_id
        self.metrics.inc("decision_decisions_failed_total",
                         {"ruleset": label_value(ruleset.name)})
        log.warning("decision on %s by %s could not run: %s", subject, ruleset.engine_name,
                    error.detail)

    def _count(self, recorded: Recorded, seconds: float) -> None:
        labels = {"ruleset": label_value(recorded.record["ruleset"]["name"])}
        self.metrics.inc("decision_decisions_total", labels)
        self.metrics.observe("decision_duration_seconds", labels, seconds)
        for action in recorded.record["actions"]:
            self.metrics.inc("decision_actions_total", {
                **labels, "action": label_value(action["type"]), "status": action["status"]})

    def _expire_parked(self) -> int:
        self.outbox.expire_parked()
        return 0  # bookkeeping, like the metrics

    def redrive(self, decision_id: str, action_id: str) -> dict[str, Any]:
        """Ask the current policies about a parked action again: queued again when they
        allow it, else it stays parked, the new verdict recorded beside the first
        (RedriveRefused). Either way the verdict is returned."""
        record = self.decisions.get(decision_id)
        subject = record["subject"]
        entry = self.outbox.parked(subject, decision_id, action_id)
        [verdict] = self.policy.check(gate_input_of(record), [entry["action"]])
        asked = {**verdict.as_dict(), "at": rfc3339(system_clock())}
        if not verdict.allow:
            self.outbox.refuse_redrive(subject, decision_id, action_id, asked)
            raise RedriveRefused(asked)
        self.outbox.redrive(subject, decision_id, action_id, verdict=asked)
        return {"status": "queued", "verdict": asked}

    def _flush_metrics(self) -> int:
        self.metrics.flush()
        return 0  # bookkeeping, not work: an idle worker keeps polling slowly

    def run_triggers_once(self) -> int:
        """Make the triggered decisions that are due; how many were claimed. One that cannot
        run as things are is parked with its reason; one that failed for a passing reason
        is tried again later (and parked after the last attempt)."""
        members = self.triggers.claim(limit=TRIGGER_BATCH, lease_seconds=TRIGGER_LEASE_SECONDS)
        for member in members:
            subject, ruleset = parse_member(member)
            triggering = self.triggers.pending(member)
            caller = Caller("trigger", tuple(sorted({f["department"] for f in triggering})))
            try:
                self.decide(subject=subject, ruleset_name=ruleset, caller=caller,
                            idempotency_key=idempotency_key(member, triggering),
                            trigger={"facts": triggering})
            except (EvaluationFailed, InvalidInput, NotFound) as exc:
                log.error("triggered decision on %s parked: %s", subject, exc.detail)
                self.triggers.park(member, exc.detail, decision_id=exc.decision_id)
                continue
            except DecisionServiceError as exc:
                parked = self.triggers.retry(member, exc.detail)
                log.warning("triggered decision on %s %s: %s", subject,
                            "parked" if parked else "deferred", exc.detail)
                continue
            self.triggers.done(member, len(triggering))
        return len(members)

    # --- explaining ----------------------------------------------------------------------

    def why_not(self, decision_id: str, rule: str) -> dict[str, Any]:
        """Whether `rule` fired in a recorded decision and, if not, its nearest partial match
        (app/decisions/whynot.py), computed from the record on the ruleset version the decision ran
        with, never on another: NotFound for an unknown decision, RulesetUnavailable when
        that version is gone, UnknownRule when it has no such rule."""
        if not _DECISION_ID.fullmatch(decision_id):
            raise NotFound(f"no decision with id {decision_id[:200]!r}")
        record = self.decisions.get(decision_id)
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
            return self.rulesets.get(name, version)
        except UnknownRuleset:
            pass
        key = (name, version)
        if key not in self._archived:
            self._archived[key] = self.archive.ruleset(name, version)
            for stale in list(self._archived)[:-ARCHIVED_RULESETS_KEPT]:
                self._archived.pop(stale, None)
        return self._archived[key]

    # --- replay ------------------------------------------------------------------------

    def candidates(self, *, rule_sources: Mapping[str, str] | None = None,
                   policy_sources: Mapping[str, str] | None = None,
                   policy_overlay: bool = True,
                   declared: Mapping[str, str] | None = None,
                   scenarios: Mapping[str, str] | None = None) -> CandidateSources:
        """Candidate rule files (file name -> text; `declared`: the ruleset each should be)
        and policy files (path -> text), as a sandbox will load them. With
        `policy_overlay`, the given policy files replace (or, when empty, remove) the files
        of the same path in the policies in use, so an analyst sends only what changed.
        The policies in use are those live now, after a reload check (this worker may not
        have decided since the files changed). Nothing is parsed here: the sandbox does,
        within the what-if's budget."""
        policies = None
        if policy_sources:
            files = dict(self.live_policies()[1].sources) if policy_overlay else {}
            files.update(policy_sources)
            policies = {k: v for k, v in files.items() if v}
        return CandidateSources(dict(rule_sources or {}), policies, dict(declared or {}),
                                dict(scenarios or {}))

    def replay_cases(self, *, decision_ids: Sequence[str] = (), subject: str | None = None,
                     since_ms: int | None = None, until_ms: int | None = None,
                     fact_sets: Sequence[Mapping[str, Any]] = (), limit: int | None = None,
                     cursor: str | None = None) -> tuple[list[ReplayCase], str | None]:
        """The cases a selection names: recorded decisions (by id, by subject, by time),
        oldest first, then fact sets; at most `limit` of the recorded ones selected by
        subject or time, read a page of the log at a time, starting after `cursor`. Also
        the cursor of the next page (None: there is none)."""
        ids = list(decision_ids)
        next_cursor = None
        if subject is not None:
            ids += self.decisions.ids_of(subject, since_ms=since_ms, until_ms=until_ms,
                                         limit=limit)
        elif since_ms is not None or until_ms is not None:
            if limit is None:
                ids += self.decisions.all_ids(since_ms=since_ms, until_ms=until_ms)
            else:
                page, next_cursor = self.decisions.ids_between(
                    since_ms=since_ms, until_ms=until_ms, after=cursor, limit=limit)
                ids += page
        records = {r["decision_id"]: r for r in self.decisions.records(dict.fromkeys(ids))}
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
        replayer = functools.partial(
            Replayer, archive=self.archive, registry=self.rulesets, gate=self.policy,
            evaluator=self.evaluate, limits=self.limits, executors=self.executors,
            allowed_builtins=frozenset(self.settings.policy_allowed_builtins))
        if sources is None or sources.empty:
            yield replayer()
            return
        budget = Budget(seconds=self.settings.whatif_seconds,
                        memory_mb=self.settings.whatif_memory_mb, per_call=per_call_budget)
        with Sandbox.start(budget) as sandbox:
            candidates = sandbox.load(sources, governance_path=self.policy.governance_path,
                                      access_path=self.policy.access_path, limits=self.limits)
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
            live = self.rulesets.get(name).version == version
        except NotFound:
            live = False
        return ruleset, live

    def policy_revision(self, revision: str) -> tuple[dict[str, str], bool]:
        """The policy files (path -> text) of a revision a decision ran with (NotFound if
        it is not archived), and whether it is the revision in use now."""
        return self.archive.policy_sources(revision), revision == self.policy.revision

    # --- the policy bundle -------------------------------------------------------------

    def bundle(self, name: str) -> Bundle:
        """The policy directory as the OPA bundle `name` (app/policy/bundle.py), as the
        files are now: NotFound for another name than DECISION_OPA_BUNDLE,
        PolicyUnavailable when no policies ever loaded."""
        if name != self.settings.opa_bundle:
            raise NotFound(f"there is no bundle {name!r} here, only "
                           f"{self.settings.opa_bundle!r}")
        directory = self.policy.engine.directory
        if directory is None:
            raise NotFound("this service reads no policy directory")
        _, policies = directory.current(check=True)
        cached = self._bundle
        if cached is None or cached.revision != policies.revision:
            cached = self._bundle = build_bundle(
                policies, [self.policy.governance_path, self.policy.access_path])
        return cached

    # --- what is live ------------------------------------------------------------------

    def policy_status(self, *, check: bool = True) -> PolicyStatus:
        """What policies this process has live, after a reload check (`check`: if the files
        changed; else only if a reload is due, as for a decision), a sidecar's as OPA says
        now, beside the directory as it is on disk; recorded in Redis for
        `decision-service policy status`."""
        status = self.policy.engine.status(check=check)
        self._write_policy_report(status)
        return status

    def policy_overview(self) -> tuple[PolicyStatus, PolicySet | None]:
        """The status of the policies live now, and their text when this service has it:
        this process's, or, for a sidecar that runs an earlier revision of the bundle, the
        archived one (None for a sidecar on files of its own, or when none ever loaded)."""
        status = self.policy_status()
        if status.policies is not None or status.revision == "none":
            return status, status.policies
        try:
            return status, self.archive.policies(status.revision)
        except NotFound:
            return status, None

    def live_policies(self) -> tuple[PolicyStatus, PolicySet]:
        """The status and the text of the policies live now (see `policy_overview`);
        PolicyUnavailable when none ever loaded, Conflict when this service has not their
        text (a sidecar on files of its own)."""
        status, policies = self.policy_overview()
        if policies is not None:
            return status, policies
        if status.revision == "none":
            problems = "; ".join(str(p) for p in status.problems) or "no policy files"
            raise PolicyUnavailable(f"no policies are loaded: {problems}")
        raise Conflict(
            f"the live policies are revision {status.revision}, which the OPA sidecar runs, "
            "and this service does not have their text (files of the sidecar's own, or a "
            "revision of the bundle no decision used): replay with the whole set "
            "(decision-service replay --policies DIR), or serve the sidecar this service's "
            "bundle")

    def _policy_rejected(self, directory: PolicyDirectory) -> None:
        """A change to the policy directory did not load: counted once across the service
        (the first process to reject that content counts it), and reported soon."""
        revision = disk_revision(directory.path)
        with unavailable_on_outage():
            first = self.redis.set(keys.policy_rejected(revision), rfc3339(system_clock()),
                                   nx=True, ex=POLICY_REJECTED_KEPT_SECONDS)
        if first:
            self.metrics.inc("decision_policy_files_rejected", {})
        self._policy_reported_at = float("-inf")

    def _report_policy(self, *, first_now: bool = False) -> int:
        """Record what policies this process has live, at most every POLICY_REPORT_SECONDS
        (and soon after a rejected change; with `first_now`, at once if it never did);
        bookkeeping, like the metrics. It reloads only when a reload is due, as a decision
        would (DECISION_POLICY_RELOAD_SECONDS)."""
        if time.monotonic() - self._policy_reported_at >= POLICY_REPORT_SECONDS or (
                first_now and not self._policy_reported):
            self._policy_reported_at = time.monotonic()  # tried: not again at every poll
            try:
                self.policy_status(check=False)
            except DecisionServiceError as exc:
                log.debug("policy status not reported: %s", exc.detail)
        return 0

    def _write_policy_report(self, status: PolicyStatus) -> None:
        self._policy_reported_at, self._policy_reported = time.monotonic(), True
        with unavailable_on_outage():
            self.redis.hset(keys.policy_processes(), self.process_name,
                            json.dumps(policy_report(status, system_clock()), sort_keys=True))

    # --- operations --------------------------------------------------------------------

    def readiness(self) -> dict[str, str]:
        """Each dependency and whether it answers: "ok" or the reason it does not."""
        checks: dict[str, str] = {}
        try:
            with unavailable_on_outage():
                self.redis.ping()
            checks["redis"] = "ok"
        except DecisionServiceError as exc:
            checks["redis"] = exc.detail
        checks["policy"] = self.policy.readiness()
        self._report_policy(first_now=True)
        return checks

    def policy_rejection(self) -> tuple[list[dict[str, Any]], str | None]:
        """The last rejected change to the policy directory, while the policies live are
        the last good ones: its problems (file, line, message) and when it was rejected."""
        directory = self.policy.engine.directory
        if directory is None or not directory.problems:
            return [], None
        return ([{"file": p.file, "line": p.line, "message": p.message}
                 for p in directory.problems], directory.rejected_at)

    def policy_revisions(self) -> dict[str, str]:
        """The policy revision each side has (after `readiness`, which refreshes them):
        embedded, or the bundle this service serves and what the OPA sidecar runs."""
        return self.policy.revisions()

    def gauges(self) -> list[tuple[str, str, dict[str, str], float]]:
        """What /metrics reads fresh at each scrape: queues, and the versions in use."""
        with unavailable_on_outage(), self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(keys.dispatch_due())
            pipe.zcard(keys.dispatch_failed())
            pipe.zcard(keys.triggers_due())
            pipe.zcard(keys.triggers_parked())
            due, failed, triggers, parked = pipe.execute()
        gauges = [
            ("decision_outbox_depth", "allowed actions waiting for delivery", {}, float(due)),
            ("decision_outbox_failed", "actions parked after their last attempt", {},
             float(failed)),
            ("decision_triggers_pending", "subjects waiting for a triggered decision", {},
             float(triggers)),
            ("decision_triggers_parked", "triggered decisions parked: they cannot run as "
             "things are (an operator re-drives them)", {}, float(parked)),
            ("decision_policy_info", "the policy revision this process evaluates",
             {"revision": label_value(self.policy.revision)}, 1.0),
            ("decision_rule_files_rejected", "rule files this process rejected at its last "
             "reload", {}, float(len(self.rulesets.problems))),
        ]
        gauges += [("decision_ruleset_info", "the active version of each ruleset",
                    {"ruleset": label_value(r.name), "version": r.version}, 1.0)
                   for r in self.rulesets.active()]
        return gauges

    def close(self) -> None:
        self.worker.stop()
        self.dispatcher.close()
        with contextlib.suppress(DecisionServiceError):
            if self._policy_reported:  # it said what it had live: it has nothing now
                with unavailable_on_outage():
                    self.redis.hdel(keys.policy_processes(), self.process_name)
        with contextlib.suppress(DecisionServiceError):
            self.metrics.flush(force=True)
        self.redis.close()
        if self._embedded_redis is not None:
            self._embedded_redis.stop()
