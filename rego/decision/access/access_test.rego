# METADATA
# description: Tests of the API access policy.
package decision.access_test

import data.decision.access

_finance := {"id": "finance-system", "departments": ["finance"], "rulesets": [], "grants": []}

_portal := {
	"id": "procurement-portal", "departments": ["procurement"],
	"rulesets": ["procurement"], "grants": [],
}

_analyst := {"id": "analyst", "departments": [], "rulesets": ["*"], "grants": ["analyst"]}

test_a_department_may_post_its_own_facts if {
	access.allow with input as {
		"caller": _finance,
		"request": {"operation": "facts.write", "departments": ["finance"]},
	}
}

test_a_department_may_not_post_another_departments_facts if {
	result := access with input as {
		"caller": _finance,
		"request": {"operation": "facts.write", "departments": ["finance", "legal"]},
	}
	not result.allow
	result.deny == {"finance-system may not report facts for the legal department."}
}

test_decisions_only_on_granted_rulesets if {
	access.allow with input as {
		"caller": _portal,
		"request": {"operation": "decisions.create", "ruleset": "procurement", "departments": []},
	}
	result := access with input as {
		"caller": _portal,
		"request": {"operation": "decisions.create", "ruleset": "payroll", "departments": []},
	}
	result.deny == {"procurement-portal is not granted decisions on the payroll ruleset."}
}

test_inline_facts_of_another_department_are_refused if {
	result := access with input as {
		"caller": _portal,
		"request": {"operation": "decisions.create", "ruleset": "procurement", "departments": ["finance"]},
	}
	result.deny == {"procurement-portal may not give facts of the finance department with a decision."}
}

test_replay_needs_the_analyst_grant if {
	access.allow with input as {"caller": _analyst, "request": {"operation": "replays.create"}}
	not access.allow with input as {"caller": _portal, "request": {"operation": "replays.create"}}
}

test_reading_the_policies_needs_the_analyst_or_the_operator_grant if {
	access.allow with input as {"caller": _analyst, "request": {"operation": "policies.read"}}
	operator := {"id": "ops", "departments": [], "rulesets": [], "grants": ["operator"]}
	access.allow with input as {"caller": operator, "request": {"operation": "policies.read"}}
	result := access with input as {"caller": _finance, "request": {"operation": "policies.read"}}
	not result.allow
	result.deny == {"finance-system needs the analyst or the operator grant to read the policies."}
	not access.allow with input as {"caller": {"id": "x", "grants": "analyst"}, "request": {"operation": "policies.read"}}
}

test_reading_the_rule_files_needs_the_analyst_or_the_operator_grant if {
	access.allow with input as {"caller": _analyst, "request": {"operation": "rulesets.source"}}
	operator := {"id": "ops", "departments": [], "rulesets": [], "grants": ["operator"]}
	access.allow with input as {"caller": operator, "request": {"operation": "rulesets.source"}}
	result := access with input as {"caller": _finance, "request": {"operation": "rulesets.source"}}
	not result.allow
	result.deny == {"finance-system needs the analyst or the operator grant to read the rule files."}
	access.allow with input as {"caller": _finance, "request": {"operation": "rulesets.read"}}
}

test_anyone_with_a_key_may_read if {
	access.allow with input as {"caller": _finance, "request": {"operation": "facts.read"}}
	access.allow with input as {"caller": _finance, "request": {"operation": "decisions.read"}}
}

test_unknown_operations_are_refused if {
	result := access with input as {"caller": _analyst, "request": {"operation": "drop_tables"}}
	not result.allow
	result.deny == {"Unknown operation drop_tables."}
}

# --- missing or mistyped input never allows ----------------------------------------------

test_a_write_that_names_no_departments_is_refused if {
	some operation in ["facts.write", "facts.retract", "decisions.create"]
	result := access with input as {"caller": _analyst, "request": {"operation": operation, "ruleset": "procurement"}}
	not result.allow
	"analyst: the request does not say which departments it speaks for." in result.deny
}

test_a_decision_that_names_no_ruleset_is_refused if {
	result := access with input as {"caller": _analyst, "request": {"operation": "decisions.create", "departments": []}}
	not result.allow
	result.deny == {"analyst is not granted decisions on the (unnamed) ruleset."}
}

test_a_caller_without_grants_or_departments_is_refused if {
	bare := {"id": "bare"}
	result := access with input as {"caller": bare, "request": {"operation": "replays.create"}}
	result.deny == {"bare needs the analyst grant to replay decisions."}
	posted := access with input as {"caller": bare, "request": {"operation": "facts.write", "departments": ["finance"]}}
	posted.deny == {"bare may not report facts for the finance department."}
	not access.allow with input as {"caller": {"id": "x", "grants": "operator"}, "request": {"operation": "actions.operate"}}
}

test_no_input_at_all_is_refused if {
	result := access with input as {}
	not result.allow
	result.deny == {"Unknown operation (none)."}
}

test_any_caller_may_ask_who_it_is if {
	access.allow with input as {"caller": _finance, "request": {"operation": "caller.read"}}
	access.allow with input as {"caller": {"id": "bare"}, "request": {"operation": "caller.read"}}
}
