"""Every Redis key the service uses, built here and nowhere else.

A subject's keys carry the subject as a `{hash tag}`, so they share one hash slot
and one subject's writes can be a single transaction on Redis Cluster too.
Keys that are looked up by something other than the subject (a fact id) live in
their own slot and only ever point back to the subject's keys.
"""

from __future__ import annotations

PREFIX = "ds"


def subject_facts(subject: str) -> str:
    """Hash: fact id -> stored fact (JSON), the subject's pool."""
    return f"{PREFIX}:{{{subject}}}:facts"


def subject_fact_expiry(subject: str) -> str:
    """Sorted set: fact id -> expiry (epoch ms), for facts posted with ttl_seconds."""
    return f"{PREFIX}:{{{subject}}}:fact-expiry"


def subject_fact_counts(subject: str) -> str:
    """Hash: "d:<department>" and "t:<department>:<type>" -> live facts, for the quotas."""
    return f"{PREFIX}:{{{subject}}}:fact-counts"


def subject_decision_failures(subject: str) -> str:
    """Hash: ruleset -> the last decision on the subject that could not run (JSON), until
    one runs again."""
    return f"{PREFIX}:{{{subject}}}:decision-failures"


def fact_owner(fact_id: str) -> str:
    """String: the subject a fact id belongs to (expires with the fact)."""
    return f"{PREFIX}:fact:{fact_id}"


def decision_subject(decision_id: str) -> str:
    """String: the subject a decision id belongs to (expires with the record)."""
    return f"{PREFIX}:decision:{decision_id}"


def decisions_by_time() -> str:
    """Sorted set, all scores 0: "<created epoch ms, 13 digits>:<decision id>" of every
    decision, so that a time range is a range of members, paged with a cursor."""
    return f"{PREFIX}:{{log}}:decisions-by-time"


def decision_record(subject: str, decision_id: str) -> str:
    """String: the decision record (JSON), written once and never changed."""
    return f"{PREFIX}:{{{subject}}}:decision:{decision_id}"


def decision_action_status(subject: str, decision_id: str) -> str:
    """Hash: action id -> delivery status (JSON), which changes as the outbox delivers."""
    return f"{PREFIX}:{{{subject}}}:decision:{decision_id}:actions"


def subject_decisions(subject: str) -> str:
    """Sorted set: decision id -> created (epoch ms), the subject's decisions."""
    return f"{PREFIX}:{{{subject}}}:decisions"


def idempotency(subject: str, caller: str, key: str) -> str:
    """String: the decision an Idempotency-Key produced, with the request's fingerprint."""
    return f"{PREFIX}:{{{subject}}}:idempotency:{caller}:{key}"


def subject_sent_actions(subject: str) -> str:
    """Hash: action id -> the decision that queued it; an action is sent once per subject."""
    return f"{PREFIX}:{{{subject}}}:sent-actions"


def outbox(subject: str) -> str:
    """Hash: "<decision id>:<action id>" -> outbox entry (JSON) of an allowed action."""
    return f"{PREFIX}:{{{subject}}}:outbox"


def outbox_fences(subject: str) -> str:
    """Hash: "<decision id>:<action id>" -> the fencing token of the claim that holds it."""
    return f"{PREFIX}:{{{subject}}}:outbox-fences"


def outbox_waiting(subject: str) -> str:
    """Hash: outbox field of an action that requires others -> the outbox fields (JSON
    list) of those not dispatched yet; it is not scheduled while it has any."""
    return f"{PREFIX}:{{{subject}}}:outbox-waiting"


def outbox_dependents(subject: str) -> str:
    """Hash: outbox field -> the actions waiting for it (JSON list of {field, status: the
    key of their decision's action statuses, action_id, decision_id, type, member})."""
    return f"{PREFIX}:{{{subject}}}:outbox-dependents"


# The dispatch schedule and the trigger queue each live in one slot of their own, so that
# their scripts can claim work atomically on Redis Cluster too.
def dispatch_due() -> str:
    """Sorted set: outbox member -> when it may next be attempted (epoch ms)."""
    return f"{PREFIX}:{{dispatch}}:due"


def dispatch_fence() -> str:
    """Integer: the last fencing token handed to a dispatcher's claim."""
    return f"{PREFIX}:{{dispatch}}:fence"


def dispatch_failed() -> str:
    """Sorted set: outbox member parked as failed -> when its decision expires (epoch ms)."""
    return f"{PREFIX}:{{dispatch}}:failed"


def triggers_due() -> str:
    """Sorted set: "<subject>|<ruleset>" -> when the triggered decision is due (epoch ms)."""
    return f"{PREFIX}:{{triggers}}:due"


def subject_trigger_pending(subject: str, ruleset: str) -> str:
    """List: the facts (JSON each) that asked for a decision of `ruleset` on the subject and
    have not been decided on yet; in the subject's slot, so that they are written with the
    facts."""
    return f"{PREFIX}:{{{subject}}}:triggers:{ruleset}"


def triggers_parked() -> str:
    """Sorted set: "<subject>|<ruleset>" whose triggered decision cannot run -> since when
    (epoch ms), for an operator."""
    return f"{PREFIX}:{{triggers}}:parked"


def triggers_attempts() -> str:
    """Hash: "<subject>|<ruleset>" -> its triggered decision's failed attempts and the last
    error (JSON), while it retries or is parked."""
    return f"{PREFIX}:{{triggers}}:attempts"


def whatifs_running() -> str:
    """Sorted set: token of a what-if running in a sandbox -> until when it holds its slot
    (epoch ms), so that only so many hold web workers at once."""
    return f"{PREFIX}:whatifs:running"


def archived_ruleset(name: str, version: str) -> str:
    """String: the source of a ruleset version a decision used (for replay)."""
    return f"{PREFIX}:archive:ruleset:{name}:{version}"


def archived_policies(revision: str) -> str:
    """String: the policy files (JSON of name -> text) of a revision a decision used."""
    return f"{PREFIX}:archive:policies:{revision}"


def policy_processes() -> str:
    """Hash: "<host>:<pid>" of a running process -> the policies it has live and the last
    change it rejected (JSON, with when it said so), for `decision-service policy status`."""
    return f"{PREFIX}:policy:processes"


def policy_rejected(disk_revision: str) -> str:
    """String: when a policy directory with this content was first rejected, so that a
    change is counted once however many processes reject it."""
    return f"{PREFIX}:policy:rejected:{disk_revision}"


def metrics() -> str:
    """Hash: "<metric>|<labels>" -> total, summed over every process."""
    return f"{PREFIX}:metrics"
