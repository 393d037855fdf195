# Deputy's packaged policy: which agent may act for which user, with which scopes, for how long.
#
# Queried as data.deputy.decision; input and data are described in docs/policy.md.
# An agent gets only the scopes data.access.grants lists for it per resource, and only when the user
# allows that agent: the user token's may_act names it (RFC 8693 §4.4), or data.access.delegations lists
# it under the user. Agents are keyed by their SPIFFE ID, or, for a Kubernetes or OIDC workload (whose id
# is unique only within its issuer), by "<id> at <issuer>". A sub-agent needs its delegating agent to list it in
# data.access.subagents, grants of its own, and a chain within data.access.max_delegation_depth.
# Scopes data.access.sensitive marks for a resource are conditional access: granted only to an agent
# instance whose attested posture (input.actor.posture) runs an image of data.access.posture.images with
# debug disabled, vouched for by an attester of data.access.posture.attesters; without one they are
# dropped and the reasons say so, the other scopes still granted.
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
	not sensitive_requested
	consent
	granted := [s |
		some s in input.request.scope
		s in data.access.grants[actor_key][input.request.audience]
	]
	count(granted) > 0
} else := {"allow": true, "scope": granted, "ttl": object.get(data.access, "ttl", 300), "reasons": array.concat(
	["agent acts for the user; scopes from data.access.grants"],
	posture_reasons,
)} if {
	input.action == "exchange"
	consent
	granted := [s |
		some s in input.request.scope
		s in data.access.grants[actor_key][input.request.audience]
		not s in held_back
	]
	count(granted) > 0
} else := {"allow": true, "scope": task_scope, "ttl": object.get(data.access, "task_ttl", 3600), "reasons": array.concat(
	["user delegated to agent; task scopes from data.access.grants"],
	posture_reasons,
)} if {
	input.action == "open_task"
	consent
	not missing_grant
	count(task_scope) > 0
} else := {"allow": true, "scope": task_scope, "ttl": object.get(data.access, "task_ttl", 3600), "reasons": array.concat(
	["sub-agent allowed by data.access.subagents; scopes from data.access.grants"],
	posture_reasons,
)} if {
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
	input.actor.kind == "spiffe"
}

# A Kubernetes or OIDC workload's sub is unique only within its issuer: may_act must name both.
consent if {
	input.subject.claims.may_act.sub == input.actor.sub
	input.subject.claims.may_act.iss == input.actor.domain
	input.actor.kind != "spiffe"
}

consent if actor_key in data.access.delegations[input.subject.iss][input.subject.sub]

# Within a task the user's consent was checked when it was opened; the gateway has checked that the
# actor is the task's own agent.
consent if {
	input.action == "exchange"
	input.task.agent == input.actor.sub
}

delegation_allowed if actor_key in data.access.subagents[agent_key(input.chain_actors[count(input.chain_actors) - 1])]

# The key of an agent in data.access.
agent_key(agent) := agent.id if agent.kind == "spiffe"

agent_key(agent) := concat(" at ", [agent.id, agent.domain]) if agent.kind != "spiffe"

actor_key := input.actor.id if input.actor.kind == "spiffe"

actor_key := concat(" at ", [input.actor.id, input.actor.domain]) if input.actor.kind != "spiffe"

# A task's scopes: those requested that the agent holds at one of the task's resources (each access
# token minted later is narrowed again to its one resource, and asks for its posture again).
task_scope := [s |
	some s in input.request.scope
	some audience in input.request.audiences
	s in data.access.grants[actor_key][audience]
	not s in held_back
]

# Conditional access. A requested scope the agent holds at a requested resource that marks it sensitive
# needs this request's attested posture (the gateway verified it, fresh, for this actor): an image of
# data.access.posture.images and debug disabled (RFC 9711 dbgstat: any "disabled..." state), vouched for
# by an attester of data.access.posture.attesters.
needs_posture contains s if {
	some audience in input.request.audiences
	some s in data.access.sensitive[audience]
	s in input.request.scope
	s in data.access.grants[actor_key][audience]
}

held_back contains s if {
	some s in needs_posture
	not posture_allowed
}

posture_allowed if {
	input.actor.posture.attester in data.access.posture.attesters
	input.actor.posture.claims.image_digest in data.access.posture.images
	input.actor.posture.claims.dbgstat in debug_disabled
}

debug_disabled := {"disabled", "disabled-since-boot", "disabled-permanently", "disabled-fully-and-permanently"}

# concat, not sprintf: rego-cpp's sprintf quotes a %s value holding a comma or a space.
posture_reasons := [concat("", [s, " needs a fresh attested posture (allowed image, debug disabled); dropped"]) |
	some s in sort(held_back)
]

# The common case, decided first by the exchange: no requested scope is sensitive at a requested resource,
# so none of the posture sets is built.
sensitive_requested if {
	some audience in input.request.audiences
	some s in data.access.sensitive[audience]
	s in input.request.scope
}

missing_grant if {
	some audience in input.request.audiences
	not data.access.grants[actor_key][audience]
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
} else := refuse("invalid_scope", concat("", [
	"no requested scope is granted without a fresh attested posture (allowed image, debug disabled): ",
	concat(", ", sort(held_back)),
])) if {
	count(held_back) > 0
} else := refuse("invalid_scope", "none of the requested scopes is granted to this agent")

refuse(error, reason) := {"allow": false, "error": error, "reasons": [reason]}
