"""Who is calling, and whether they may: API keys to callers, the access policy to verdicts.

Keys are stored hashed (SHA-256) in `DECISION_API_KEYS_FILE`; a presented key is
hashed and compared with every entry in constant time. What a caller may do is not
coded here: the access policy in `rego/` (`DECISION_ACCESS_POLICY_PATH`) decides,
with `input = {caller, request}`. With no keys file the service is open (for local
use on loopback only) and every caller is `anonymous`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from marshmallow import Schema, ValidationError, fields, validate

from app.policy.gate import ALLOW, PolicyGate
from app.shared.errors import ConfigurationError, Forbidden, Unauthorized
from app.shared.schemas import NAME_PATTERN, invalid_params


@dataclass(frozen=True)
class Caller:
    id: str
    departments: tuple[str, ...]
    rulesets: tuple[str, ...] = ()
    grants: tuple[str, ...] = ()

    def as_input(self) -> dict[str, Any]:
        return {"id": self.id, "departments": list(self.departments),
                "rulesets": list(self.rulesets), "grants": list(self.grants)}


ANONYMOUS = Caller("anonymous", ("*",), ("*",), ("*",))
BUNDLE_GRANT = "policy-bundle"  # may read the policy bundle (an OPA sidecar's key)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "dsk_" + secrets.token_urlsafe(32)


class _ApiKeySchema(Schema):
    id = fields.String(required=True, validate=validate.Regexp(NAME_PATTERN))
    sha256 = fields.String(required=True, validate=validate.Regexp(r"^[0-9a-f]{64}$", error=(
        "must be the SHA-256 of the key in lowercase hex (decision-service keys new)")))
    departments = fields.List(fields.String(), load_default=list)
    rulesets = fields.List(fields.String(), load_default=list)
    grants = fields.List(fields.String(), load_default=list)


class _ApiKeysFileSchema(Schema):
    keys = fields.List(fields.Nested(_ApiKeySchema), required=True)


class ApiKeys:
    def __init__(self, entries: list[tuple[str, Caller]]) -> None:
        self._entries = entries

    @classmethod
    def load(cls, path: Path) -> ApiKeys:
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
            loaded = _ApiKeysFileSchema().load(document)
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigurationError(f"DECISION_API_KEYS_FILE {path}: {exc}") from exc
        except ValidationError as exc:
            problems = "; ".join(f"{p.name}: {p.reason}" for p in invalid_params(exc.messages))
            raise ConfigurationError(f"DECISION_API_KEYS_FILE {path}: {problems}") from exc
        entries = [(entry["sha256"], Caller(entry["id"], tuple(entry["departments"]),
                                            tuple(entry["rulesets"]), tuple(entry["grants"])))
                   for entry in loaded["keys"]]
        return cls(entries)

    def identify(self, key: str) -> Caller | None:
        digest = hash_key(key)
        found = None
        for stored, caller in self._entries:  # every entry, so the time says nothing
            if hmac.compare_digest(stored, digest):
                found = caller
        return found


class AccessControl:
    def __init__(self, keys: ApiKeys | None, gate: PolicyGate) -> None:
        self.keys = keys
        self.gate = gate

    @property
    def open(self) -> bool:
        return self.keys is None

    def authenticate(self, presented: str | None) -> Caller:
        if self.keys is None:
            return ANONYMOUS
        if not presented:
            raise Unauthorized("send an API key as 'Authorization: Bearer <key>' or 'X-API-Key'")
        caller = self.keys.identify(presented)
        if caller is None:
            raise Unauthorized("the API key is not valid")
        return caller

    def authorize_bundle(self, caller: Caller) -> None:
        """The one decision the access policy does not make: who may read the policy bundle.
        The access policy comes with that bundle, so an OPA sidecar could not decide it
        before it has it. A key with the `policy-bundle` grant may; Forbidden otherwise."""
        if self.keys is not None and BUNDLE_GRANT not in caller.grants:
            reason = (f"{caller.id} may not read the policy bundle: only a key with the "
                      f"{BUNDLE_GRANT} grant (an OPA sidecar's) may.")
            raise Forbidden(reason, [reason])

    def allows(self, caller: Caller, operation: str, **resource: Any) -> bool:
        """Whether the access policy allows it (for what a page offers; the request itself
        is authorized when made). PolicyUnavailable (503) when the engine cannot decide."""
        try:
            self.authorize(caller, operation, **resource)
        except Forbidden:
            return False
        return True

    def authorize(self, caller: Caller, operation: str, **resource: Any) -> None:
        """Forbidden (403) with the policy's reasons unless the access policy allows it;
        PolicyUnavailable (503) when the policy engine cannot decide."""
        if self.keys is None:
            return
        verdict = self.gate.authorize(caller.as_input(), {"operation": operation, **resource})
        if verdict.outcome != ALLOW:
            raise Forbidden(verdict.reasons[0], list(verdict.reasons))
