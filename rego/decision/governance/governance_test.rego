# METADATA
# description: Tests of the procurement governance policy.
package decision.governance_test

import data.decision.governance

_order(overrides) := object.union(
	{
		"id": "act-1", "type": "issue_purchase_order", "rule": "issue_purchase_order",
		"params": {
			"request_id": "PR-1", "amount": 120000, "vendor": "Globex",
			"requester": "alice", "approver": "bob", "urgency": "normal",
		},
	},
	overrides,
)

_budget(available) := {
	"id": "f-bud", "type": "budget_check", "department": "finance",
	"data": {"request_id": "PR-1", "available": available, "cost_center": "CC-7", "approver": "bob"},
}

_legal(status) := {
	"id": "f-leg", "type": "legal_review", "department": "legal",
	"data": {"request_id": "PR-1", "status": status, "reviewer": "carol"},
}

_input(action, facts) := {
	"action": action, "subject": "PR-1", "facts": facts,
	"decision": {"id": "d-1", "ruleset": "procurement", "ruleset_version": "v", "dry_run": false},
	"caller": {"id": "procurement-portal", "departments": ["procurement"]},
}

test_order_within_budget_with_legal_clearance_is_allowed if {
	result := governance with input as _input(_order({}), [_budget(300000), _legal("cleared")])
	result.allow
	count(result.deny) == 0
}

test_order_above_the_available_budget_is_denied if {
	result := governance with input as _input(_order({}), [_budget(100000), _legal("cleared")])
	not result.allow
	result.deny == {"Purchase order for PR-1 (EUR 120000) exceeds the EUR 100000 available in cost center CC-7."}
}

test_order_without_a_budget_check_is_denied if {
	result := governance with input as _input(_order({}), [_legal("cleared")])
	"Purchase order for PR-1 has no budget check from finance on file." in result.deny
}

test_order_to_a_sanctioned_vendor_is_denied if {
	order := _order({"params": object.union(_order({}).params, {"vendor": "acme shell corp"})})
	result := governance with input as _input(order, [_budget(300000), _legal("cleared")])
	not result.allow
	some msg in result.deny
	startswith(msg, "Vendor acme shell corp is on the EU consolidated sanctions list")
}

test_large_order_without_legal_clearance_is_denied if {
	result := governance with input as _input(_order({}), [_budget(300000), _legal("rejected")])
	result.deny == {"Purchase orders above EUR 100000 need a cleared legal review; PR-1 has none."}
}

test_small_order_needs_no_legal_review if {
	order := _order({"params": object.union(_order({}).params, {"amount": 5000})})
	result := governance with input as _input(order, [_budget(300000)])
	result.allow
}

test_requester_may_not_approve_their_own_order if {
	order := _order({"params": object.union(_order({}).params, {"approver": "alice"})})
	result := governance with input as _input(order, [_budget(300000), _legal("cleared")])
	result.deny == {"alice requested PR-1 and may not also approve it (segregation of duties)."}
}

test_unknown_action_types_are_not_allowed if {
	result := governance with input as _input({"id": "a", "type": "wire_money", "params": {}}, [])
	not result.allow
	result.deny == {"Action type \"wire_money\" is not on the list of approved actions."}
}

test_notifications_are_allowed if {
	action := {"id": "a", "type": "notify_finance", "params": {"request_id": "PR-1"}}
	result := governance with input as _input(action, [])
	result.allow
}
