"""The decision path: facts to rules to verdicts to a record, and what a record explains.

    path      the decision path of a running service: posted facts, decisions, triggered
              decisions, redrive
    decision  one decision: the rounds of rules and verdicts, each action's status
    log       the decision log: records, idempotency, the outbox entries, atomically
    archive   the exact ruleset and policy sources each recorded decision used
    whynot    why a rule did not fire in a recorded decision
    masking   sensitive fact fields masked in records

May import `app.shared`, `app.facts`, `app.rules`, `app.policy` and `app.dispatch`.
"""
