# Deputy's packaged policy: which agent may act for which user, with which scopes, for how long.
#
# Queried as data.deputy.decision; input and data are described in docs/policy.md.
# An agent gets only the scopes listed for its SPIFFE ID per resource (data.access.grants), and only
# when the user allows that agent: the user token's may_act names it (RFC 8693 §4.4), or
# data.access.delegations lists it. Sub-agents need data.access.subagents and their own grants.
package deputy

import rego.v1

default decision := {"allow": false, "error": "unauthorized_client", "reasons": ["no rule allows this request"]}

agent := input.actor.sub

default token_ttl := 300

token_ttl := data.access.ttl

default task_ttl := 3600

task_ttl := data.access.task_ttl

default max_depth := 2

max_depth := data.access.max_delegation_depth

# RFC 8693 §4.4: may_act names the party allowed to act; an `iss` there cannot match a SPIFFE actor.
user_allows_agent if {
	input.subject.claims.may_act.sub == agent
	not input.subject.claims.may_act.iss
}

user_allows_agent if {
	some delegation in data.access.delegations
	delegation.issuer == input.subject.iss
	delegation.user == input.subject.sub
	delegation.agent == agent
}

# Within a task the user's consent was checked when the task was opened; the gateway has checked
# that the actor is the task's own agent.
user_allows_agent if {
	input.action == "exchange"
	input.task.agent == agent
}

# A sub-agent is allowed when the delegating agent lists it in data.access.subagents.
delegating_agent := input.chain[count(input.chain) - 1]

parent_may_delegate if agent in object.get(data.access.subagents, delegating_agent, [])

listed(audience) := object.get(object.get(data.access.grants, agent, {}), audience, [])

granted contains s if {
	some s in input.request.scope
	some audience in input.request.audiences
	s in listed(audience)
}

no_grant_for_some_audience if {
	some audience in input.request.audiences
	count(listed(audience)) == 0
}

decision := refuse("unauthorized_client", "the user has not delegated to this agent") if {
	input.action in {"exchange", "open_task"}
	not user_allows_agent
} else := refuse("unauthorized_client", "the delegating agent may not delegate to this agent") if {
	input.action == "delegate"
	not parent_may_delegate
} else := refuse("invalid_request", "the delegation chain would exceed its maximum depth") if {
	input.action == "delegate"
	count(input.chain) > max_depth
} else := refuse("unauthorized_client", "the agent holds no grant for a requested resource") if {
	no_grant_for_some_audience
} else := refuse("invalid_scope", "none of the requested scopes is granted to this agent") if {
	count(granted) == 0
} else := {
	"allow": true,
	"scope": sort([s | some s in granted]),
	"ttl": ttl_for(input.action),
	"reasons": [reason(input.action)],
}

ttl_for("exchange") := token_ttl

ttl_for(action) := task_ttl if action != "exchange"

reason("exchange") := "agent acts for the user; scopes from data.access.grants"

reason("open_task") := "user delegated to agent; task scopes from data.access.grants"

reason("delegate") := "sub-agent allowed by data.access.subagents; scopes from data.access.grants"

refuse(error, reason) := {"allow": false, "error": error, "reasons": [reason]}
