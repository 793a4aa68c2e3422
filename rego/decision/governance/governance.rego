# METADATA
# title: Procurement governance
# description: |
#   Every action the decision service's rules propose is checked here before it is
#   dispatched, and nothing is allowed by default. An action is allowed only when its
#   type is approved, every fact it depends on is on file exactly once, comes from the
#   department that owns it and has the fields read here with the right types, and no
#   check below denies it. Missing, duplicated or mistyped data never allows: it denies,
#   and the reason says what is missing or wrong, in words a requester can act on.
#
#   The way to write such a policy: state what must hold as positive helper rules
#   (`_usable`, `_within_budget`) and deny with `not` them. A helper is undefined when
#   the data it reads is missing or of the wrong type, and `not` of it is true, so a gap
#   denies instead of slipping through. (Never `not a.b < c` directly: OPA evaluates a
#   reference in a comparison before the `not`, and a missing one makes the whole rule,
#   deny included, undefined.)
package decision.governance

import data.decision.catalog
import data.decision.limits
import data.decision.names
import data.decision.sanctions

# METADATA
# description: |
#   Allowed only for an approved action type whose facts are all usable and that
#   nothing denies.
default allow := false

allow if {
	_approved
	every fact_type in _required {
		_usable(fact_type)
	}
	count(deny) == 0
}

_approved if catalog.actions[input.action.type]

_label := catalog.actions[input.action.type].label

_request := id if {
	id := input.action.params.request_id
	is_string(id)
	id != ""
}

default _about := "the request"

_about := _request

# The facts an action depends on: the catalog's list, and a legal review for a purchase
# order that is not positively at or below the legal threshold.
_required contains fact_type if some fact_type in catalog.actions[input.action.type].needs

_required contains "legal_review" if {
	input.action.type == "issue_purchase_order"
	not _below_legal_threshold
}

_below_legal_threshold if _purchase.amount <= limits.legal_review_threshold

# --- the facts: on file once, from their department, with the right types ---------------

_on_file(fact_type) := [fact |
	some fact in input.facts
	fact.type == fact_type
	fact.data.request_id == _request
]

_usable(fact_type) if {
	[fact] := _on_file(fact_type)
	fact.department == catalog.facts[fact_type].department
	every field, kind in catalog.facts[fact_type].fields {
		_field_ok(fact, field, kind)
	}
}

_field_ok(fact, field, kind) if _kind(kind, fact.data[field])

# The single usable fact of a type, by its data.
_data(fact_type) := fact.data if {
	_usable(fact_type)
	[fact] := _on_file(fact_type)
}

_purchase := _data("purchase_request")

_budget := _data("budget_check")

_risk := _data("risk_assessment")

_legal := _data("legal_review")

_kind("string", value) if {
	is_string(value)
	trim_space(value) != ""
}

_kind("number", value) if is_number(value)

_kind("person", value) if _person(value)

_kind("company", value) if _company(value)

_kind_text := {
	"string": "a text",
	"number": "a number",
	"person": "a person's name (at most 200 characters that can be compared)",
	"company": "a company name (at most 200 characters that can be compared)",
}

_name_of(fact_type) := replace(fact_type, "_", " ")

_department_of(fact_type) := catalog.facts[fact_type].department

# METADATA
# description: Action types nobody approved are never dispatched.
deny contains msg if {
	not _approved
	msg := sprintf("Action type %q is not on the list of approved actions.", [input.action.type])
}

# METADATA
# description: An action names the request it is about.
deny contains msg if {
	_approved
	not _request
	msg := sprintf("%s names no request (request_id is missing or not a text).", [_label])
}

# METADATA
# description: Every fact an action depends on is on file.
deny contains msg if {
	some fact_type in _required
	fact_type != "legal_review" # its own denial below says what the order needs
	count(_on_file(fact_type)) == 0
	msg := sprintf("%s for %s: no %s from %s is on file.",
		[_label, _about, _name_of(fact_type), _department_of(fact_type)])
}

# METADATA
# description: Exactly once: two answers to one question leave it open.
deny contains msg if {
	some fact_type in _required
	count(_on_file(fact_type)) > 1
	msg := sprintf("%s for %s: %d %ss are on file; exactly one from %s is expected.",
		[_label, _about, count(_on_file(fact_type)), _name_of(fact_type), _department_of(fact_type)])
}

# METADATA
# description: Only the department that owns a kind of fact may report it.
deny contains msg if {
	some fact_type in _required
	some fact in _on_file(fact_type)
	fact.department != _department_of(fact_type)
	msg := sprintf("%s for %s: the %s on file comes from %v; only %s may report it.",
		[_label, _about, _name_of(fact_type), fact.department, _department_of(fact_type)])
}

# METADATA
# description: Every field read here is present and of the right type.
deny contains msg if {
	some fact_type in _required
	some fact in _on_file(fact_type)
	some field, kind in catalog.facts[fact_type].fields
	not _field_ok(fact, field, kind)
	msg := sprintf("%s for %s: the %s's %s is missing or not %s.",
		[_label, _about, _name_of(fact_type), field, _kind_text[kind]])
}

# --- purchase orders ---------------------------------------------------------------------

# METADATA
# description: A purchase order states the amount, vendor and people of its request.
deny contains msg if {
	input.action.type == "issue_purchase_order"
	_usable("purchase_request")
	_usable("budget_check")
	some param, stated in {
		"amount": _purchase.amount, "vendor": _purchase.vendor,
		"requester": _purchase.requester, "approver": _budget.approver,
	}
	not _states(param, stated)
	msg := sprintf("Purchase order for %s: its %s is not the one on file (%v).", [_about, param, stated])
}

_states(param, value) if input.action.params[param] == value

# METADATA
# description: Amounts are positive.
deny contains msg if {
	input.action.type == "issue_purchase_order"
	_usable("purchase_request")
	not _positive_amount
	msg := sprintf("Purchase order for %s: the amount %v is not positive.", [_about, _purchase.amount])
}

_positive_amount if _purchase.amount > 0

# METADATA
# description: No purchase order above the budget finance confirmed for the request.
deny contains msg if {
	input.action.type == "issue_purchase_order"
	_usable("purchase_request")
	_usable("budget_check")
	not _within_budget
	msg := sprintf(
		"Purchase order for %s (%s %v) exceeds the %s %v available in cost center %s.",
		[_about, _currency, _purchase.amount, _currency, _budget.available, _budget.cost_center],
	)
}

_within_budget if _purchase.amount <= _budget.available

# METADATA
# description: Large purchase orders need a cleared legal review on file.
deny contains msg if {
	"legal_review" in _required
	not _legally_cleared
	msg := sprintf("Purchase orders above %s %v need a cleared legal review; %s has none.",
		[_currency, _threshold, _about])
}

_legally_cleared if _legal.status == "cleared"

# METADATA
# description: Risk must have scored the vendor below the limit.
deny contains msg if {
	input.action.type == "issue_purchase_order"
	_usable("risk_assessment")
	not _risk_acceptable
	msg := sprintf("Purchase order for %s: the risk score %v is not below %v.",
		[_about, _risk.score, object.get(limits, "max_risk_score", "the limit (none is set)")])
}

_risk_acceptable if _risk.score < limits.max_risk_score

# METADATA
# description: Whoever requested a purchase may not also approve it.
deny contains msg if {
	input.action.type == "issue_purchase_order"
	_usable("purchase_request")
	_usable("budget_check")
	_person(_purchase.requester) == _person(_budget.approver)
	msg := sprintf("%s requested %s and may not also approve it (segregation of duties).",
		[_purchase.requester, _about])
}

# --- vendors -----------------------------------------------------------------------------

_vendor_actions := {"issue_purchase_order", "expedite_delivery"}

# METADATA
# description: No order placed with, or expedited for, a sanctioned vendor.
deny contains msg if {
	input.action.type in _vendor_actions
	_usable("purchase_request")
	some entry in sanctions.vendors
	_company(entry.name) == _company(_purchase.vendor)
	msg := sprintf("Vendor %s is on the %s sanctions list (reference %s): no order may be placed.",
		[_purchase.vendor, entry.list, entry.reference])
}

# METADATA
# description: An order names the vendor of its request.
deny contains msg if {
	input.action.type == "expedite_delivery"
	_usable("purchase_request")
	not _states("vendor", _purchase.vendor)
	msg := sprintf("Expedited delivery for %s: its vendor is not the one on file (%v).",
		[_about, _purchase.vendor])
}

# METADATA
# description: A sanctions entry that cannot be compared stops every order.
deny contains msg if {
	input.action.type in _vendor_actions
	some entry in sanctions.vendors
	not _comparable(entry)
	msg := sprintf("The sanctions list entry %v cannot be compared with vendor names; no order may be placed until it is fixed.",
		[object.get(entry, "name", entry)])
}

_comparable(entry) if _company(entry.name)

default _currency := "(currency not set)"

_currency := limits.currency if is_string(limits.currency)

default _threshold := "(threshold not set)"

_threshold := limits.legal_review_threshold if is_number(limits.legal_review_threshold)

# --- names -------------------------------------------------------------------------------
#
# Names are compared after folding (names/data.json, made by scripts/name-folding):
# Unicode NFKC and case folding, accents dropped, look-alike letters of other scripts
# (Cyrillic "о") made Latin, every space one space and invisible characters removed.
# Then "&" reads "and", dots and apostrophes go, any other run of punctuation or space
# separates words, and for companies legal suffixes (Ltd, Inc., GmbH, ...) are dropped.
# The words are compared without the spaces between them. A name that is not a string,
# is longer than 200 characters or has a character the table does not know is not a
# name: it cannot be screened, so it denies.

_folded(value) := concat("", folded) if {
	is_string(value)
	count(value) <= 200
	chars := split(value, "")
	folded := [f | some c in chars; f := _fold(c)]
	count(folded) == count(chars)
}

_fold(c) := names.fold[c]

_fold(c) := lower(c) if {
	not names.fold[c]
	regex.match(`^[ -~]$`, c)
}

_words(value) := [word |
	some word in split(regex.replace(regex.replace(replace(_folded(value), "&", " and "), `[.']`, ""), `[^a-z0-9]+`, " "), " ")
	word != ""
]

_person(value) := key if {
	key := concat("", _words(value))
	key != ""
}

_company(value) := key if {
	key := concat("", [word | some word in _words(value); not word in {suffix | some suffix in names.legal_suffixes}])
	key != ""
}
