# METADATA
# description: Tests of the procurement governance policy, allowed cases and every way to fail.
package decision.governance_test

import data.decision.governance

_request(overrides) := {
	"id": "f-req", "type": "purchase_request", "department": "procurement",
	"data": object.union(
		{"request_id": "PR-1", "amount": 120000, "vendor": "Globex", "requester": "alice"},
		overrides,
	),
}

_budget(overrides) := {
	"id": "f-bud", "type": "budget_check", "department": "finance",
	"data": object.union(
		{"request_id": "PR-1", "available": 300000, "cost_center": "CC-7", "approver": "bob"},
		overrides,
	),
}

_risk(overrides) := {
	"id": "f-rsk", "type": "risk_assessment", "department": "risk",
	"data": object.union({"request_id": "PR-1", "score": 0.2}, overrides),
}

_legal(overrides) := {
	"id": "f-leg", "type": "legal_review", "department": "legal",
	"data": object.union({"request_id": "PR-1", "status": "cleared", "reviewer": "carol"}, overrides),
}

_facts := [_request({}), _budget({}), _risk({}), _legal({})]

_order(overrides) := {
	"id": "act-1", "type": "issue_purchase_order", "rule": "issue_purchase_order",
	"params": object.union(
		{
			"request_id": "PR-1", "amount": 120000, "vendor": "Globex",
			"requester": "alice", "approver": "bob", "urgency": "normal",
		},
		overrides,
	),
}

_input(action, facts) := {
	"action": action, "subject": "PR-1", "facts": facts,
	"decision": {"id": "d-1", "ruleset": "procurement", "ruleset_version": "v", "dry_run": false},
	"caller": {"id": "procurement-portal", "departments": ["procurement"]},
}

_judge(action, facts) := result if {
	result := governance with input as _input(action, facts)
}

_denied_with(action, facts, reason) if {
	result := _judge(action, facts)
	not result.allow
	reason in result.deny
}

# --- allowed -----------------------------------------------------------------------------

test_order_within_budget_with_legal_clearance_is_allowed if {
	result := _judge(_order({}), _facts)
	result.allow
	count(result.deny) == 0
}

test_small_order_needs_no_legal_review if {
	facts := [_request({"amount": 5000}), _budget({}), _risk({})]
	result := _judge(_order({"amount": 5000}), facts)
	result.allow
}

test_notifications_are_allowed_for_a_request_on_file if {
	result := _judge({"id": "a", "type": "notify_requester", "params": {"request_id": "PR-1"}}, [_request({})])
	result.allow
}

test_facts_of_other_requests_do_not_count if {
	other := _budget({"request_id": "PR-2", "available": 1})
	result := _judge(_order({}), array.concat(_facts, [other]))
	result.allow
}

# --- values ------------------------------------------------------------------------------

test_order_above_the_available_budget_is_denied if {
	result := _judge(_order({}), [_request({}), _budget({"available": 100000}), _risk({}), _legal({})])
	not result.allow
	result.deny == {"Purchase order for PR-1 (EUR 120000) exceeds the EUR 100000 available in cost center CC-7."}
}

test_large_order_without_legal_clearance_is_denied if {
	result := _judge(_order({}), [_request({}), _budget({}), _risk({}), _legal({"status": "rejected"})])
	result.deny == {"Purchase orders above EUR 100000 need a cleared legal review; PR-1 has none."}
}

test_large_order_with_no_legal_review_at_all_is_denied if {
	result := _judge(_order({}), [_request({}), _budget({}), _risk({})])
	result.deny == {"Purchase orders above EUR 100000 need a cleared legal review; PR-1 has none."}
}

test_a_risky_vendor_is_denied if {
	_denied_with(_order({}), [_request({}), _budget({}), _risk({"score": 0.7}), _legal({})], "Purchase order for PR-1: the risk score 0.7 is not below 0.5.")
}

test_a_non_positive_amount_is_denied if {
	facts := [_request({"amount": -5}), _budget({}), _risk({})]
	_denied_with(_order({"amount": -5}), facts, "Purchase order for PR-1: the amount -5 is not positive.")
}

test_the_order_must_state_what_is_on_file if {
	_denied_with(_order({"amount": 90000}), _facts, "Purchase order for PR-1: its amount is not the one on file (120000).")
	_denied_with(_order({"approver": null}), _facts, "Purchase order for PR-1: its approver is not the one on file (bob).")
	order := {"id": "act-1", "type": "issue_purchase_order", "params": {"request_id": "PR-1"}}
	_denied_with(order, _facts, "Purchase order for PR-1: its vendor is not the one on file (Globex).")
}

test_an_action_without_a_request_id_is_denied if {
	_denied_with(_order({"request_id": 7}), _facts, "Purchase order names no request (request_id is missing or not a text).")
}

test_unknown_action_types_are_not_allowed if {
	result := _judge({"id": "a", "type": "wire_money", "params": {}}, [])
	not result.allow
	result.deny == {"Action type wire_money is not on the list of approved actions."}
}

# --- missing, duplicated, mistyped or foreign facts --------------------------------------

test_order_without_a_budget_check_is_denied if {
	_denied_with(_order({}), [_request({}), _risk({}), _legal({})], "Purchase order for PR-1: no budget check from finance is on file.")
}

test_a_budget_check_without_cost_center_or_available_is_denied if {
	no_center := json.remove(_budget({}), ["data/cost_center"])
	_denied_with(_order({}), [_request({}), no_center, _risk({}), _legal({})], "Purchase order for PR-1: the budget check's cost_center is missing or not a text.")
	no_available := json.remove(_budget({"available": 1000}), ["data/available"])
	_denied_with(_order({}), [_request({}), no_available, _risk({}), _legal({})], "Purchase order for PR-1: the budget check's available is missing or not a number.")
}

test_an_available_amount_written_as_text_is_denied if {
	facts := [_request({}), _budget({"available": "50000"}), _risk({}), _legal({})]
	_denied_with(_order({}), facts, "Purchase order for PR-1: the budget check's available is missing or not a number.")
}

test_a_second_purchase_request_makes_the_request_ambiguous if {
	some amount in [null, true, "120000"]
	second := object.union(_request({"amount": amount}), {"id": "f-req-2"})
	_denied_with(_order({}), array.concat(_facts, [second]), "Purchase order for PR-1: 2 purchase requests are on file; exactly one from procurement is expected.")
}

test_a_second_purchase_request_without_an_amount_is_denied if {
	second := object.union(json.remove(_request({}), ["data/amount"]), {"id": "f-req-2"})
	result := _judge(_order({}), array.concat(_facts, [second]))
	not result.allow
	"Purchase order for PR-1: the purchase request's amount is missing or not a number." in result.deny
}

test_a_budget_check_from_another_department_is_denied if {
	foreign := object.union(_budget({"available": 99999999}), {"department": "procurement"})
	_denied_with(_order({}), [_request({}), foreign, _risk({}), _legal({})], "Purchase order for PR-1: the budget check on file comes from procurement; only finance may report it.")
}

test_a_fact_from_no_named_department_says_so_never_null if {
	nameless := object.union(_budget({}), {"department": null})
	_denied_with(_order({}), [_request({}), nameless, _risk({}), _legal({})], "Purchase order for PR-1: the budget check on file comes from no named department; only finance may report it.")
}

test_an_action_type_that_is_no_text_is_named_as_such if {
	some msg in governance.deny with input as {"action": {"type": null, "params": {"request_id": "PR-1"}}, "facts": _facts}
	msg == "Action type (none, or not a text) is not on the list of approved actions."
}

test_a_legal_clearance_from_another_department_is_denied if {
	foreign := object.union(_legal({}), {"department": "procurement"})
	_denied_with(_order({}), [_request({}), _budget({}), _risk({}), foreign], "Purchase order for PR-1: the legal review on file comes from procurement; only legal may report it.")
}

test_a_notification_without_its_request_on_file_is_denied if {
	_denied_with({"id": "a", "type": "notify_requester", "params": {"request_id": "PR-1"}}, [], "Note to the requester for PR-1: no purchase request from procurement is on file.")
}

# --- limits the compliance team forgot to set never allow --------------------------------

test_without_a_legal_threshold_every_order_needs_legal_review if {
	facts := [_request({"amount": 5}), _budget({}), _risk({})]
	result := governance with input as _input(_order({"amount": 5}), facts)
		with data.decision.limits as {"currency": "EUR", "max_risk_score": 0.5}
	not result.allow
	"Purchase orders above EUR (threshold not set) need a cleared legal review; PR-1 has none." in result.deny
}

test_without_a_currency_a_denial_still_says_why if {
	result := governance with input as _input(_order({}), [_request({}), _budget({"available": 1}), _risk({}), _legal({})])
		with data.decision.limits as {"legal_review_threshold": 100000, "max_risk_score": 0.5}
	"Purchase order for PR-1 ((currency not set) 120000) exceeds the (currency not set) 1 available in cost center CC-7." in result.deny
}

test_without_a_risk_limit_no_order_is_allowed if {
	result := governance with input as _input(_order({}), _facts)
		with data.decision.limits as {"currency": "EUR", "legal_review_threshold": 100000}
	not result.allow
	"Purchase order for PR-1: the risk score 0.2 is not below the limit (none is set, or it is not a number)." in result.deny
}

# --- names are compared after folding ----------------------------------------------------

test_sanctioned_vendors_are_denied_however_they_are_written if {
	every vendor in [
		"Acme Shell Corp", "acme shell corp", "ACME SHELL CORP ", "Acme  Shell Corp",
		"Acme Shell Corp.", "Acme Shell Ltd", "Acme Shell", "Acme\u00a0Shell Corp",
		"Acme\u200bShell Corp", "Acme Shell C\u043erp", "\u0410cme Shell Corp", "Acme-Shell, Inc.",
		"\uff21\uff43\uff4d\uff45 Shell Corp", "Acmé Shell Corp", "Acme ShellCorp", "AcmeShellCorp",
		"Acme Shell Corp\u2122", "The Acme Shell Corp", "Acme SheII Corp", "Acme She11 Corp",
		"Acme \u0405hell Corp", "\u0391cme Shell Corp", "Acme Shell Corp \u2013 Ltd",
	] {
		facts := [_request({"vendor": vendor}), _budget({}), _risk({}), _legal({})]
		result := _judge(_order({"vendor": vendor}), facts)
		not result.allow
		some msg in result.deny
		contains(msg, "is on the EU consolidated sanctions list (reference EU-2024-113)")
	}
}

test_an_expedited_delivery_for_a_sanctioned_vendor_is_denied if {
	action := {"id": "a", "type": "expedite_delivery", "params": {"request_id": "PR-1", "vendor": "Northwind Arms LLC"}}
	result := _judge(action, [_request({"vendor": "Northwind Arms LLC"})])
	not result.allow
	"Vendor Northwind Arms LLC is on the OFAC SDN sanctions list (reference SDN-88213): no order may be placed." in result.deny
}

test_a_vendor_name_that_cannot_be_screened_is_denied if {
	some vendor in ["Glo\u0007bex", "Ltd", "", "\ue000", concat("", ["a" | some _ in numbers.range(1, 201)])]
	_denied_with(_order({"vendor": vendor}), [_request({"vendor": vendor}), _budget({}), _risk({}), _legal({})], "Purchase order for PR-1: the purchase request's vendor is missing or not a company name (at most 200 characters that can be compared).")
}

test_a_sanctions_entry_that_cannot_be_compared_stops_orders if {
	result := governance with input as _input(_order({}), _facts)
		with data.decision.sanctions.vendors as [{"name": 42, "list": "X", "reference": "R"}]
	not result.allow
	"The sanctions list entry 42 cannot be compared with vendor names; no order may be placed until it is fixed." in result.deny
}

test_requester_may_not_approve_their_own_order_however_the_name_is_written if {
	every approver in ["alice", "Alice", "ALICE", "alice ", "Al\u200bice", "\u0430lice", "Dr. Alice", "Ms Alice J."] {
		facts := [_request({}), _budget({"approver": approver}), _risk({}), _legal({})]
		result := _judge(_order({"approver": approver}), facts)
		not result.allow
		sprintf("alice requested PR-1 and may not also approve it (segregation of duties).", []) in result.deny
	}
}

test_an_approver_that_is_not_a_name_is_denied if {
	some approver in [["alice"], null, 7, "", "   "]
	facts := [_request({}), _budget({"approver": approver}), _risk({}), _legal({})]
	_denied_with(_order({"approver": approver}), facts, "Purchase order for PR-1: the budget check's approver is missing or not a person's name (at most 200 characters that can be compared).")
}

# --- data the compliance team got wrong never allows ------------------------------------

test_limits_of_the_wrong_type_never_allow if {
	risky := governance with input as _input(_order({}), [_request({}), _budget({}), _risk({"score": 0.99}), _legal({})])
		with data.decision.limits as {"currency": "EUR", "legal_review_threshold": 100000, "max_risk_score": "0.5"}
	not risky.allow
	"Purchase order for PR-1: the risk score 0.99 is not below the limit (none is set, or it is not a number)." in risky.deny
	unreviewed := governance with input as _input(_order({"amount": 250000}), [_request({"amount": 250000}), _budget({}), _risk({})])
		with data.decision.limits as {"currency": "EUR", "legal_review_threshold": "100000", "max_risk_score": 0.5}
	not unreviewed.allow
	"Purchase orders above EUR (threshold not set) need a cleared legal review; PR-1 has none." in unreviewed.deny
}

test_without_a_sanctions_list_no_order_is_allowed if {
	some vendors in [null, {"name": "Acme Shell Corp"}, "Acme Shell Corp"]
	result := governance with input as _input(_order({}), _facts) with data.decision.sanctions.vendors as vendors
	not result.allow
	"The sanctions list (data.decision.sanctions.vendors) is missing or not a list; no order may be placed until it is fixed." in result.deny
}

test_a_sanctions_list_under_another_key_is_no_list if {
	result := governance with input as _input(_order({}), _facts) with data.decision.sanctions as {"entries": []}
	not result.allow
}

test_an_approved_action_whose_needs_are_missing_is_not_allowed if {
	some needs in [null, "purchase_request", [], ["no_such_fact"]]
	catalog := {"actions": {"notify_finance": {"label": "Note", "needs": needs}}, "facts": data.decision.catalog.facts}
	result := governance with input as _input({"id": "a", "type": "notify_finance", "params": {"request_id": "PR-1"}}, [])
		with data.decision.catalog as catalog
	not result.allow
	"Action type notify_finance is approved, but its catalog entry does not name the facts it needs (needs: a list of fact types the catalog describes)." in result.deny
}

test_a_sanctions_entry_without_list_or_reference_still_denies if {
	result := governance with input as _input(_order({}), _facts)
		with data.decision.sanctions.vendors as [{"name": "Globex"}]
	not result.allow
	"Vendor Globex is on the a sanctions list (reference none): no order may be placed." in result.deny
}

test_greek_capitals_fold_to_the_latin_letter_they_look_like if {
	vendor := "\u039dorthwind Arms"
	result := _judge(_order({"vendor": vendor}), [_request({"vendor": vendor}), _budget({}), _risk({}), _legal({})])
	not result.allow
	some msg in result.deny
	contains(msg, "OFAC SDN")
}

test_people_are_the_same_however_their_name_is_ordered if {
	facts := [_request({"requester": "Bob Smith"}), _budget({"approver": "Smith, Bob"}), _risk({}), _legal({})]
	result := _judge(_order({"requester": "Bob Smith", "approver": "Smith, Bob"}), facts)
	"Bob Smith requested PR-1 and may not also approve it (segregation of duties)." in result.deny
}

test_names_in_other_scripts_and_typography_are_compared_not_refused if {
	facts := [_request({"vendor": "Smith\u2013Jones Ltd", "requester": "Sean O\u2019Brien"}), _budget({"approver": "\u0418\u0432\u0430\u043d"}), _risk({}), _legal({})]
	result := _judge(_order({"vendor": "Smith\u2013Jones Ltd", "requester": "Sean O\u2019Brien", "approver": "\u0418\u0432\u0430\u043d"}), facts)
	result.allow
}

test_an_odd_department_prints_quoted if {
	odd := object.union(_budget({}), {"department": " :0 "})
	_denied_with(_order({}), [_request({}), odd, _risk({}), _legal({})], "Purchase order for PR-1: the budget check on file comes from \":0\"; only finance may report it.")
}

test_plain_names_print_as_they_are if {
	governance._text("Globex Corp.", "x") == "Globex Corp."
	governance._text("Acme & Sons", "x") == "Acme & Sons"
	governance._text("CC-7", "x") == "CC-7"
	governance._text("O'Brien, Jr.", "x") == "O'Brien, Jr."
	governance._text("a  b", "x") == "\"a  b\""
	governance._text("(", "x") == "\"(\""
	governance._text("  ", "x") == "x"
	governance._text(null, "x") == "x"
	governance._text(["a"], "x") == "x"
	governance._text(3.5, "x") == "3.5"
}
