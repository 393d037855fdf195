"""Ending tasks and telling resource servers: completion, RFC 7009 revocation, RFC 7662 introspection.
Callers arrive already authenticated (`callers.py`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from token_exchange.actors import ActorRef
from token_exchange.dpop import TOKEN_TYPE as DPOP_TOKEN_TYPE
from token_exchange.errors import InvalidRequest, OAuthError, UnauthorizedClient
from token_exchange.jws import TokenError
from token_exchange.rfc9068 import ACCESS_TOKEN_JWT_TYPE
from token_exchange.txn_tokens import TASK_TOKEN_JWT_TYPE, OwnToken, OwnTokenVerifier

from .admin import AdminStore, NotFound, TaskAdmin, audit_event, task_state
from .observe import Observer
from .resources import Resources
from .store import FeedPage, RevocationFeed
from .tasks import COMPLETED, USER, Revocation

INACTIVE: dict[str, Any] = {"active": False}
_INTROSPECTED = ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "jti", "act", "txn", "cnf")


class LifecycleStore(AdminStore, RevocationFeed, Protocol):
    """What the lifecycle uses of the store: ending tasks and tokens (and blocks), and the feed that tells of it."""


class TaskLifecycle:
    """What agents and resource servers do once tasks exist: complete, revoke, introspect, read the feed."""

    def __init__(self, *, store: LifecycleStore, own_tokens: OwnTokenVerifier, resources: Resources,
                 observer: Observer | None = None) -> None:
        self.store = store
        self.own_tokens = own_tokens
        self.resources = resources
        self.admin = TaskAdmin(store, observer)

    async def complete(self, task_id: str, *, agent: ActorRef, now: int) -> dict[str, Any]:
        """The task's own agent ends it: the task, its descendants and every token under them."""
        task = await self.store.task(task_id)
        if task is None or task.agent != agent:
            raise NotFound("no such task for this agent")
        revocation = await self.admin.end(task, state=COMPLETED, by=agent.id, action="complete", now=now,
                                          by_domain=agent.domain)
        return task_state(await self.store.task(task_id) or task, revocation)

    async def revoke(self, token: str, *, agent: ActorRef, now: int) -> None:
        """RFC 7009 §2: revoke an access token, or a task token (then its whole task). Invalid tokens: no-op."""
        verified = await self._own(token, now)
        if verified is None:
            return  # §2.2: an invalid or unknown token is answered 200 all the same
        if verified.typ == TASK_TOKEN_JWT_TYPE:
            await self._revoke_task(str(verified.claims.get("txn")), agent, now)
            return
        found = await self.store.token(verified.jti)
        if found is None:
            return
        record = found.record
        if (record.agent, record.agent_domain) != (agent.id, agent.domain):
            raise UnauthorizedClient("the token was not issued to this agent")
        revocation = await self.store.revoke_token(
            record.jti, reason=f"revoked by {agent.id}", now=now,
            event=audit_event("revoke", agent.id, record.task_id, now, jti=record.jti, domain=agent.domain),
            initiator=USER)
        self.admin.observer.revoked("token", 1 if revocation else 0)

    async def _revoke_task(self, task_id: str, agent: ActorRef, now: int) -> None:
        task = await self.store.task(task_id)
        if task is None:
            return
        if task.agent != agent:
            raise UnauthorizedClient("the token was not issued to this agent")
        await self.admin.end(task, state=COMPLETED, by=agent.id, action="revoke", now=now, by_domain=agent.domain)

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
        token_type = DPOP_TOKEN_TYPE if "cnf" in claims else "Bearer"  # RFC 9449 §6.2: `cnf.jkt` as minted
        return {"active": True, "token_type": token_type, **{k: claims[k] for k in _INTROSPECTED if k in claims}}

    async def feed(self, caller: str, *, since: int, limit: int) -> FeedPage:
        """The revocation feed as `caller` may see it: like introspection, only about the tokens and tasks
        of the resources that list it in `clients`."""
        return await self.store.revocations(since, limit, audiences=self.resources.audiences_of(caller))

    def follow(self, caller: str, cursor: int) -> AsyncIterator[Revocation]:
        """The same events as they are committed (`feed`), for the stream."""
        return self.store.follow(cursor, audiences=self.resources.audiences_of(caller))

    async def _own(self, token: str, now: int) -> OwnToken | None:
        if not token:
            raise InvalidRequest("token is required")
        for typ in (ACCESS_TOKEN_JWT_TYPE, TASK_TOKEN_JWT_TYPE):
            try:
                return await self.own_tokens.verify(token, typ=typ, now=now)
            except TokenError:
                continue
        return None
