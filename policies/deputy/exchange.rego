# Deputy's packaged policy: which agent may act for which user, with which scopes, for how long.
#
# Queried as data.deputy.decision; input and data are described in docs/policy.md.
# An agent gets only the scopes data.access.grants lists for its SPIFFE ID per resource, and only when
# the user allows that agent: the user token's may_act names it (RFC 8693 §4.4), or
# data.access.delegations lists it under the user. A sub-agent needs its delegating agent to list it in
# data.access.subagents, grants of its own, and a chain within data.access.max_delegation_depth.
#
# Written for speed: data is looked up by key, never scanned; the granting bodies come first and the
# reasons for a refusal are only worked out when none of them matched.
package deputy

import rego.v1

default decision := {"allow": false, "error": "unauthorized_client", "reasons": ["no rule allows this request"]}

decision := {"allow": true, "scope": granted, "ttl": object.get(data.access, "ttl", 300), "reasons": [
	"agent acts for the user; scopes from data.access.grants",
]} if {
	input.action == "exchange"
	consent
	granted := [s | some s in input.request.scope; s in data.access.grants[input.actor.sub][input.request.audience]]
	count(granted) > 0
} else := {"allow": true, "scope": task_scope, "ttl": object.get(data.access, "task_ttl", 3600), "reasons": [
	"user delegated to agent; task scopes from data.access.grants",
]} if {
	input.action == "open_task"
	consent
	not missing_grant
	count(task_scope) > 0
} else := {"allow": true, "scope": task_scope, "ttl": object.get(data.access, "task_ttl", 3600), "reasons": [
	"sub-agent allowed by data.access.subagents; scopes from data.access.grants",
]} if {
	input.action == "delegate"
	delegation_allowed
	count(input.chain) <= object.get(data.access, "max_delegation_depth", 2)
	not missing_grant
	count(task_scope) > 0
} else := refusal

# RFC 8693 §4.4: may_act names the party allowed to act; an `iss` there cannot match a SPIFFE actor.
consent if {
	input.subject.claims.may_act.sub == input.actor.sub
	not input.subject.claims.may_act.iss
	object.get(input.actor, "kind", "spiffe") == "spiffe"
}

# A Kubernetes or OIDC workload's sub is unique only within its issuer: may_act must name both.
consent if {
	input.subject.claims.may_act.sub == input.actor.sub
	input.subject.claims.may_act.iss == input.actor.domain
	object.get(input.actor, "kind", "spiffe") != "spiffe"
}

consent if input.actor.sub in data.access.delegations[input.subject.iss][input.subject.sub]

# Within a task the user's consent was checked when it was opened; the gateway has checked that the
# actor is the task's own agent.
consent if {
	input.action == "exchange"
	input.task.agent == input.actor.sub
}

delegation_allowed if input.actor.sub in data.access.subagents[input.chain[count(input.chain) - 1]]

# A task's scopes: those requested that the agent holds at one of the task's resources (each access
# token minted later is narrowed again to its one resource).
task_scope := [s |
	some s in input.request.scope
	some audience in input.request.audiences
	s in data.access.grants[input.actor.sub][audience]
]

missing_grant if {
	some audience in input.request.audiences
	not data.access.grants[input.actor.sub][audience]
}

refusal := refuse("unauthorized_client", "the user has not delegated to this agent") if {
	input.action in {"exchange", "open_task"}
	not consent
} else := refuse("unauthorized_client", "the delegating agent may not delegate to this agent") if {
	input.action == "delegate"
	not delegation_allowed
} else := refuse("invalid_request", "the delegation chain would exceed its maximum depth") if {
	input.action == "delegate"
	count(input.chain) > object.get(data.access, "max_delegation_depth", 2)
} else := refuse("unauthorized_client", "the agent holds no grant for a requested resource") if {
	missing_grant
} else := refuse("invalid_scope", "none of the requested scopes is granted to this agent")

refuse(error, reason) := {"allow": false, "error": error, "reasons": [reason]}
