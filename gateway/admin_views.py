"""What the admin API and the admin CLI share, without the web framework: tasks as JSON, and the party an
admin names for a revocation."""

from __future__ import annotations

from typing import Any

from delegation.records import Party
from delegation.tasks import Task
from delegation.times import iso
from token_exchange.errors import InvalidRequest
from token_exchange.spiffe import SpiffeId, SpiffeIdError
from token_exchange.workload_tokens import MAX_ID_CHARS


def task_view(task: Task) -> dict[str, Any]:
    return {
        "id": task.id, "parent_id": task.parent_id, "root_id": task.root_id, "chain": [a.id for a in task.chain],
        "agent": task.agent.id, "agent_domain": task.agent.domain,
        "user": {"iss": task.user_issuer, "sub": task.user_subject},
        "scope": str(task.scope), "audiences": list(task.audiences), "purpose": task.purpose,
        "created_at": task.created_at, "deadline": task.deadline, "implicit": task.implicit,
        "state": task.state, "ended_at": task.ended_at, "created_at_iso": iso(task.created_at),
        "deadline_iso": iso(task.deadline), "ended_at_iso": iso(task.ended_at),
    }


def agent_label(agent: str | None, domain: str | None) -> str:
    """An agent as an admin reads it: a SPIFFE ID alone (it names its trust domain), any other id with the
    issuer it is unique within."""
    if not agent:
        return ""
    return agent if not domain or agent.startswith("spiffe://") else f"{agent} at {domain}"


def revoked_party(*, agent: str | None, trust_domain: str | None, user: str | None, issuer: str | None) -> Party:
    """The party an admin names, checked: exactly one of an agent, a trust domain, a user. `issuer` names
    the subject issuer of a user (without it: that sub at every subject issuer), or the workload issuer of
    an agent that is not a SPIFFE ID, where it is required: such an id is unique only within its issuer,
    and `system:serviceaccount:ns:name` of one cluster is not that of another."""
    if sum(x is not None for x in (agent, trust_domain, user)) != 1:
        raise InvalidRequest("give exactly one of agent, trust_domain or user")
    try:
        if agent is not None:
            return _agent(agent, issuer)
        if trust_domain is not None:
            if issuer is not None:
                raise InvalidRequest("issuer is for an agent or a user, not a trust domain")
            return Party("domain", SpiffeId.check_trust_domain(trust_domain))
    except SpiffeIdError as exc:
        raise InvalidRequest(f"not a SPIFFE ID or trust domain: {exc}") from exc
    assert user is not None
    _printable("user", user)
    return Party("user", user, issuer)


BLOCKABLE = ("agent", "trust_domain", "workload_issuer", "user")


def blocked_party(body: dict[str, Any]) -> tuple[str, Party]:
    """The kind and party a block names: as `revoked_party`, or every agent of one workload issuer."""
    named = [kind for kind in BLOCKABLE if body.get(kind) is not None]
    if len(named) != 1:
        raise InvalidRequest("give exactly one of agent, trust_domain, workload_issuer or user")
    values = {name: body.get(name) for name in (*BLOCKABLE, "issuer")}
    if not all(v is None or isinstance(v, str) for v in values.values()):
        raise InvalidRequest("agent, trust_domain, workload_issuer, user and issuer are strings")
    kind = named[0]
    if kind != "workload_issuer":
        party = revoked_party(agent=values["agent"], trust_domain=values["trust_domain"], user=values["user"],
                              issuer=values["issuer"])
        return kind, party
    if values["issuer"] is not None:
        raise InvalidRequest("a workload issuer names itself: give no issuer with it")
    _printable("workload_issuer", values["workload_issuer"] or "")
    return kind, Party("domain", values["workload_issuer"] or "")


def _printable(name: str, value: str) -> None:
    if not value or len(value) > MAX_ID_CHARS or not value.isprintable():
        raise InvalidRequest(f"{name} must be 1 to {MAX_ID_CHARS} printable characters")


def _agent(agent: str, issuer: str | None) -> Party:
    """A SPIFFE ID names its trust domain itself; any other agent id is named at its workload issuer."""
    if agent[:7].lower() == "spiffe:":
        if issuer is not None:
            raise InvalidRequest("a SPIFFE ID names its own trust domain: give no issuer with it")
        return Party("agent", str(SpiffeId.parse(agent)))
    if issuer is None:
        raise InvalidRequest("the agent is not a SPIFFE ID: give its workload issuer too (issuer), since a "
                             "Kubernetes or OIDC workload's id is unique only within its issuer")
    _printable("agent", agent)
    _printable("issuer", issuer)
    return Party("agent", agent, issuer)
