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
	_checks_pass
	count(deny) == 0
}

# An approved action type names the facts it needs, each one the catalog describes.
_approved if {
	needs := catalog.actions[input.action.type].needs
	is_array(needs)
	count(needs) > 0
	every fact_type in needs {
		_described(fact_type)
	}
}

_described(fact_type) if {
	is_string(catalog.facts[fact_type].department)
	is_object(catalog.facts[fact_type].fields)
}

default _label := "The action"

_label := label if {
	label := catalog.actions[input.action.type].label
	is_string(label)
}

_request := id if {
	id := input.action.params.request_id
	is_string(id)
	id != ""
}

default _about := "the request"

_about := _text(_request, "the request")

# The facts an action depends on: the catalog's list, and a legal review for a purchase
# order that is not positively at or below the legal threshold.
_required contains fact_type if some fact_type in catalog.actions[input.action.type].needs

_required contains "legal_review" if {
	input.action.type == "issue_purchase_order"
	not _below_legal_threshold
}

_below_legal_threshold if {
	is_number(limits.legal_review_threshold)
	_purchase.amount <= limits.legal_review_threshold
}

# --- the facts: on file once, from their department, with the right types ---------------

# The facts about this action's request, found once per action (a subject may hold
# thousands of facts; each check below looks only at these).
_about_request := [fact |
	some fact in input.facts
	fact.data.request_id == _request
]

# What follows is computed once per action, as rules (OPA keeps a rule's value for the
# evaluation; a function it computes again at every call): the facts of each type, the
# usable types, the fields that fail their checks, the folded names.
_types := {fact_type | some fact_type, _ in catalog.facts} | {fact_type |
	some action in catalog.actions
	some fact_type in action.needs
}

_on_file_by_type[fact_type] := [fact |
	some fact in _about_request
	fact.type == fact_type
] if some fact_type in _types

_on_file(fact_type) := _on_file_by_type[fact_type]

# The types this action's checks read: what its catalog entry needs, and a purchase
# order's legal review.
_checked_types := {fact_type | some fact_type in catalog.actions[input.action.type].needs} | {"legal_review" |
	input.action.type == "issue_purchase_order"
}

_usable_types contains fact_type if {
	some fact_type in _checked_types
	facts := _on_file_by_type[fact_type]
	[fact] := facts
	fact.department == catalog.facts[fact_type].department
	is_object(catalog.facts[fact_type].fields)
	every field in object.keys(catalog.facts[fact_type].fields) {
		not [fact_type, 0, field] in _field_failures
	}
}

_usable(fact_type) if fact_type in _usable_types

# [type, position, field] of each field, of a fact on file, that is missing or mistyped.
_field_failures contains [fact_type, i, field] if {
	some fact_type in _checked_types
	some i, fact in _on_file_by_type[fact_type]
	some field, kind in catalog.facts[fact_type].fields
	not _field_ok(fact_type, i, fact, field, kind)
}

_field_ok(fact_type, i, _, field, kind) if {
	kind in _name_kinds
	_name_keys[[fact_type, i, field]]
}

_field_ok(_, _, fact, field, kind) if {
	not kind in _name_kinds
	_kind(kind, fact.data[field])
}

# Each name of a fact on file, folded once: [type, position, field] -> its key.
_name_kinds := {"person", "company"}

_name_keys[[fact_type, i, field]] := key if {
	some fact_type in _checked_types
	some i, fact in _on_file_by_type[fact_type]
	some field, kind in catalog.facts[fact_type].fields
	kind in _name_kinds
	key := _name_key(kind, fact.data[field])
}

_name_key("person", value) := _person(value)

_name_key("company", value) := _company(value)

# The single usable fact of a type, by its data.
_data(fact_type) := _on_file_by_type[fact_type][0].data if _usable(fact_type)

_purchase := _data("purchase_request")

_budget := _data("budget_check")

_risk := _data("risk_assessment")

_legal := _data("legal_review")

_kind("string", value) if {
	is_string(value)
	trim_space(value) != ""
}

_kind("number", value) if is_number(value)

_kind_text := {
	"string": "a text",
	"number": "a number",
	"person": "a person's name (at most 200 characters that can be compared)",
	"company": "a company name (at most 200 characters that can be compared)",
}

_name_of(fact_type) := replace(fact_type, "_", " ")

_department_of(fact_type) := catalog.facts[fact_type].department

# What each kind of action must satisfy beyond its facts, stated positively: allow needs
# it whether or not a denial below explains its absence.
_checks_pass if not input.action.type in {"issue_purchase_order", "expedite_delivery"}

_checks_pass if {
	input.action.type == "issue_purchase_order"
	_positive_amount
	_within_budget
	_legal_satisfied
	_risk_acceptable
	_vendor_screened
	_distinct_people
	every param, stated in _order_statements {
		_states(param, stated)
	}
}

_checks_pass if {
	input.action.type == "expedite_delivery"
	_vendor_screened
	_states("vendor", _purchase.vendor)
}

# METADATA
# description: Action types nobody approved are never dispatched.
deny contains msg if {
	not catalog.actions[input.action.type]
	msg := sprintf("Action type %s is not on the list of approved actions.", [_text(object.get(input.action, "type", null), "(none, or not a text)")])
}

# METADATA
# description: An approved action's catalog entry says which facts it needs.
deny contains msg if {
	catalog.actions[input.action.type]
	not _approved
	msg := sprintf("Action type %v is approved, but its catalog entry does not name the facts it needs (needs: a list of fact types the catalog describes).", [input.action.type])
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
	msg := sprintf(
		"%s for %s: no %s from %s is on file.",
		[_label, _about, _name_of(fact_type), _department_of(fact_type)],
	)
}

# METADATA
# description: Exactly once. Two answers to one question leave it open.
deny contains msg if {
	some fact_type in _required
	count(_on_file(fact_type)) > 1
	msg := sprintf(
		"%s for %s: %d %ss are on file; exactly one from %s is expected.",
		[_label, _about, count(_on_file(fact_type)), _name_of(fact_type), _department_of(fact_type)],
	)
}

# METADATA
# description: Only the department that owns a kind of fact may report it.
deny contains msg if {
	some fact_type in _required
	some fact in _on_file(fact_type)
	fact.department != _department_of(fact_type)
	msg := sprintf(
		"%s for %s: the %s on file comes from %s; only %s may report it.",
		[_label, _about, _name_of(fact_type), _text(object.get(fact, "department", null), "no named department"), _department_of(fact_type)],
	)
}

# METADATA
# description: Every field read here is present and of the right type.
deny contains msg if {
	some fact_type in _required
	some i, _ in _on_file(fact_type)
	some field, kind in catalog.facts[fact_type].fields
	[fact_type, i, field] in _field_failures
	msg := sprintf(
		"%s for %s: the %s's %s is missing or not %s.",
		[_label, _about, _name_of(fact_type), field, _kind_text[kind]],
	)
}

# --- purchase orders ---------------------------------------------------------------------

_order_statements := {
	"amount": _purchase.amount, "vendor": _purchase.vendor,
	"requester": _purchase.requester, "approver": _budget.approver,
}

# METADATA
# description: A purchase order states the amount, vendor and people of its request.
deny contains msg if {
	input.action.type == "issue_purchase_order"
	some param, stated in _order_statements
	not _states(param, stated)
	msg := sprintf("Purchase order for %s: its %s is not the one on file (%s).", [_about, param, _text(stated, "none on file")])
}

_states(param, value) if input.action.params[param] == value

# METADATA
# description: Amounts are positive.
deny contains msg if {
	input.action.type == "issue_purchase_order"
	_usable("purchase_request")
	not _positive_amount
	msg := sprintf("Purchase order for %s: the amount %s is not positive.", [_about, _text(_purchase.amount, "(none)")])
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
		[_about, _currency, _purchase.amount, _currency, _budget.available, _text(object.get(_budget, "cost_center", null), "(none)")],
	)
}

_within_budget if _purchase.amount <= _budget.available

# METADATA
# description: Large purchase orders need a cleared legal review on file.
deny contains msg if {
	"legal_review" in _required
	not _legally_cleared
	msg := sprintf(
		"Purchase orders above %s %v need a cleared legal review; %s has none.",
		[_currency, _threshold, _about],
	)
}

_legally_cleared if _legal.status == "cleared"

_legal_satisfied if _below_legal_threshold

_legal_satisfied if _legally_cleared

# METADATA
# description: Risk must have scored the vendor below the limit.
deny contains msg if {
	input.action.type == "issue_purchase_order"
	_usable("risk_assessment")
	not _risk_acceptable
	msg := sprintf(
		"Purchase order for %s: the risk score %v is not below %v.",
		[_about, _risk.score, _risk_limit],
	)
}

default _risk_limit := "the limit (none is set, or it is not a number)"

_risk_limit := limits.max_risk_score if is_number(limits.max_risk_score)

_risk_acceptable if {
	is_number(limits.max_risk_score)
	_risk.score < limits.max_risk_score
}

# METADATA
# description: Whoever requested a purchase may not also approve it.
deny contains msg if {
	input.action.type == "issue_purchase_order"
	_usable("purchase_request")
	_usable("budget_check")
	not _distinct_people
	msg := sprintf(
		"%s requested %s and may not also approve it (segregation of duties).",
		[_text(_purchase.requester, "The requester"), _about],
	)
}

# --- vendors -----------------------------------------------------------------------------

_distinct_people if {
	_usable("purchase_request")
	_usable("budget_check")
	_name_keys[["purchase_request", 0, "requester"]] != _name_keys[["budget_check", 0, "approver"]]
}

_vendor_key := _name_keys[["purchase_request", 0, "vendor"]] if _usable("purchase_request")

# Each sanctions entry's folded name, once per evaluation: position -> key (none for an
# entry that cannot be compared).
_entry_keys := {i: key |
	some i, entry in sanctions.vendors
	key := _company(entry.name)
}

# The sanctions entries naming the vendor, and those that cannot be compared.
_sanctioned_entries := [entry |
	some i, entry in sanctions.vendors
	_entry_keys[i] == _vendor_key
]

_incomparable_entries := [entry |
	some i, entry in sanctions.vendors
	not _entry_keys[i]
]

_vendor_actions := {"issue_purchase_order", "expedite_delivery"}

# The vendor is screened: the list is a list of entries that can be compared, and no
# entry is the vendor.
_vendor_screened if {
	_sanctions_comparable
	not _sanctioned
}

_sanctions_comparable if {
	is_array(sanctions.vendors)
	count(_incomparable_entries) == 0
}

_sanctioned if count(_sanctioned_entries) > 0

# METADATA
# description: No order placed with, or expedited for, a sanctioned vendor.
deny contains msg if {
	input.action.type in _vendor_actions
	_usable("purchase_request")
	some entry in _sanctioned_entries
	msg := sprintf(
		"Vendor %s is on the %s sanctions list (reference %s): no order may be placed.",
		[_text(_purchase.vendor, "(no name)"), _text(object.get(entry, "list", null), "a"), _text(object.get(entry, "reference", null), "none")],
	)
}

# METADATA
# description: An order names the vendor of its request.
deny contains msg if {
	input.action.type == "expedite_delivery"
	_usable("purchase_request")
	not _states("vendor", _purchase.vendor)
	msg := sprintf(
		"Expedited delivery for %s: its vendor is not the one on file (%s).",
		[_about, _text(_purchase.vendor, "none on file")],
	)
}

# METADATA
# description: A sanctions entry that cannot be compared stops every order.
deny contains msg if {
	input.action.type in _vendor_actions
	some entry in _incomparable_entries
	msg := sprintf(
		"The sanctions list entry %s cannot be compared with vendor names; no order may be placed until it is fixed.",
		[_text(_entry_name(entry), "without a name that is a text")],
	)
}

# METADATA
# description: Without a sanctions list no vendor can be screened.
deny contains msg if {
	input.action.type in _vendor_actions
	not is_array(sanctions.vendors)
	msg := "The sanctions list (data.decision.sanctions.vendors) is missing or not a list; no order may be placed until it is fixed."
}

_entry_name(entry) := object.get(entry, "name", "(no name)") if is_object(entry)

_entry_name(entry) := entry if not is_object(entry)

# A value to print into a sentence. A plain name or number (words of letters and digits
# joined by single spaces or the usual marks: "Globex Corp.", "CC-7", "O'Brien") prints as
# it is; any other text prints quoted, so a caller's odd value cannot garble the sentence;
# null, a blank text, a list or an object prints as `otherwise`. No message reads "null".
_text(value, _) := trim_space(value) if _plain(value)

_text(value, _) := json.marshal(trim_space(value)) if {
	is_string(value)
	trim_space(value) != ""
	not _plain(value)
}

_text(value, _) := sprintf("%v", [value]) if is_number(value)

_text(value, otherwise) := otherwise if {
	not is_string(value)
	not is_number(value)
}

_text(value, otherwise) := otherwise if {
	is_string(value)
	trim_space(value) == ""
}

_plain(value) if {
	is_string(value)
	regex.match(`^[\pL\pN]+(?:(?:[ ]?[&/+-][ ]?|[.,:]?[ ]|['_#.])?[\pL\pN]+)*\.?$`, trim_space(value))
}

default _currency := "(currency not set)"

_currency := limits.currency if is_string(limits.currency)

default _threshold := "(threshold not set)"

_threshold := limits.legal_review_threshold if is_number(limits.legal_review_threshold)

# --- names -------------------------------------------------------------------------------
#
# Names are compared after folding (names/data.json, made by scripts/name-folding):
# Unicode NFKC and case folding, accents dropped, look-alike letters of other scripts
# (Cyrillic "о", Greek "Ν") made Latin, every space one space, invisible characters and
# the marks ™ ® © removed; letters and digits of other scripts are kept as written, any
# other punctuation or symbol separates words. Then "&" reads "and" and dots and
# apostrophes go. A company is its words without legal suffixes (Ltd, Inc., GmbH, ...,
# also when glued to the last word: "ShellCorp") or a leading "the", joined without
# spaces, with 0 read as o and 1 and i as l (so "SheII" and "She11" are "Shell"). A person
# is the set of their words without titles (Dr, Ms, ...) and initials, so "Smith, Bob"
# and "Dr. Bob J. Smith" are "Bob Smith". A name that is not a string, is longer than 200
# characters or holds a character that cannot be compared (a control character, an
# unassigned code point) cannot be screened, so it denies. Screening is an exact match
# after all that, not a fuzzy one: compare employee ids where the data has them.

# Printable ASCII folds as lower case: one step for the common case.
_folded(value) := lower(value) if {
	is_string(value)
	count(value) <= 200
	regex.match(`^[ -~]*$`, value)
}

_folded(value) := concat("", folded) if {
	is_string(value)
	count(value) <= 200
	not regex.match(`^[ -~]*$`, value)
	chars := split(value, "")
	folded := [f | some c in chars; f := _fold(c)]
	count(folded) == count(chars)
}

_fold(c) := names.fold[c]

_fold(c) := lower(c) if {
	not names.fold[c]
	regex.match(`^[ -~\pL\pN]$`, c)
}

_fold(c) := " " if {
	not names.fold[c]
	not regex.match(`^[ -~\pL\pN]$`, c)
	regex.match(`^[\pP\pS]$`, c)
}

_words(value) := regex.find_n(`[\pL\pN]+`, strings.replace_n({"&": " and ", ".": "", "'": ""}, _folded(value)), -1)

_person(value) := key if {
	words := {word | some word in _words(value); count(word) > 1; not names.title_set[word]}
	key := concat(" ", sort(words))
	key != ""
}

_company(value) := key if {
	words := [word | some i, word in _words(value); not _dropped_word(i, word)]
	key := _skeleton(_unglued(concat("", words)))
	key != ""
}

_dropped_word(_, word) if names.legal_suffix_set[word]

_dropped_word(0, "the")

# A legal suffix of three letters or more glued to the last word, the longest that fits
# (the list is longest first).
_unglued(key) := _without_first(key, [s | some s in names.glueable_suffixes; endswith(key, s); count(key) > count(s)])

_without_first(key, []) := key

_without_first(key, glued) := trim_suffix(key, glued[0]) if count(glued) > 0

_skeleton(key) := strings.replace_n({"0": "o", "1": "l", "i": "l"}, key)
