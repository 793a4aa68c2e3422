# METADATA
# title: Procurement governance
# description: |
#   Every action the decision service's rules propose is checked here before it is
#   dispatched. An action is allowed only when its type is on the approved list and
#   no rule below denies it; each denial says why, in words a requester can act on.
package decision.governance

# METADATA
# description: Allowed only for an approved action type that nothing denies.
default allow := false

allow if {
	input.action.type in data.decision.catalog.actions
	count(deny) == 0
}

# METADATA
# description: Action types nobody approved are never dispatched.
deny contains msg if {
	not input.action.type in data.decision.catalog.actions
	msg := sprintf("Action type %q is not on the list of approved actions.", [input.action.type])
}

# METADATA
# description: No purchase order above the budget finance confirmed for the request.
deny contains msg if {
	input.action.type == "issue_purchase_order"
	some budget in _budget_checks(input.action.params.request_id)
	input.action.params.amount > budget.data.available
	msg := sprintf(
		"Purchase order for %s (%s %v) exceeds the %s %v available in cost center %s.",
		[
			input.action.params.request_id, _currency, input.action.params.amount,
			_currency, budget.data.available, budget.data.cost_center,
		],
	)
}

# METADATA
# description: No purchase order without a budget check from finance.
deny contains msg if {
	input.action.type == "issue_purchase_order"
	count(_budget_checks(input.action.params.request_id)) == 0
	msg := sprintf("Purchase order for %s has no budget check from finance on file.",
		[input.action.params.request_id])
}

# METADATA
# description: No order placed with, or expedited for, a sanctioned vendor.
deny contains msg if {
	input.action.type in {"issue_purchase_order", "expedite_delivery"}
	some entry in data.decision.sanctions.vendors
	lower(entry.name) == lower(input.action.params.vendor)
	msg := sprintf("Vendor %s is on the %s sanctions list (reference %s): no order may be placed.",
		[input.action.params.vendor, entry.list, entry.reference])
}

# METADATA
# description: Large purchase orders need a cleared legal review on file.
deny contains msg if {
	input.action.type == "issue_purchase_order"
	input.action.params.amount > data.decision.limits.legal_review_threshold
	not _legally_cleared(input.action.params.request_id)
	msg := sprintf("Purchase orders above %s %v need a cleared legal review; %s has none.",
		[_currency, data.decision.limits.legal_review_threshold, input.action.params.request_id])
}

# METADATA
# description: Whoever requested a purchase may not also approve it.
deny contains msg if {
	input.action.type == "issue_purchase_order"
	input.action.params.requester == input.action.params.approver
	msg := sprintf("%s requested %s and may not also approve it (segregation of duties).",
		[input.action.params.requester, input.action.params.request_id])
}

_currency := data.decision.limits.currency

_budget_checks(request_id) := [fact |
	some fact in input.facts
	fact.type == "budget_check"
	fact.data.request_id == request_id
]

_legally_cleared(request_id) if {
	some fact in input.facts
	fact.type == "legal_review"
	fact.data.request_id == request_id
	fact.data.status == "cleared"
}
