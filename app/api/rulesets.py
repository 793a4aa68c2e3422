"""Which rulesets are active, in which version, and which rule files were rejected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint
from marshmallow import Schema, fields

from app.api.openapi import documented
from app.api.request_context import authorize, service
from app.rules import Ruleset

bp = Blueprint("rulesets", __name__)


class RulesetSummarySchema(Schema):
    name = fields.String(required=True)
    version = fields.String(required=True, metadata={"description": "content hash of the file"})
    file = fields.String(required=True)
    description = fields.String()
    rules = fields.List(fields.String(), required=True, metadata={"description": "rule names"})
    triggers = fields.List(fields.String())
    facts = fields.Dict(metadata={"description": "fact type -> the departments that may post "
                                                 "it"})
    warnings = fields.List(fields.String(), metadata={
        "description": "what the file leaves open, such as fact types no department owns"})


class RuleProblemSchema(Schema):
    file = fields.String(required=True)
    line = fields.Integer(allow_none=True)
    rule = fields.String(allow_none=True)
    message = fields.String(required=True)


class RulesetListSchema(Schema):
    rulesets = fields.List(fields.Nested(RulesetSummarySchema), required=True)
    problems = fields.List(fields.Nested(RuleProblemSchema), required=True, metadata={
        "description": "rule files rejected at the last reload (their previous version, if "
                       "any, stays active)"})


@bp.get("/v1/rulesets")
@documented(summary="Active rulesets and rejected rule files (this worker's view)",
            tag="rules", responses={200: ("the active rulesets", RulesetListSchema)})
def list_rulesets() -> dict[str, Any]:
    authorize("rulesets.read")
    registry = service().rulesets
    return {
        "rulesets": [{"name": r.name, "version": r.version, "file": _shown(r.file),
                      "description": r.description, "rules": [rule.name for rule in r.rules],
                      "triggers": list(r.triggers),
                      "facts": {t.name: list(t.owners) for t in r.fact_types.values()},
                      "warnings": [str(w) for w in r.warnings]} for r in registry.active()],
        "problems": [{"file": _shown(p.file), "line": p.line, "rule": p.rule,
                      "message": p.message} for p in registry.problems],
    }


def _shown(file: str) -> str:
    """A rule file as its path in the rules directory (as policy files are shown): where
    the server keeps that directory is not the caller's business."""
    path = Path(file)
    try:
        return path.resolve().relative_to(service().settings.rules_dir.resolve()).as_posix()
    except ValueError:  # not a file of the directory (an archived version's name)
        return path.name


class RulesetSourceSchema(Schema):
    name = fields.String(required=True)
    version = fields.String(required=True, metadata={"description": "content hash of the file"})
    file = fields.String(required=True, metadata={
        "description": "the file it was loaded from (an archived version: name@version.yaml)"})
    source = fields.String(required=True, metadata={"description": "the rule file's text"})
    rules = fields.List(fields.String(), required=True, metadata={"description": "rule names"})
    live = fields.Boolean(required=True, metadata={
        "description": "whether this is the active version of the ruleset"})


def ruleset_source(ruleset: Ruleset, *, live: bool) -> dict[str, Any]:
    return {"name": ruleset.name, "version": ruleset.version, "file": _shown(ruleset.file),
            "source": ruleset.source, "rules": [rule.name for rule in ruleset.rules],
            "live": live}


@bp.get("/v1/rulesets/<name>")
@documented(summary="The active version of a ruleset with its source (a what-if starts "
                    "from it)", tag="rules",
            responses={200: ("the active version and its text", RulesetSourceSchema)})
def get_ruleset(name: str) -> dict[str, Any]:
    authorize("rulesets.source", ruleset=name)
    return ruleset_source(service().rulesets.get(name), live=True)


@bp.get("/v1/rulesets/<name>/versions/<version>")
@documented(summary="A ruleset version a decision ran with, from the archive", tag="rules",
            responses={200: ("the version and its text", RulesetSourceSchema)})
def get_ruleset_version(name: str, version: str) -> dict[str, Any]:
    authorize("rulesets.source", ruleset=name)
    ruleset, live = service().replays.ruleset_version(name, version)
    return ruleset_source(ruleset, live=live)
