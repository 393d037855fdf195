"""The token exchange (RFC 8693 §2) for agents acting for users, within tasks.

Four requests, one order of checks: verify the actor, then the subject (a user token or a task token),
narrow scope, target and lifetime, ask the policy, mint, record. Each step raises the OAuth error that
fits; one audit event is written for either outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from token_exchange import rfc8693
from token_exchange.errors import (
    POLICY_ERRORS,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    TemporarilyUnavailable,
    UnauthorizedClient,
)
from token_exchange.jws import TokenError
from token_exchange.rfc8693 import ACCESS_TOKEN_TYPE, ExchangeRequest, TokenResponse
from token_exchange.rfc9068 import ACCESS_TOKEN_JWT_TYPE, Grant, Signer, access_token_claims, new_id
from token_exchange.scope import Scope
from token_exchange.spiffe import VerifiedActor
from token_exchange.txn_tokens import (
    TASK_TOKEN_JWT_TYPE,
    TXN_TOKEN_TYPE,
    OwnTokenVerifier,
    actor_claim,
    task_token_claims,
)
from token_exchange.user_tokens import VerifiedSubject

from .audit import AuditEvent
from .policy import Decision, PolicyEngine, PolicyInput
from .records import IssuedTokenRecord, StoreError, TaskEnded
from .resources import Resource, Resources
from .tasks import Task

log = logging.getLogger(__name__)
V_co = TypeVar("V_co", covariant=True)
T = TypeVar("T")


class IdentityVerifier(Protocol[V_co]):
    async def verify(self, token: str, *, now: int) -> V_co: ...


class TaskRecords(Protocol):
    """The slice of the store the exchange uses: each grant commits with its task and audit event."""

    async def record_grant(self, token: IssuedTokenRecord, event: AuditEvent, task: Task | None = None) -> None: ...

    async def record_task(self, task: Task, event: AuditEvent) -> None: ...

    async def append_audit(self, event: AuditEvent) -> None: ...

    async def task(self, task_id: str) -> Task | None: ...

    async def cutoffs(self, *, agent: str, trust_domain: str, user: tuple[str, str] | None
                      ) -> tuple[int | None, int | None]: ...


@dataclass(frozen=True, slots=True)
class Lifetimes:
    default_ttl: int
    max_ttl: int
    task_default_ttl: int = 900
    task_max_ttl: int = 3600


class TokenExchange:
    """RFC 8693 token exchange: one-shot access tokens, tasks, tokens within tasks, sub-agent delegation."""

    def __init__(
        self,
        *,
        actors: IdentityVerifier[VerifiedActor],
        subjects: IdentityVerifier[VerifiedSubject],
        own_tokens: OwnTokenVerifier,
        resources: Resources,
        policy: PolicyEngine,
        signer: Signer,
        records: TaskRecords,
        lifetimes: Lifetimes,
    ) -> None:
        self.actors = actors
        self.subjects = subjects
        self.own_tokens = own_tokens
        self.resources = resources
        self.policy = policy
        self.signer = signer
        self.records = records
        self.lifetimes = lifetimes

    async def token_endpoint(self, pairs: list[tuple[str, str]], *, now: int) -> TokenResponse:
        """Parse the form (RFC 8693 §2.1) and run the exchange; every outcome is audited."""
        facts = self._facts(now)
        try:
            req = rfc8693.parse(pairs)
            facts["requested_scope"] = str(req.scope)
            facts["audience"] = " ".join(t.value for t in req.targets)[:2048] or None
            return await self._exchange(req, now, facts)
        except OAuthError as exc:
            await self._audit_refusal(exc, facts)
            raise

    async def refuse(self, exc: OAuthError, *, now: int) -> None:
        """Audit a refusal that happened before the form could be parsed (size, type, client auth)."""
        await self._audit_refusal(exc, self._facts(now))

    def _facts(self, now: int) -> dict[str, Any]:
        return {"decision_id": new_id(), "at": now, "action": "exchange", "outcome": "refused",
                "policy_revision": self.policy.revision}

    async def _exchange(self, req: ExchangeRequest, now: int, facts: dict[str, Any]) -> TokenResponse:
        actor = await _verified(self.actors, req.actor.token, "actor_token", now)
        agent = str(actor.spiffe_id)
        facts["agent"] = agent
        if req.client_id is not None and req.client_id != agent:
            raise UnauthorizedClient("client_id does not match the actor_token SPIFFE ID")
        opening = req.requested_token_type == TXN_TOKEN_TYPE
        if req.subject.token_type == TXN_TOKEN_TYPE:
            await self._check_cutoffs(actor, None)
            parent = await self._live_task(req.subject.token, now)
            facts.update(user_issuer=parent.user_issuer, user_subject=parent.user_subject, task_id=parent.id)
            if opening:
                facts["action"] = "delegate"
                return await self._delegate(parent, actor, req, now, facts)
            if parent.agent != agent:
                raise InvalidRequest("subject_token rejected: the task belongs to another agent")
            return await self._mint(parent, actor, req, now, facts, subject=None)
        subject = await _verified(self.subjects, req.subject.token, "subject_token", now)
        facts.update(user_issuer=subject.issuer, user_subject=subject.subject)
        await self._check_cutoffs(actor, subject)
        if opening:
            facts["action"] = "open_task"
            return await self._open(subject, actor, req, now, facts)
        task = Task.new_root(agent=agent, user_issuer=subject.issuer, user_subject=subject.subject,
                             scope=subject.scope, audiences=(), purpose=None, created_at=now,
                             deadline=subject.expires_at, implicit=True)
        return await self._mint(task, actor, req, now, facts, subject=subject)

    async def _mint(
        self, task: Task, actor: VerifiedActor, req: ExchangeRequest, now: int, facts: dict[str, Any], *,
        subject: VerifiedSubject | None,
    ) -> TokenResponse:
        """An access token for one resource: within an open `task`, or, given the user's verified token
        (`subject`), within an implicit task that ends with the token."""
        implicit = subject is not None
        resource = self.resources.resolve(req.single_target())
        if not implicit and resource.audience not in task.audiences:
            raise InvalidTarget("the task does not include this resource")
        facts.update(audience=resource.audience, task_id=task.id)
        wanted = req.scope & task.scope & resource.scopes
        if not wanted:  # RFC 8693 §2.2.2: checked before the policy is asked
            holder = "held by the user" if implicit else "within the task"
            raise InvalidScope(f"none of the requested scopes is {holder} and offered by the resource")
        query = _policy_input("exchange", task, subject, actor, req, [resource.audience], now)
        decision = await self._decide(query, facts)
        scope = _granted(decision, wanted)
        ttl = min(decision.ttl or self.lifetimes.default_ttl, resource.max_ttl, self.lifetimes.max_ttl,
                  task.deadline - now)
        if ttl <= 0:
            raise InvalidRequest("subject_token rejected: expired")
        grant = Grant(resource.audience, scope, ttl)
        claims = access_token_claims(grant, subject=task.user_subject, actor=actor_claim(task.chain), now=now)
        token = self.signer.sign({**claims, "txn": task.id}, typ=ACCESS_TOKEN_JWT_TYPE)
        facts.update(outcome="granted", granted_scope=str(scope), jti=token.jti)
        record = IssuedTokenRecord(
            jti=token.jti, user_issuer=task.user_issuer, user_subject=task.user_subject, agent=task.agent,
            audience=resource.audience, scope=str(scope), issued_at=now, expires_at=token.expires_at,
            task_id=task.id,
        )
        if implicit:  # the implicit task ends with its token
            task = replace(task, scope=scope, audiences=(resource.audience,), deadline=token.expires_at)
        await self._store(self.records.record_grant(record, AuditEvent(**facts), task if implicit else None))
        log.info("exchange.granted", extra={"event": facts})
        return TokenResponse(token.token, ACCESS_TOKEN_TYPE, "Bearer", ttl, scope, (("task_id", task.id),))

    async def _open(
        self, subject: VerifiedSubject, actor: VerifiedActor, req: ExchangeRequest, now: int, facts: dict[str, Any]
    ) -> TokenResponse:
        """A task token for one user, one agent, a set of resources and a scope ceiling."""
        if subject.expires_at <= now:  # within the clock-skew leeway, but no task starts from it
            raise InvalidRequest("subject_token rejected: expired")
        resources = self._resources(req)
        offered = Scope(frozenset().union(*(r.scopes.values for r in resources)))
        wanted = req.scope & subject.scope & offered
        if not wanted:
            raise InvalidScope("none of the requested scopes is held by the user and offered by the resources")
        deadline = now + min(req.task_ttl or self.lifetimes.task_default_ttl, self.lifetimes.task_max_ttl)
        draft = Task.new_root(agent=str(actor.spiffe_id), user_issuer=subject.issuer, user_subject=subject.subject,
                              scope=wanted, audiences=tuple(r.audience for r in resources), purpose=req.purpose,
                              created_at=now, deadline=deadline)
        query = _policy_input("open_task", draft, subject, actor, req, list(draft.audiences), now)
        return await self._issue_task(draft, query, wanted, now, facts)

    async def _delegate(
        self, parent: Task, actor: VerifiedActor, req: ExchangeRequest, now: int, facts: dict[str, Any]
    ) -> TokenResponse:
        """A child task for a sub-agent: scope, audiences and deadline only narrow (txn-tokens §13.15)."""
        agent = str(actor.spiffe_id)
        if agent in parent.chain:
            raise UnauthorizedClient("an agent already in the delegation chain cannot be delegated to again")
        audiences = tuple(r.audience for r in self._resources(req)) if req.targets else parent.audiences
        if not set(audiences) <= set(parent.audiences):
            raise InvalidTarget("a delegated task cannot add resources its parent task does not have")
        wanted = req.scope & parent.scope
        if not wanted:
            raise InvalidScope("none of the requested scopes is within the parent task")
        deadline = now + req.task_ttl if req.task_ttl else parent.deadline
        if deadline > parent.deadline:
            raise InvalidRequest("task_ttl would outlive the parent task; a delegated task only narrows")
        child = parent.child(agent=agent, scope=wanted, audiences=audiences, purpose=req.purpose or parent.purpose,
                             created_at=now, deadline=deadline)
        query = _policy_input("delegate", child, None, actor, req, list(audiences), now, parent=parent)
        return await self._issue_task(child, query, wanted, now, facts)

    async def _issue_task(
        self, task: Task, query: PolicyInput, wanted: Scope, now: int, facts: dict[str, Any]
    ) -> TokenResponse:
        decision = await self._decide(query, facts)
        scope = _granted(decision, wanted)
        if decision.ttl is not None:
            task = replace(task, deadline=min(task.deadline, now + decision.ttl))
        task = replace(task, scope=scope)
        token = self.signer.sign(
            task_token_claims(task_id=task.id, user=task.user_subject, chain=task.chain, scope=scope,
                              audience=self.signer.issuer, purpose=task.purpose, now=now, deadline=task.deadline),
            typ=TASK_TOKEN_JWT_TYPE,
        )
        facts.update(outcome="granted", granted_scope=str(scope), task_id=task.id, jti=token.jti,
                     audience=" ".join(task.audiences))
        await self._store(self.records.record_task(task, AuditEvent(**facts)))
        log.info(f"{facts['action']}.granted", extra={"event": facts})
        return TokenResponse(token.token, TXN_TOKEN_TYPE, "N_A", task.deadline - now, scope, (("task_id", task.id),))

    def _resources(self, req: ExchangeRequest) -> list[Resource]:
        if not req.targets:
            raise InvalidTarget("a task needs at least one resource or audience")
        resources = [self.resources.resolve(t) for t in req.targets]
        if len({r.audience for r in resources}) != len(resources):
            raise InvalidTarget("a resource is named twice")
        return resources

    async def _live_task(self, token: str, now: int) -> Task:
        """The open task a task token names; its signature, `typ`, `aud` and deadline checked."""
        try:
            verified = await self.own_tokens.verify(token, typ=TASK_TOKEN_JWT_TYPE, now=now,
                                                    audience=self.signer.issuer)
        except TokenError as exc:
            raise InvalidRequest(f"subject_token rejected: {exc}") from exc
        task_id = verified.claims.get("txn")
        task = await self._store(self.records.task(task_id)) if isinstance(task_id, str) else None
        if task is None:
            raise InvalidRequest("subject_token rejected: unknown task")
        if ended := task.ended(now):
            raise InvalidRequest(f"subject_token rejected: the task has ended ({ended})")
        return task

    async def _check_cutoffs(self, actor: VerifiedActor, subject: VerifiedSubject | None) -> None:
        """Credentials issued before an admin revoked their agent, trust domain or user are refused."""
        user = (subject.issuer, subject.subject) if subject is not None else None
        agent_cutoff, user_cutoff = await self._store(self.records.cutoffs(
            agent=str(actor.spiffe_id), trust_domain=actor.spiffe_id.trust_domain, user=user))
        if _issued_by(actor.claims, agent_cutoff):
            raise InvalidRequest("actor_token rejected: issued before an admin revoked this agent")
        if subject is not None and _issued_by(subject.claims, user_cutoff):
            raise InvalidRequest("subject_token rejected: issued before an admin revoked this user")

    async def _decide(self, query: PolicyInput, facts: dict[str, Any]) -> Decision:
        decision = await self.policy.decide(query)
        facts["reasons"] = decision.reasons
        if not decision.allow:
            error = POLICY_ERRORS.get(decision.error or "", UnauthorizedClient)
            raise error(f"policy refused: {decision.reasons[0] if decision.reasons else 'no reason given'}")
        return decision

    @staticmethod
    async def _store(awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except TaskEnded as exc:  # ended while this request was being decided: nothing was written
            raise InvalidRequest("subject_token rejected: the task has ended") from exc
        except StoreError as exc:
            log.error("exchange.store_failed", extra={"error": str(exc)})
            raise TemporarilyUnavailable("the gateway could not reach its store; nothing was issued") from exc

    async def _audit_refusal(self, exc: OAuthError, facts: dict[str, Any]) -> None:
        event = AuditEvent(**{**facts, "error": exc.error, "reasons": facts.get("reasons") or (exc.description,)})
        log.info("exchange.refused", extra={"event": facts})
        try:
            await self.records.append_audit(event)
        except StoreError as exc:
            log.error("audit.store_failed", extra={"error": str(exc)})


async def _verified(verifier: IdentityVerifier[V_co], token: str, name: str, now: int) -> V_co:
    try:
        return await verifier.verify(token, now=now)
    except TokenError as exc:  # RFC 8693 §2.2.2: a bad subject or actor token is invalid_request
        raise InvalidRequest(f"{name} rejected: {exc}") from exc


def _issued_by(claims: Mapping[str, Any], cutoff: int | None) -> bool:
    """Whether a credential was issued at or before `cutoff`; without `iat`, it cannot show it was not."""
    if cutoff is None:
        return False
    iat = claims.get("iat")
    return type(iat) is not int or iat <= cutoff


def _granted(decision: Decision, wanted: Scope) -> Scope:
    """Whatever the policy says, the scope only narrows."""
    scope = wanted & Scope.of(list(decision.scope))
    if not scope:
        reason = decision.reasons[0] if decision.reasons else "no reason given"
        raise InvalidScope(f"policy grants none of the requested scopes: {reason}")
    return scope


def _policy_input(
    action: str, task: Task, subject: VerifiedSubject | None, actor: VerifiedActor, req: ExchangeRequest,
    audiences: list[str], now: int, *, parent: Task | None = None,
) -> PolicyInput:
    document: dict[str, Any] = {
        "action": action,
        "subject": {
            "iss": task.user_issuer,
            "sub": task.user_subject,
            "scope": (subject.scope if subject else task.scope).sorted(),
            "claims": subject.claims if subject else {},
        },
        "actor": {
            "sub": str(actor.spiffe_id),
            "trust_domain": actor.spiffe_id.trust_domain,
            "claims": actor.claims,
        },
        "request": {
            "scope": req.scope.sorted(),
            "audience": audiences[0],
            "audiences": audiences,
            "requested_token_type": req.requested_token_type,
        },
        "now": now,
    }
    if action == "exchange" and subject is None:
        document["task"] = task.policy_view()
    if action == "open_task":
        document["task"] = {"purpose": task.purpose, "deadline": task.deadline}
    if parent is not None:
        document["task"] = parent.policy_view()
        document["chain"] = list(parent.chain)
        document["request"]["deadline"] = task.deadline
    return PolicyInput(document)
