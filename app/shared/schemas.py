"""What valid input looks like: the marshmallow schemas shared by the HTTP API and the CLI.

The same schemas validate requests and describe them in `/openapi.json`. They are
Flask-free so that the CLI (replay files, exports) validates exactly like the API.
Anything that will reach durable_rules' C core passes through here first: it
crashes on some inputs that JSON allows (docs/ARCHITECTURE.md), so these limits are
deliberately tighter than JSON.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from marshmallow import (
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates,
    validates_schema,
)

from app.shared.config import DEFAULTS
from app.shared.errors import InvalidInput, InvalidParam

DEFAULT_MAX_BATCH = DEFAULTS["max_batch"]

SUBJECT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"
FACT_ID_PATTERN = SUBJECT_PATTERN
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"
DATA_KEY_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
RULE_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"

# The engine sees a fact's data fields beside these (`sid` is durable_rules' own);
# data may not shadow them.
RESERVED_DATA_KEYS = frozenset({"id", "type", "department", "subject", "sid"})
# The department of the facts the rules derive: nobody posts under it.
DERIVED_DEPARTMENT = "rules"
# The policy gate's verdicts enter a decision as facts of this type and department
# (see app.decisions.decision): nobody posts them either.
VERDICT_TYPE = "verdict"
POLICY_DEPARTMENT = "policy"
RESERVED_DEPARTMENTS = (DERIVED_DEPARTMENT, POLICY_DEPARTMENT)
MAX_DATA_FIELDS = 200  # durable_rules fails above 255 properties per fact
MAX_JSON_DEPTH = 32
MAX_TTL_SECONDS = 10 * 366 * 24 * 3600
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_DATA_KEY = re.compile(DATA_KEY_PATTERN)


def _child(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def json_value_problems(value: Any, path: str, depth: int = 0) -> Iterator[InvalidParam]:
    """Why `value` cannot be stored and handed to the rule engine, if it cannot."""
    if depth > MAX_JSON_DEPTH:
        yield InvalidParam(path, f"nested deeper than {MAX_JSON_DEPTH} levels")
    elif value is None or isinstance(value, bool | str):
        return
    elif isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            yield InvalidParam(path, "integer out of the 64-bit range")
    elif isinstance(value, float):
        if not math.isfinite(value):
            yield InvalidParam(path, "number must be finite")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from json_value_problems(item, _child(path, index), depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                yield InvalidParam(path, "object keys must be strings")
            else:
                yield from json_value_problems(item, _child(path, key), depth + 1)
    else:
        yield InvalidParam(path, f"not a JSON value ({type(value).__name__})")


_PLAIN = (str, bool, type(None))
_GOOD_KEYS: set[str] = set()  # data field names seen valid (they repeat across facts)
_GOOD_KEYS_MAX = 10_000


def _plainly_valid(data: dict[Any, Any]) -> bool:
    """The common case, cheaply: few fields, good names, flat scalar values."""
    if len(data) > MAX_DATA_FIELDS:
        return False
    for key, value in data.items():
        kind = type(value)
        if kind is int:
            if not INT64_MIN <= value <= INT64_MAX:
                return False
        elif kind is float:
            if not math.isfinite(value):
                return False
        elif kind not in _PLAIN:
            return False
        if key not in _GOOD_KEYS:
            if type(key) is not str or key in RESERVED_DATA_KEYS or not _DATA_KEY.fullmatch(key):
                return False
            if len(_GOOD_KEYS) < _GOOD_KEYS_MAX:
                _GOOD_KEYS.add(key)
    return True


def data_problems(data: Any, path: str = "data") -> list[InvalidParam]:
    """Why a fact's `data` object is not acceptable, field by field (paths below `path`)."""
    if not isinstance(data, dict):
        return [InvalidParam(path, "must be an object")]
    if _plainly_valid(data):
        return []
    if len(data) > MAX_DATA_FIELDS:  # said alone: checking thousands of fields costs
        return [InvalidParam(path, f"has {len(data)} fields; at most {MAX_DATA_FIELDS} are "
                                   "allowed")]
    problems: list[InvalidParam] = []
    for key, value in data.items():
        if not isinstance(key, str) or not _DATA_KEY.fullmatch(key):
            problems.append(InvalidParam(
                _child(path, key),
                "field names start with a letter and hold only letters, digits, '_' or '-'"
                " (at most 64)",
            ))
        elif key in RESERVED_DATA_KEYS:
            problems.append(InvalidParam(_child(path, key), f"'{key}' is reserved for the fact"))
        else:
            problems.extend(json_value_problems(value, _child(path, key), depth=1))
    return problems


class StrictInteger(fields.Integer):
    """A JSON integer (as JSON Schema counts them, 3.0 too): no strings, fractions or
    booleans."""

    def _validated(self, value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return super()._validated(value)


class Identifier(fields.String):
    """A non-empty string matching `pattern`; the message says which rule it broke."""

    def __init__(self, pattern: str, *, rule: str, **kwargs: Any) -> None:
        kwargs["metadata"] = {"pattern": pattern, "description": rule, **kwargs.get("metadata", {})}
        super().__init__(**kwargs)
        self._pattern = re.compile(pattern)
        self._rule = rule

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        text: str = super()._deserialize(value, attr, data, **kwargs)
        if not text:
            raise ValidationError("must not be empty")
        if not self._pattern.fullmatch(text):
            raise ValidationError(self._rule)
        return text


class Department(Identifier):
    """The department a fact comes from; never the one of derived facts or verdicts."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NAME_PATTERN, rule=_NAME_RULE, metadata={"not": {
            "enum": list(RESERVED_DEPARTMENTS)}}, **kwargs)

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if text == DERIVED_DEPARTMENT:
            raise ValidationError(f"{DERIVED_DEPARTMENT!r} is the department of the facts the "
                                  "rules derive; no one posts under it")
        if text == POLICY_DEPARTMENT:
            raise ValidationError(f"{POLICY_DEPARTMENT!r} is the department of the policy "
                                  "gate's verdicts; no one posts under it")
        return text


DATA_VALUE_SCHEMA: dict[str, Any] = {
    "description": f"any JSON value; integers within 64 bits, at most {MAX_JSON_DEPTH} levels",
    "anyOf": [
        {"type": ["null", "boolean", "string"]},
        {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX},
        {"type": "number", "not": {"type": "integer"}},
        {"type": "array", "items": {"$ref": "#/components/schemas/DataValue"}},
        {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/DataValue"}},
    ],
}


class FactData(fields.Dict):
    """A fact's `data`: an object the rule engine can hold (see `data_problems`)."""

    JSON_SCHEMA: dict[str, Any] = {
        "type": "object", "maxProperties": MAX_DATA_FIELDS,
        "propertyNames": {"pattern": DATA_KEY_PATTERN,
                          "not": {"enum": sorted(RESERVED_DATA_KEYS)}},
        "additionalProperties": {"$ref": "#/components/schemas/DataValue"},
        "description": f"at most {MAX_DATA_FIELDS} fields named like identifiers; "
                       f"{', '.join(sorted(RESERVED_DATA_KEYS))} are reserved",
    }

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.make_error("invalid")
        problems = data_problems(value, path="")
        if problems:
            messages: dict[str, list[str]] = {}
            for problem in problems:
                messages.setdefault(problem.name or "_schema", []).append(problem.reason)
            raise ValidationError(messages)
        return value


# A moment, as the API, the pages and the CLI accept it: a date (midnight UTC), or a date
# and time with its offset (RFC 3339; ISO 8601's extended form: a space may stand for the
# T, seconds and their fraction are optional, the offset may leave out its colon).
_MOMENT = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})"
    r"(?:[Tt ](?P<time>[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?P<fraction>\.[0-9]+)?)?)"
    r"(?P<offset>[Zz]|(?P<sign>[+-])(?P<oh>[0-9]{2})(?::?(?P<om>[0-9]{2}))?)?)?")
MOMENT_FORMATS = ("YYYY-MM-DD (midnight UTC) or a date and time with its offset, RFC 3339 / "
                  "ISO 8601 (2026-11-01T09:30:00Z, 2026-11-01T09:30:00+01:00)")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_moment(text: str) -> datetime:
    """A moment given as text (see MOMENT_FORMATS), as an aware datetime; ValueError with
    a message that says what was wrong and what is accepted. A time without an offset is
    refused: whose midnight it is would be a guess."""
    match = _MOMENT.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{str(text)[:40]!r} is not a moment: give {MOMENT_FORMATS}")
    given = text.strip()
    if match["time"] is not None and match["offset"] is None:
        raise ValueError(f"{given!r} has no offset: add Z for UTC or +hh:mm (e.g. "
                         f"{match['date']}T{match['time']}Z), or give the date alone")
    hours, minutes = int(match["oh"] or 0), int(match["om"] or 0)
    if hours > 23 or minutes > 59:
        raise ValueError(f"{given!r} is not a valid moment: its offset is out of range "
                         "(at most 23:59)")
    time_part = match["time"] or "00:00"
    if match["fraction"]:  # Python reads at most microseconds; RFC 3339 allows more digits
        time_part = time_part.replace(match["fraction"], match["fraction"][:7])
    offset = f"{match['sign'] or '+'}{hours:02d}:{minutes:02d}"
    try:
        return datetime.fromisoformat(f"{match['date']}T{time_part}{offset}")
    except ValueError as exc:
        raise ValueError(f"{given!r} is not a valid moment: {exc}") from exc


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since 1970 of an aware moment (exact, for any year)."""
    return (moment - _EPOCH) // timedelta(milliseconds=1)


class Moment(fields.Field[datetime]):
    """A moment (see `parse_moment`): one field for every date and time a caller gives."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["metadata"] = {
            "type": "string", "description": MOMENT_FORMATS,
            "anyOf": [{"format": "date"}, {"format": "date-time"}],
            **kwargs.get("metadata", {})}
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> datetime:
        if not isinstance(value, str):
            raise ValidationError(f"must be text: {MOMENT_FORMATS}")
        try:
            return parse_moment(value)
        except ValueError as exc:
            raise ValidationError(str(exc)) from exc

    def _serialize(self, value: Any, attr: Any, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else str(value.isoformat())


_SUBJECT_RULE = (
    "starts with a letter or digit and holds only letters, digits and _ . : @ - (at most 128)"
)
_NAME_RULE = "starts with a letter and holds only letters, digits and _ . - (at most 64)"


class FactInSchema(Schema):
    """A fact as a department posts it."""

    subject = Identifier(SUBJECT_PATTERN, rule=_SUBJECT_RULE, required=True)
    type = Identifier(NAME_PATTERN, rule=_NAME_RULE, required=True)
    department = Department(required=True)
    data = FactData(required=True)
    id = Identifier(FACT_ID_PATTERN, rule=_SUBJECT_RULE, metadata={
        "description": "re-posting an id replaces the fact and bumps its version"})
    ttl_seconds = StrictInteger(
        validate=validate.Range(min=1, max=MAX_TTL_SECONDS),
        metadata={"description": "the fact expires this many seconds after it is recorded"},
    )


class FactBatchInSchema(Schema):
    """Several facts, stored all or none."""

    facts = fields.List(fields.Nested(FactInSchema), required=True,
                        validate=validate.Length(min=1, error="must hold at least one fact"))

    def __init__(self, *, max_batch: int = int(DEFAULT_MAX_BATCH), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_batch = max_batch

    @validates("facts")
    def _size(self, facts: list[Any], **_: Any) -> None:
        if len(facts) > self.max_batch:
            raise ValidationError(
                f"holds {len(facts)} facts; at most {self.max_batch} are accepted per request"
            )

    @validates_schema
    def _unique_ids(self, data: Mapping[str, Any], **_: Any) -> None:
        seen: set[str] = set()
        for index, fact in enumerate(data.get("facts", [])):
            fact_id = fact.get("id")
            if fact_id is None:
                continue
            if fact_id in seen:
                raise ValidationError(f"id {fact_id!r} appears twice in the batch",
                                      f"facts.{index}.id")
            seen.add(fact_id)

    @post_load
    def _unwrap(self, data: Mapping[str, Any], **_: Any) -> list[dict[str, Any]]:
        return list(data["facts"])


class InlineFactSchema(Schema):
    """A fact given with a decision request: seen by the rules, not stored in the pool."""

    type = Identifier(NAME_PATTERN, rule=_NAME_RULE, required=True)
    department = Department(required=True)
    data = FactData(required=True)
    id = Identifier(FACT_ID_PATTERN, rule=_SUBJECT_RULE, metadata={
        "description": "an inline fact with a pooled fact's id stands in for it"})
    subject = Identifier(SUBJECT_PATTERN, rule=_SUBJECT_RULE, metadata={
        "description": "optional, as a fact copied from the pool has it: must be the "
                       "request's subject"})


class _InlineFactsOfItsSubject(Schema):
    """A request whose inline facts are about its subject. A fact copied from the pool names
    its subject: taken when that is the request's (and dropped: the request says it once),
    refused when it is another, naming the fact, rather than decided on as if it were not."""

    @validates_schema
    def _same_subject(self, data: Mapping[str, Any], **_: Any) -> None:
        subject = data.get("subject")
        wrong = {}
        for index, fact in enumerate(data.get("facts") or ()):
            if subject is None or fact.get("subject", subject) == subject:
                continue
            named = f"the fact {fact['id']!r}" if fact.get("id") else "the fact"
            wrong[f"facts.{index}.subject"] = [
                f"{named} is about {fact['subject']!r}, not {subject!r}, the subject of the "
                "request"]
        if wrong:
            raise ValidationError(wrong)

    @post_load
    def _subjects_dropped(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        data["facts"] = [{key: value for key, value in fact.items() if key != "subject"}
                         for fact in data["facts"]]
        return data


class DecisionInSchema(_InlineFactsOfItsSubject):
    """A request for a decision on one subject."""

    subject = Identifier(SUBJECT_PATTERN, rule=_SUBJECT_RULE, required=True)
    ruleset = Identifier(NAME_PATTERN, rule=_NAME_RULE, required=True)
    facts = fields.List(fields.Nested(InlineFactSchema), load_default=list)
    dry_run = fields.Boolean(load_default=False, truthy={True}, falsy={False}, metadata={
        "description": "evaluate and gate, but record no delivery and send nothing"})

    def __init__(self, *, max_facts: int = int(DEFAULT_MAX_BATCH), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_facts = max_facts

    @validates("facts")
    def _size(self, facts: list[Any], **_: Any) -> None:
        if len(facts) > self.max_facts:
            raise ValidationError(f"holds {len(facts)} facts; at most {self.max_facts}")


class DecisionQuerySchema(Schema):
    subject = Identifier(SUBJECT_PATTERN, rule=_SUBJECT_RULE, required=True)
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=200))
    since = Moment(metadata={"description": "recorded at or after: " + MOMENT_FORMATS})
    until = Moment(metadata={"description": "recorded at or before: " + MOMENT_FORMATS})


class FailedActionsQuerySchema(Schema):
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))


class VerdictSchema(Schema):
    allow = fields.Boolean(required=True)
    outcome = fields.String(required=True, metadata={"enum": ["allow", "deny", "hold"]})
    reasons = fields.List(fields.String(), required=True)
    policy_revision = fields.String(required=True, metadata={
        "description": "content hash of the policy modules and data (the bundle revision a "
                       "sidecar reports), or opa-<hash> of what a sidecar on plain files "
                       "serves"})
    opa_decision_id = fields.String(metadata={
        "description": "an OPA sidecar's decision id: its decision log entry for this verdict"})


class DecisionActionSchema(Schema):
    id = fields.String(required=True)
    type = fields.String(required=True)
    params = fields.Dict(required=True)
    rule = fields.String(required=True)
    requires = fields.List(fields.String(), metadata={
        "description": "the action types that must be dispatched before it"})
    round = fields.Integer(metadata={"description": "the round that proposed it"})
    verdict = fields.Nested(VerdictSchema, required=True)
    status = fields.String(required=True, metadata={"enum": [
        "queued", "waiting", "dispatched", "failed", "denied", "held", "blocked",
        "withdrawn", "dry_run", "recorded"]})
    delivery = fields.Dict(metadata={
        "description": "attempts, last_error, dispatched_at; not_sent (recorded); "
                       "waiting_for (waiting); blocked and prerequisite (blocked); "
                       "withdrawn"})


class FiringSchema(Schema):
    rule = fields.String(required=True)
    facts = fields.Dict(keys=fields.String(), values=fields.String(), required=True,
                        metadata={"description": "alias -> id of the fact it matched"})
    round = fields.Integer(metadata={"description": "the round it first fired in"})
    table = fields.String(metadata={"description": "a decision table's row fired: the table"})
    row = fields.Integer(metadata={"description": "a decision table's row fired: its number "
                                                  "(1-based)"})


class DecisionRecordSchema(Schema):
    decision_id = fields.String(required=True)
    subject = fields.String(required=True)
    created_at = fields.String(required=True, metadata={"format": "date-time"})
    ruleset = fields.Dict(required=True, metadata={"description": "name and version"})
    policy = fields.Dict(required=True, metadata={"description": "revision"})
    dry_run = fields.Boolean(required=True)
    caller = fields.Dict(required=True)
    trigger = fields.Dict(allow_none=True)
    facts = fields.List(fields.Dict(), required=True, metadata={
        "description": "the snapshot the rules saw"})
    fired = fields.List(fields.Nested(FiringSchema), required=True)
    derived_facts = fields.List(fields.Dict(), required=True)
    rounds = fields.Integer(metadata={
        "description": "how many times the rules ran: more than once when they react to "
                       "the policy's verdicts"})
    verdict_facts = fields.List(fields.Dict(), metadata={
        "description": "the verdicts the rules saw as facts (type verdict, department "
                       "policy), from the round each was given in"})
    actions = fields.List(fields.Nested(DecisionActionSchema), required=True)
    masked = fields.List(fields.String(), metadata={
        "description": "paths of the values replaced by DECISION_MASK_FIELDS"})
    error = fields.Dict(metadata={
        "description": "a decision the rules could not make: type, title, detail"})
    ignored_facts = fields.List(fields.Dict(), metadata={
        "description": "pooled facts left out because, as the rulesets now stand, their "
                       "department may not post their type: id, type, department, reason"})
    facts_omitted = fields.Integer(metadata={
        "description": "a failed decision on more facts than one evaluation holds keeps "
                       "only their number"})


class DecisionListSchema(Schema):
    subject = fields.String(required=True)
    decisions = fields.List(fields.Nested(DecisionRecordSchema), required=True)


class WhyNotQuerySchema(Schema):
    rule = Identifier(RULE_NAME_PATTERN, rule="a rule name: starts with a letter and holds only "
                      "letters, digits and _ (at most 64)", required=True, metadata={
                          "description": "the rule asked about, in the ruleset version the "
                                         "decision ran with"})


class WhyNotStepSchema(Schema):
    condition = fields.String(required=True, metadata={
        "description": "the condition as the rule file writes it (`unless` ones say so; "
                       "`then: $a.f, ...` for the fields the rule fills in)"})
    alias = fields.String(required=True, allow_none=True)
    status = fields.String(required=True, metadata={
        "enum": ["matched", "failed", "not reached"]})
    facts = fields.List(fields.String(), required=True, metadata={
        "description": "the fact ids it matched; when it failed, the nearest fact, or the "
                       "fact that blocked the rule"})
    detail = fields.String(required=True, metadata={
        "description": "in plain words, with the values compared"})


class WhyNotSchema(Schema):
    decision_id = fields.String(required=True)
    rule = fields.String(required=True)
    ruleset = fields.String(required=True)
    ruleset_version = fields.String(required=True, metadata={
        "description": "the version the decision ran with, which the answer is computed on"})
    fired = fields.Boolean(required=True)
    explanation = fields.String(required=True)
    steps = fields.List(fields.Nested(WhyNotStepSchema), required=True, metadata={
        "description": "each alias of when in order, the fields then fills in, each unless"})
    capped = fields.Boolean(required=True, metadata={
        "description": "the search stopped at its limit: the nearest match found within it"})


class FactSetSchema(_InlineFactsOfItsSubject):
    """Facts to decide on without a recorded decision: what-if for a hand-made case."""

    subject = Identifier(SUBJECT_PATTERN, rule=_SUBJECT_RULE, required=True)
    ruleset = Identifier(NAME_PATTERN, rule=_NAME_RULE, required=True)
    facts = fields.List(fields.Nested(InlineFactSchema), required=True)


class CandidateRulesetSchema(Schema):
    name = Identifier(NAME_PATTERN, rule=_NAME_RULE, required=True, metadata={
        "description": "the ruleset the source replaces (its `ruleset:` must say the same)"})
    source = fields.String(required=True, validate=validate.Length(min=1, max=1_000_000),
                           metadata={"description": "rule file text (YAML or JSON)"})
    scenarios = fields.String(validate=validate.Length(min=1, max=1_000_000), metadata={
        "description": "the candidate's scenario file (YAML or JSON, as `decision-service "
                       "rules test` reads it): each runs against the candidate, and the "
                       "report's scenarios holds the results"})


MAX_REPLAY_CASES = 500


class ReplayInSchema(Schema):
    """Which decisions to replay, and against what. Without candidates, each decision is
    replayed on the ruleset version and policy revision it was recorded with."""

    SELECTORS = ("decision_ids", "subject", "since", "until", "fact_sets")
    OPENAPI_EXTRA = {"anyOf": [{"required": [name]} for name in SELECTORS]}

    decision_ids = fields.List(fields.String(),
                               validate=validate.Length(min=1, max=MAX_REPLAY_CASES))
    subject = Identifier(SUBJECT_PATTERN, rule=_SUBJECT_RULE)
    since = Moment(metadata={"description": "recorded at or after: " + MOMENT_FORMATS})
    until = Moment(metadata={"description": "recorded at or before: " + MOMENT_FORMATS})
    fact_sets = fields.List(fields.Nested(FactSetSchema),
                            validate=validate.Length(min=1, max=MAX_REPLAY_CASES))
    ruleset = fields.Nested(CandidateRulesetSchema)
    policies = fields.Dict(keys=fields.String(validate=validate.Length(min=1, max=200)),
                           values=fields.String(validate=validate.Length(max=1_000_000)),
                           metadata={"description": "policy files (path -> Rego or data text) "
                                                    "replacing those in use; empty removes"})
    policies_revision = fields.String(validate=validate.Length(min=1, max=200), metadata={
        "description": "the revision of the live policies that `policies` edits (GET "
                       "/v1/policies/sources): a 409 if they have changed since, so a "
                       "candidate never mixes an old copy of one file with newer others"})
    limit = fields.Integer(load_default=MAX_REPLAY_CASES,
                           validate=validate.Range(min=1, max=MAX_REPLAY_CASES), metadata={
                               "description": "most recorded decisions a subject or a time "
                                              "range selects in one request"})
    cursor = fields.String(validate=validate.Regexp(r"^\d{13}:[A-Za-z0-9-]{1,64}$"),
                           metadata={"description": "a time range's next page: the "
                                                    "summary's next_cursor of the last one"})

    @validates_schema
    def _selects_something(self, data: Mapping[str, Any], **_: Any) -> None:
        if not any(data.get(k) for k in self.SELECTORS):
            raise ValidationError("name decision_ids, a subject, a time range (since, until) "
                                  "or fact_sets to replay")


class ReplayReportSchema(Schema):
    results = fields.List(fields.Dict(), required=True, metadata={
        "description": "per decision: decision_id, changed, diff (rules, actions, verdicts)"})
    summary = fields.Dict(required=True, metadata={
        "description": "counts and the most changed rules and policies"})
    scenarios = fields.Dict(metadata={
        "description": "with a candidate ruleset's scenarios: passed, failed (errors "
                       "included) and results (file, name, line, outcome PASS, FAIL or "
                       "ERROR, failures, fired)"})


class FactSchema(Schema):
    """A fact as the pool stores and returns it."""

    id = fields.String(required=True)
    subject = fields.String(required=True)
    type = fields.String(required=True)
    department = fields.String(required=True)
    data = fields.Dict(required=True)
    version = fields.Integer(required=True, metadata={"description": "1, then +1 per re-post"})
    recorded_at = fields.String(required=True, metadata={"format": "date-time"})
    expires_at = fields.String(allow_none=True, metadata={"format": "date-time"})


class FactListSchema(Schema):
    facts = fields.List(fields.Nested(FactSchema), required=True)


class QuotaSchema(Schema):
    max_facts_per_subject = fields.Integer(required=True)
    max_facts_per_department = fields.Integer(required=True)
    max_facts_per_type = fields.Integer(required=True)
    used = fields.Dict(required=True, metadata={
        "description": "department -> {facts: live facts, types: {type: live facts}}"})


class DecisionFailureSchema(Schema):
    ruleset = fields.String(required=True)
    decision_id = fields.String(required=True, metadata={
        "description": "the recorded decision that could not run"})
    failed_at = fields.String(required=True, metadata={"format": "date-time"})
    type = fields.String(required=True)
    title = fields.String(required=True)
    detail = fields.String(required=True)


class SubjectFactsSchema(Schema):
    subject = fields.String(required=True)
    facts = fields.List(fields.Nested(FactSchema), required=True)
    quota = fields.Nested(QuotaSchema, required=True)
    decision_failures = fields.List(fields.Nested(DecisionFailureSchema), required=True,
                                    metadata={"description": "rulesets whose last decision on "
                                              "the subject could not run, until one runs"})


def invalid_params(messages: Any, prefix: str = "") -> list[InvalidParam]:
    """Flatten marshmallow's nested error messages into dotted field paths."""
    if isinstance(messages, dict):
        params: list[InvalidParam] = []
        for key, value in messages.items():
            name = prefix if key == "_schema" else (f"{prefix}.{key}" if prefix else str(key))
            params.extend(invalid_params(value, name))
        return params
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return [InvalidParam(prefix or "body", message) for message in messages]
    if isinstance(messages, list):
        return [param for item in messages for param in invalid_params(item, prefix)]
    return [InvalidParam(prefix or "body", str(messages))]


@functools.lru_cache(maxsize=64)
def _instance(schema: type[Schema], **options: Any) -> Schema:
    return schema(**options)


def load(schema: type[Schema], payload: Any, **options: Any) -> Any:
    """Validate `payload` with `schema` (built with `options` once, then reused: building a
    marshmallow schema copies all its fields); every problem becomes one `InvalidInput`."""
    try:
        return _instance(schema, **options).load(payload)
    except ValidationError as exc:
        raise InvalidInput.from_params(invalid_params(exc.messages)) from exc


def load_facts(payload: Any, *, max_batch: int) -> list[dict[str, Any]]:
    """One fact or `{"facts": [...]}`, as a list of validated facts."""
    if isinstance(payload, dict) and "facts" in payload:
        batch: list[dict[str, Any]] = load(FactBatchInSchema, payload, max_batch=max_batch)
        return batch
    if not isinstance(payload, dict):
        raise InvalidInput.from_params([InvalidParam("body", 'must be a fact or {"facts": [...]}')])
    return [load(FactInSchema, payload)]
