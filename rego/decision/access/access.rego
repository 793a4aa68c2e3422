# METADATA
# title: API access
# description: |
#   Who may call what on the decision service's API. The caller comes from its API
#   key: an id, the departments it reports for, the rulesets it may decide on and
#   its grants. A request is allowed when nothing below denies it.
package decision.access

# METADATA
# description: Allowed only for a known operation that nothing denies.
default allow := false

allow if {
	input.request.operation in _operations
	count(deny) == 0
}

_operations := {
	"facts.write", "facts.read", "facts.retract",
	"decisions.create", "decisions.read",
	"replays.create", "rulesets.read", "actions.operate",
}

# METADATA
# description: Unknown operations are refused.
deny contains msg if {
	not input.request.operation in _operations
	msg := sprintf("Unknown operation %q.", [input.request.operation])
}

# METADATA
# description: A department reports (and retracts) only its own facts.
deny contains msg if {
	input.request.operation in {"facts.write", "facts.retract"}
	some department in input.request.departments
	not _reports_for(department)
	msg := sprintf("%s may not report facts for the %s department.", [input.caller.id, department])
}

# METADATA
# description: Facts given with a decision request count as reports too.
deny contains msg if {
	input.request.operation == "decisions.create"
	some department in input.request.departments
	not _reports_for(department)
	msg := sprintf("%s may not give facts of the %s department with a decision.",
		[input.caller.id, department])
}

# METADATA
# description: Decisions only on the rulesets granted to the caller.
deny contains msg if {
	input.request.operation == "decisions.create"
	not _granted_ruleset(input.request.ruleset)
	msg := sprintf("%s is not granted decisions on the %s ruleset.",
		[input.caller.id, input.request.ruleset])
}

# METADATA
# description: Replays and what-if analysis need the analyst grant.
deny contains msg if {
	input.request.operation == "replays.create"
	not "analyst" in input.caller.grants
	msg := sprintf("%s needs the analyst grant to replay decisions.", [input.caller.id])
}

# METADATA
# description: Re-driving failed deliveries needs the operator grant.
deny contains msg if {
	input.request.operation == "actions.operate"
	not "operator" in input.caller.grants
	msg := sprintf("%s needs the operator grant to re-drive actions.", [input.caller.id])
}

_reports_for(department) if department in input.caller.departments

_reports_for(_) if "*" in input.caller.departments

_granted_ruleset(ruleset) if ruleset in input.caller.rulesets

_granted_ruleset(_) if "*" in input.caller.rulesets
