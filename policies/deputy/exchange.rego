# Deputy's packaged policy: which agent may act for which user, with which scopes, for how long.
#
# Queried as data.deputy.decision. Input: see docs/policy.md. Data: policies/data.json.
# An agent gets only the scopes listed for its SPIFFE ID per resource, and only when the user
# allows that agent: the user token's may_act names it (RFC 8693 §4.4), or data lists the delegation.
package deputy

import rego.v1

default decision := {"allow": false, "error": "unauthorized_client", "reasons": ["no rule allows this request"]}

agent := input.actor.sub

# RFC 8693 §4.4: may_act names the party allowed to act; an `iss` there cannot match a SPIFFE actor.
user_allows_agent if {
	input.subject.claims.may_act.sub == agent
	not input.subject.claims.may_act.iss
}

user_allows_agent if {
	some delegation in data.deputy.delegations
	delegation.issuer == input.subject.iss
	delegation.user == input.subject.sub
	delegation.agent == agent
}

listed_scopes := object.get(object.get(data.deputy.grants, agent, {}), input.request.audience, [])

granted contains s if {
	some s in input.request.scope
	s in listed_scopes
}

default token_ttl := 300

token_ttl := data.deputy.ttl

decision := refuse("unauthorized_client", "the user has not delegated to this agent") if {
	input.action == "exchange"
	not user_allows_agent
} else := refuse("unauthorized_client", "the agent holds no grant for this resource") if {
	input.action == "exchange"
	count(listed_scopes) == 0
} else := refuse("invalid_scope", "none of the requested scopes is granted to this agent") if {
	input.action == "exchange"
	count(granted) == 0
} else := {
	"allow": true,
	"scope": sort([s | some s in granted]),
	"ttl": token_ttl,
	"reasons": ["user delegated to agent; scopes granted by data.deputy.grants"],
} if {
	input.action == "exchange"
}

refuse(error, reason) := {"allow": false, "error": error, "reasons": [reason]}
