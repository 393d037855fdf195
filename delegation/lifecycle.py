"""Ending tasks and telling resource servers: completion, RFC 7009 revocation, RFC 7662 introspection,
the revocation feed, and the admin operations. Callers arrive already authenticated by the gateway."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from token_exchange.errors import InvalidRequest, OAuthError, UnauthorizedClient
from token_exchange.jws import TokenError
from token_exchange.rfc9068 import ACCESS_TOKEN_JWT_TYPE, new_id
from token_exchange.txn_tokens import TASK_TOKEN_JWT_TYPE, OwnToken, OwnTokenVerifier

from .audit import AuditEvent
from .records import IssuedTokenRecord
from .resources import Resources
from .tasks import COMPLETED, REVOKED, Revocation, Task

log = logging.getLogger(__name__)
INACTIVE: dict[str, Any] = {"active": False}


class NotFound(OAuthError):
    """No such task for this caller (a task of another agent is reported the same way)."""

    error = "not_found"
    status = 404


class TaskStore(Protocol):
    """The slice of the store that ending tasks and answering resource servers use."""

    async def task(self, task_id: str) -> Task | None: ...

    async def token(self, jti: str) -> tuple[IssuedTokenRecord, bool, Task | None] | None: ...

    async def end_tasks(self, roots: Sequence[str], *, state: str, reason: str, now: int,
                        event: AuditEvent | None = None) -> Revocation | None: ...

    async def end_matching(self, *, agent: str | None = None, trust_domain: str | None = None,
                           user: tuple[str | None, str] | None = None, reason: str, now: int,
                           event: AuditEvent | None = None) -> Revocation | None: ...

    async def revoke_token(self, jti: str, *, reason: str, now: int, event: AuditEvent | None = None
                           ) -> Revocation | None: ...


class TaskAdmin:
    """Ending tasks with their descendants and tokens: by their agent, an admin, or the command line."""

    def __init__(self, store: TaskStore) -> None:
        self.store = store

    async def revoke_task(self, task_id: str, *, admin: str, now: int, state: str = REVOKED) -> dict[str, Any]:
        """An admin ends any task (revoked, or completed on the agent's behalf)."""
        task = await self.store.task(task_id)
        if task is None:
            raise NotFound("no such task")
        action = "admin_complete" if state == COMPLETED else "admin_revoke"
        revocation = await self.end(task, state=state, by=admin, action=action, now=now)
        return _task_state(await self.store.task(task_id) or task, revocation)

    async def revoke_matching(self, *, admin: str, now: int, agent: str | None = None,
                              trust_domain: str | None = None, user: tuple[str | None, str] | None = None
                              ) -> dict[str, Any]:
        what = agent or (f"trust domain {trust_domain}" if trust_domain else f"user {user}")
        event = _event("admin_revoke", admin, None, now, reasons=(f"revoke everything of {what}",))
        revocation = await self.store.end_matching(agent=agent, trust_domain=trust_domain, user=user,
                                                   reason=f"revoked by admin {admin}", now=now, event=event)
        return {"revoked_tasks": list(revocation.task_ids) if revocation else [],
                "revoked_tokens": len(revocation.jtis) if revocation else 0}

    async def end(self, task: Task, *, state: str, by: str, action: str, now: int) -> Revocation | None:
        event = _event(action, by, task.id, now)
        revocation = await self.store.end_tasks([task.id], state=state, reason=f"{action} by {by}", now=now,
                                                event=event)
        log.info("task.ended", extra={"task_id": task.id, "state": state, "by": by,
                                      "tokens": len(revocation.jtis) if revocation else 0})
        return revocation


class TaskLifecycle:
    """What agents and resource servers do once tasks exist: complete, revoke, introspect."""

    def __init__(self, *, store: TaskStore, own_tokens: OwnTokenVerifier, resources: Resources) -> None:
        self.store = store
        self.own_tokens = own_tokens
        self.resources = resources
        self.admin = TaskAdmin(store)

    async def complete(self, task_id: str, *, agent: str, now: int) -> dict[str, Any]:
        """The task's own agent ends it: the task, its descendants and every token under them."""
        task = await self.store.task(task_id)
        if task is None or task.agent != agent:
            raise NotFound("no such task for this agent")
        revocation = await self.admin.end(task, state=COMPLETED, by=agent, action="complete", now=now)
        return _task_state(await self.store.task(task_id) or task, revocation)

    async def revoke(self, token: str, *, agent: str, now: int) -> None:
        """RFC 7009 §2: revoke an access token, or a task token (then its whole task). Invalid tokens: no-op."""
        verified = await self._own(token, now)
        if verified is None:
            return  # §2.2: an invalid or unknown token is answered 200 all the same
        if verified.typ == TASK_TOKEN_JWT_TYPE:
            task = await self.store.task(str(verified.claims.get("txn")))
            if task is None:
                return
            if task.agent != agent:
                raise UnauthorizedClient("the token was not issued to this agent")
            await self.admin.end(task, state=COMPLETED, by=agent, action="revoke", now=now)
            return
        found = await self.store.token(verified.jti)
        if found is None:
            return
        record, _, _ = found
        if record.agent != agent:
            raise UnauthorizedClient("the token was not issued to this agent")
        await self.store.revoke_token(record.jti, reason=f"revoked by {agent}", now=now,
                                      event=_event("revoke", agent, record.task_id, now, jti=record.jti))

    async def introspect(self, token: str, *, caller: str, now: int) -> dict[str, Any]:
        """RFC 7662 §2.2: active only if valid, unrevoked, its task open, and the caller a client of its aud."""
        verified = await self._own(token, now)
        if verified is None or verified.typ != ACCESS_TOKEN_JWT_TYPE:
            return INACTIVE
        claims = verified.claims
        try:
            resource = self.resources.resolve_audience(str(claims.get("aud")))
        except OAuthError:
            return INACTIVE
        if caller not in resource.clients:
            return INACTIVE  # a caller learns nothing about tokens for other audiences
        if claims["exp"] <= now:  # §2.2: expired is inactive, without the verifiers' clock-skew leeway
            return INACTIVE
        found = await self.store.token(verified.jti)
        if found is None:
            return INACTIVE
        record, revoked, task = found
        if revoked or (record.task_id is not None and (task is None or task.ended(now))):
            return INACTIVE  # a task purged after it ended counts as ended
        keep = ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "jti", "act", "txn")
        return {"active": True, "token_type": "Bearer", **{k: claims[k] for k in keep if k in claims}}

    async def _own(self, token: str, now: int) -> OwnToken | None:
        if not token:
            raise InvalidRequest("token is required")
        for typ in (ACCESS_TOKEN_JWT_TYPE, TASK_TOKEN_JWT_TYPE):
            try:
                return await self.own_tokens.verify(token, typ=typ, now=now)
            except TokenError:
                continue
        return None


def _event(action: str, by: str, task_id: str | None, now: int, *, jti: str | None = None,
           reasons: tuple[str, ...] = ()) -> AuditEvent:
    return AuditEvent(decision_id=new_id(), at=now, action=action, outcome="granted", agent=by, task_id=task_id,
                      jti=jti, reasons=reasons or (f"{action} by {by}",))


def _task_state(task: Task, revocation: Revocation | None) -> dict[str, Any]:
    return {
        "task_id": task.id,
        "state": task.state,
        "ended_tasks": list(revocation.task_ids) if revocation else [],
        "revoked_tokens": len(revocation.jtis) if revocation else 0,
    }
