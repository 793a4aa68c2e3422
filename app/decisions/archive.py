"""The exact ruleset source and policy files every recorded decision used, kept so that
replay can pin a decision to its versions long after the files have changed.

Entries are written with the decision (in its transaction, the first time a process
uses a version) and never change: a version is a content hash of what is stored.
"""

from __future__ import annotations

import json
from typing import cast

import redis

from app.policy.files import PolicySet
from app.rules import Ruleset, parse_ruleset
from app.shared import keys
from app.shared.errors import NotFound
from app.shared.store import unavailable_on_outage


class Archive:
    def __init__(self, redis_client: redis.Redis) -> None:
        self._redis = redis_client
        self._written: set[str] = set()

    def entries_for(self, ruleset: Ruleset, policies: PolicySet | None) -> dict[str, str]:
        """Archive entries a decision on these versions should write (new to this process)."""
        entries = {}
        ruleset_key = keys.archived_ruleset(ruleset.name, ruleset.version)
        if ruleset_key not in self._written:
            entries[ruleset_key] = ruleset.source
        if policies is not None:
            policies_key = keys.archived_policies(policies.revision)
            if policies_key not in self._written:
                entries[policies_key] = json.dumps(dict(policies.sources), sort_keys=True)
        return entries

    def written(self, entries: dict[str, str]) -> None:
        self._written.update(entries)

    def ruleset_source(self, name: str, version: str) -> str:
        """The text of a ruleset version a decision ran with; NotFound if none did."""
        with unavailable_on_outage():
            source = self._redis.get(keys.archived_ruleset(name, version))
        if source is None:
            raise NotFound(f"ruleset {name} version {version} is not archived")
        return cast(str, source)

    def ruleset(self, name: str, version: str) -> Ruleset:
        return parse_ruleset(self.ruleset_source(name, version), f"{name}@{version}.yaml")

    def policy_sources(self, revision: str) -> dict[str, str]:
        """The policy files (path -> text) of a revision a decision ran with; NotFound if
        none did, or if an OPA sidecar on files of its own judged it."""
        with unavailable_on_outage():
            raw = self._redis.get(keys.archived_policies(revision))
        if raw is None:
            raise NotFound(f"policy revision {revision} is not archived (policies evaluated by "
                           "an OPA sidecar are its own: replay them with candidate policies)")
        sources: dict[str, str] = json.loads(cast(str, raw))
        return sources

    def policies(self, revision: str) -> PolicySet:
        return PolicySet.from_sources(self.policy_sources(revision))
