"""What the admin API and the admin CLI share, without the web framework: tasks as JSON, and the party an
admin names for a revocation."""

from __future__ import annotations

from typing import Any

from delegation.records import Party
from delegation.tasks import Task
from token_exchange.errors import InvalidRequest
from token_exchange.spiffe import SpiffeId, SpiffeIdError


def task_view(task: Task) -> dict[str, Any]:
    return {
        "id": task.id, "parent_id": task.parent_id, "root_id": task.root_id, "chain": [a.id for a in task.chain],
        "agent": task.agent.id, "user": {"iss": task.user_issuer, "sub": task.user_subject},
        "scope": str(task.scope), "audiences": list(task.audiences), "purpose": task.purpose,
        "created_at": task.created_at, "deadline": task.deadline, "implicit": task.implicit,
        "state": task.state, "ended_at": task.ended_at,
    }


def revoked_party(*, agent: str | None, trust_domain: str | None, user: str | None, issuer: str | None) -> Party:
    """The party an admin names, checked: exactly one of an agent's SPIFFE ID, a trust domain, a user."""
    if sum(x is not None for x in (agent, trust_domain, user)) != 1:
        raise InvalidRequest("give exactly one of agent, trust_domain or user")
    try:
        if agent is not None:
            return Party("agent", str(SpiffeId.parse(agent)))
        if trust_domain is not None:
            return Party("domain", SpiffeId.check_trust_domain(trust_domain))
    except SpiffeIdError as exc:
        raise InvalidRequest(f"not a SPIFFE ID or trust domain: {exc}") from exc
    assert user is not None
    return Party("user", user, issuer)
