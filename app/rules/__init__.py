"""The rules engine: rule files as data, compiled to durable_rules, forward chaining.

    loader    rule file text -> validated `Ruleset` (or every problem, located); the file
              as a whole: top level, facts, ownership, requires
    checks    one rule's parts: names, conditions, references, then-steps
    table_checks  decision tables checked as rules, each row one rule
    fields    which fields each fact type has; warnings for a field no fact has
    tables    decision tables: what their cells mean; overlaps, unreachable rows and gaps
    model     the validated form, and what each condition means
    regex     the `matches` dialect, checked and run in RE2
    compiler  `Ruleset` -> durable_rules definition
    engine    `evaluate(ruleset, facts) -> Evaluation`, safely around the C core
    registry  active versions per name, reload from the rules directory
    ownership which department may post which fact type

May import `app.shared` only.
"""

from app.rules.engine import Evaluation, Firing, ProposedAction, evaluate
from app.rules.loader import load_ruleset_file, parse_ruleset
from app.rules.model import Ruleset
from app.rules.registry import RulesetRegistry

__all__ = ["Evaluation", "Firing", "ProposedAction", "Ruleset", "RulesetRegistry", "evaluate",
           "load_ruleset_file", "parse_ruleset"]
