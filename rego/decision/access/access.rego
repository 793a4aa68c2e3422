# METADATA
# title: API access
# description: |
#   Who may call what on the decision service's API. The caller comes from its API
#   key: an id, the departments it reports for, the rulesets it may decide on and
#   its grants. A request is allowed only when its operation is known and nothing
#   below denies it; what is missing or of the wrong type in the input denies, never
#   allows (each check is a positive helper rule, denied with `not`).
package decision.access

# METADATA
# description: Allowed only for a known operation that nothing denies.
default allow := false

allow if {
	_known_operation
	count(deny) == 0
}

_operations := {
	"facts.write", "facts.read", "facts.retract",
	"decisions.create", "decisions.read",
	"replays.create", "rulesets.read", "actions.operate", "triggers.operate",
	"policies.read", "rulesets.source",
}

_known_operation if input.request.operation in _operations

# Any identified caller may ask who it is and what it may do (GET /v1/caller).
_known_operation if input.request.operation == "caller.read"

_caller := object.get(input, ["caller", "id"], "an unidentified caller")

# METADATA
# description: Unknown operations are refused.
deny contains msg if {
	not _known_operation
	msg := sprintf("Unknown operation %v.", [object.get(input, ["request", "operation"], "(none)")])
}

# METADATA
# description: A department reports (and retracts) only its own facts.
deny contains msg if {
	input.request.operation in {"facts.write", "facts.retract"}
	some department in input.request.departments
	not _reports_for(department)
	msg := sprintf("%v may not report facts for the %v department.", [_caller, department])
}

# METADATA
# description: A write names the departments it speaks for.
deny contains msg if {
	input.request.operation in {"facts.write", "facts.retract", "decisions.create"}
	not _names_departments
	msg := sprintf("%v: the request does not say which departments it speaks for.", [_caller])
}

_names_departments if is_array(input.request.departments)

# METADATA
# description: Facts given with a decision request count as reports too.
deny contains msg if {
	input.request.operation == "decisions.create"
	some department in input.request.departments
	not _reports_for(department)
	msg := sprintf(
		"%v may not give facts of the %v department with a decision.",
		[_caller, department],
	)
}

# METADATA
# description: Decisions only on the rulesets granted to the caller.
deny contains msg if {
	input.request.operation == "decisions.create"
	not _ruleset_granted
	msg := sprintf(
		"%v is not granted decisions on the %v ruleset.",
		[_caller, object.get(input, ["request", "ruleset"], "(unnamed)")],
	)
}

# METADATA
# description: Replays and what-if analysis need the analyst grant.
deny contains msg if {
	input.request.operation == "replays.create"
	not _granted("analyst")
	msg := sprintf("%v needs the analyst grant to replay decisions.", [_caller])
}

# METADATA
# description: Re-driving failed deliveries and parked triggers needs the operator grant.
deny contains msg if {
	input.request.operation in {"actions.operate", "triggers.operate"}
	not _granted("operator")
	msg := sprintf("%v needs the operator grant to re-drive actions.", [_caller])
}

# METADATA
# description: Reading the live policies needs the analyst or the operator grant.
deny contains msg if {
	input.request.operation == "policies.read"
	not _granted("analyst")
	not _granted("operator")
	msg := sprintf("%v needs the analyst or the operator grant to read the policies.", [_caller])
}

# METADATA
# description: |
#   Reading a ruleset's source (its thresholds, the conditions a department's facts are
#   judged by) needs the analyst or the operator grant: a department that read them could
#   tune what it reports to pass.
deny contains msg if {
	input.request.operation == "rulesets.source"
	not _granted("analyst")
	not _granted("operator")
	msg := sprintf("%v needs the analyst or the operator grant to read the rule files.", [_caller])
}

_reports_for(department) if department in input.caller.departments

_reports_for(_) if "*" in input.caller.departments

_ruleset_granted if input.request.ruleset in input.caller.rulesets

_ruleset_granted if {
	is_string(input.request.ruleset)
	"*" in input.caller.rulesets
}

_granted(grant) if grant in input.caller.grants
