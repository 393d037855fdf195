"""The steps the token-exchange flows are made of, each raising the OAuth error that fits (RFC 8693 §2.2.2).

A flow reads as its RFC order: verify the actor, then the subject (a user token or a task token), check
the credentials against admin cutoffs, narrow target and scope, ask the policy, then sign and record.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar, TypeVar

from token_exchange.actors import ActorVerifier, VerifiedActor, actor_claim
from token_exchange.attestation import AttestationVerifier
from token_exchange.dpop import TOKEN_TYPE as DPOP_TOKEN_TYPE
from token_exchange.dpop_token import TokenEndpointDpop
from token_exchange.errors import (
    POLICY_ERRORS,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    TemporarilyUnavailable,
    UnauthorizedClient,
)
from token_exchange.jws import TokenError
from token_exchange.rfc8693 import ACCESS_TOKEN_TYPE, ExchangeRequest, Target, TokenResponse
from token_exchange.rfc9068 import ACCESS_TOKEN_JWT_TYPE, Grant, Signer, access_token_claims
from token_exchange.scope import Scope
from token_exchange.txn_tokens import TASK_TOKEN_JWT_TYPE, TXN_TOKEN_TYPE, OwnTokenVerifier, task_token_claims
from token_exchange.user_tokens import SubjectVerifier, VerifiedSubject

from ..audit import AuditEvent
from ..observe import NoObserver, Observer
from ..policy import Decision, PolicyEngine, PolicyInput, PolicyUnavailable
from ..records import CredentialRevoked, IssuedTokenRecord, Presented, StoreError, TaskEnded, barred
from ..resources import Resource, Resources
from ..store import TaskRecords
from ..tasks import Task
from ..token_endpoint import FlowContext

log = logging.getLogger(__name__)
T = TypeVar("T")
OUTLIVED_SUBJECT = "policy let the task outlive the user token"


def refused(exc: CredentialRevoked) -> OAuthError:
    """A credential an admin cut off: invalid_request, as any rejected token (RFC 8693 section 2.2.2). One
    an admin blocked: the agent is not allowed this grant now (unauthorized_client, RFC 6749 section 5.2),
    or the user's grant is withdrawn (invalid_grant: the subject token is the grant, RFC 8693 section 2.1)."""
    token = "actor_token" if exc.which == "actor" else "subject_token"
    if exc.blocked_until is None:
        error: type[OAuthError] = InvalidRequest
    else:
        error = UnauthorizedClient if exc.which == "actor" else InvalidGrant
    return error(f"{token} rejected: {exc.reason()}")


@dataclass(frozen=True, slots=True)
class Lifetimes:
    default_ttl: int
    max_ttl: int
    task_default_ttl: int = 900
    task_max_ttl: int = 3600


@dataclass(frozen=True, slots=True)
class ExchangeSteps:
    """What the flows share: the verifiers, resources, policy, signer and store, and the steps on them."""

    actors: ActorVerifier
    users: SubjectVerifier
    own_tokens: OwnTokenVerifier
    resources: Resources
    policy: PolicyEngine
    signer: Signer
    records: TaskRecords
    lifetimes: Lifetimes
    observer: Observer = field(default_factory=NoObserver)
    attestation: AttestationVerifier | None = None  # None: no attester configured, attestation headers ignored
    dpop: TokenEndpointDpop | None = None  # None: DPoP headers ignored, every token is a Bearer token

    async def actor(self, ctx: FlowContext) -> VerifiedActor:
        """The agent, by its workload identity token; a `client_id`, if sent, must name it; with the posture
        its instance attests in this request, if it sends an attestation."""
        try:
            actor = await self.actors.verify(ctx.exchange.actor.token, now=ctx.now)
        except TokenError as exc:  # RFC 8693 §2.2.2: a bad actor token is invalid_request
            raise InvalidRequest(f"actor_token rejected: {exc}") from exc
        ctx.audit.agent, ctx.audit.agent_domain = actor.id, actor.domain
        if ctx.exchange.client_id is not None and ctx.exchange.client_id != actor.id:
            raise UnauthorizedClient("client_id does not match the actor_token's workload")
        return await self.proven(await self.attested(actor, ctx), ctx)

    async def attested(self, actor: VerifiedActor, ctx: FlowContext) -> VerifiedActor:
        """draft-ietf-oauth-attestation-based-client-auth-10 §7.6: the attestation headers, when sent, are
        checked against the actor; its posture holds for this request only (each request brings its own)."""
        if self.attestation is None:
            return actor
        posture = await self.store(self.attestation.verify(ctx.request, actor=actor.id,
                                                           client_id=ctx.exchange.client_id, now=ctx.now),
                                   "first_use")
        return actor if posture is None else replace(actor, posture=posture)

    async def proven(self, actor: VerifiedActor, ctx: FlowContext) -> VerifiedActor:
        """RFC 9449 §5: the request's DPoP proof, when sent, names the key the access token is bound to;
        with an attestation, that key must be the attested instance key (`cnf.jwk`)."""
        if self.dpop is None:
            return actor
        attested = actor.posture.key_thumbprint if actor.posture is not None else None
        jkt = await self.store(self.dpop.verify(ctx.request, now=ctx.now, attested=attested), "first_use")
        return actor if jkt is None else replace(actor, dpop_jkt=jkt)

    async def user(self, ctx: FlowContext) -> VerifiedSubject:
        """The user, by their token from a configured identity provider."""
        try:
            subject = await self.users.verify(ctx.exchange.subject.token, now=ctx.now)
        except TokenError as exc:
            raise InvalidRequest(f"subject_token rejected: {exc}") from exc
        ctx.audit.user_issuer, ctx.audit.user_subject = subject.issuer, subject.subject
        return subject

    async def live_task(self, ctx: FlowContext) -> Task:
        """The open task a task token names; its signature, `typ`, `aud` and deadline checked."""
        try:
            verified = await self.own_tokens.verify(ctx.exchange.subject.token, typ=TASK_TOKEN_JWT_TYPE,
                                                    now=ctx.now, audience=self.signer.issuer)
        except TokenError as exc:
            raise InvalidRequest(f"subject_token rejected: {exc}") from exc
        task_id = verified.claims.get("txn")
        task = await self.store(self.records.task(task_id), "task") if isinstance(task_id, str) else None
        if task is None:
            raise InvalidRequest("subject_token rejected: unknown task")
        ctx.audit.user_issuer, ctx.audit.user_subject, ctx.audit.task_id = task.user_issuer, task.user_subject, task.id
        if ended := task.ended(ctx.now):
            raise InvalidRequest(f"subject_token rejected: the task has ended ({ended})")
        return task

    async def credentials(self, ctx: FlowContext, actor: VerifiedActor,
                          subject: VerifiedSubject | None = None) -> Presented:
        """Credentials issued before an admin revoked their agent, domain or user are refused, and any while
        an admin block of one of them holds, before the policy is asked (`cached_cutoffs`); the same check
        runs again inside the write's transaction (`Presented`), on what committed."""
        user = (subject.issuer, subject.subject) if subject is not None else None
        presented = Presented(actor.ref, actor.issued_at, user, subject.issued_at if subject else None)
        cutoffs = await self.store(self.records.cached_cutoffs(actor.ref, user=user, now=ctx.now), "cutoffs")
        if refusal := barred(presented, cutoffs):
            raise refused(refusal)
        return presented

    def resource(self, target: Target, actor: VerifiedActor) -> Resource:
        """The resource an access token is asked for; one with `require_dpop` only for a DPoP-bound request.

        A missing proof is `invalid_request` (RFC 6749 §5.2: a required parameter is missing), not
        `invalid_dpop_proof`, which RFC 9449 §5 keeps for a proof that was sent and is invalid."""
        resource = self.resources.resolve(target)
        if resource.require_dpop and actor.dpop_jkt is None:
            raise InvalidRequest("this resource requires DPoP-bound tokens: send a DPoP proof with the request "
                                 "(RFC 9449 section 5)")
        return resource

    def task_resources(self, exchange: ExchangeRequest) -> list[Resource]:
        if not exchange.targets:
            raise InvalidTarget("a task needs at least one resource or audience")
        resources = [self.resources.resolve(t) for t in exchange.targets]
        if len({r.audience for r in resources}) != len(resources):
            raise InvalidTarget("a resource is named twice")
        return resources

    async def decide(self, query: PolicyInput, ctx: FlowContext) -> Decision:
        """Ask the policy; the decision log (input, result, engine, latency) goes into the audit event.
        An engine that cannot answer is the gateway's fault: 503, nothing issued, the cause audited."""
        engine, started = self.policy.engine, time.perf_counter()
        ctx.audit.policy_engine, ctx.audit.policy_input = engine, query.as_json_text()
        try:
            decision = await self.policy.decide(query)
        except PolicyUnavailable as exc:
            self.observer.policy_failed(engine, exc.cause)
            ctx.audit.reasons = (f"policy engine {engine} unavailable ({exc.cause}): {exc.detail}",)
            raise TemporarilyUnavailable(f"the policy engine ({engine}) could not decide ({exc.cause}); "
                                         "nothing was issued, try again") from exc
        seconds = time.perf_counter() - started
        self.observer.policy_decided(engine, seconds)
        ctx.audit.policy_latency_us = round(seconds * 1e6)
        ctx.audit.policy_result = json.dumps(decision.as_document(), separators=(",", ":"))
        ctx.audit.reasons, ctx.audit.policy_revision = decision.reasons, decision.revision
        if decision.decision_id is not None:
            ctx.audit.decision_id = decision.decision_id
        if not decision.allow:
            error = POLICY_ERRORS.get(decision.error or "", UnauthorizedClient)
            raise error(f"policy refused: {decision.reasons[0] if decision.reasons else 'no reason given'}")
        return decision

    async def issue_access(self, task: Task, resource: Resource, scope: Scope, decision: Decision,
                           ctx: FlowContext, presented: Presented, *, bound_to: str | None = None) -> TokenResponse:
        """Sign and record one access token for `resource` within `task` (an implicit task is recorded with
        it and ends with it); `bound_to`, a DPoP key's thumbprint, binds it as `cnf.jkt` (RFC 9449 §6.1)."""
        now = ctx.now
        ttl = min(decision.ttl or self.lifetimes.default_ttl, resource.max_ttl, self.lifetimes.max_ttl,
                  task.deadline - now)
        if ttl <= 0:
            raise InvalidRequest("subject_token rejected: expired")
        self._require_sync()
        claims = access_token_claims(Grant(resource.audience, scope, ttl), subject=task.user_subject,
                                     actor=actor_claim(task.chain), now=now)
        bound = {"cnf": {"jkt": bound_to}} if bound_to is not None else {}
        token = self.signer.sign({**claims, "txn": task.id, **bound}, typ=ACCESS_TOKEN_JWT_TYPE)
        record = IssuedTokenRecord(
            jti=token.jti, user_issuer=task.user_issuer, user_subject=task.user_subject, agent=task.agent.id,
            audience=resource.audience, scope=str(scope), issued_at=now, expires_at=token.expires_at,
            task_id=task.id, agent_domain=task.agent.domain,
        )
        event = ctx.audit.granted(scope=str(scope), jti=token.jti, task_id=task.id, audience=resource.audience)
        created = replace(task, scope=scope, audiences=(resource.audience,), deadline=token.expires_at)
        await self.store(self.records.record_grant(record, event, presented=presented,
                                                   task=created if task.implicit else None), "record_grant")
        self._granted(event)
        token_type = DPOP_TOKEN_TYPE if bound_to is not None else "Bearer"  # RFC 9449 §5
        return TokenResponse(token.token, ACCESS_TOKEN_TYPE, token_type, ttl, scope, (("task_id", task.id),))

    async def issue_task(self, task: Task, scope: Scope, decision: Decision, ctx: FlowContext,
                         presented: Presented, *, subject_expires_at: int | None = None) -> TokenResponse:
        """Sign and record a task token: the task as decided (its scope, and a deadline the policy may
        shorten), within the life of the user token it is opened with (`subject_expires_at`)."""
        now = ctx.now
        deadline = min(task.deadline, now + decision.ttl) if decision.ttl is not None else task.deadline
        task = replace(task, scope=scope, deadline=_within_subject(deadline, subject_expires_at, decision, ctx))
        self._require_sync()
        token = self.signer.sign(
            task_token_claims(task_id=task.id, user=task.user_subject, chain=task.chain, scope=scope,
                              audience=self.signer.issuer, context=task.context, now=now, deadline=task.deadline),
            typ=TASK_TOKEN_JWT_TYPE,
        )
        event = ctx.audit.granted(scope=str(scope), jti=token.jti, task_id=task.id, audience=" ".join(task.audiences))
        await self.store(self.records.record_task(task, event, presented=presented), "record_task")
        self._granted(event)
        return TokenResponse(token.token, TXN_TOKEN_TYPE, "N_A", task.deadline - now, scope, (("task_id", task.id),))

    def _require_sync(self) -> None:
        """Mint nothing while this gateway cannot confirm it sees every revocation (scale-out: a replica
        that lost its PostgreSQL notifications, until it has caught up)."""
        if problem := self.records.revocation_sync_problem():
            raise TemporarilyUnavailable(f"this gateway cannot confirm its revocation state ({problem}); "
                                         "nothing was issued")

    def _granted(self, event: AuditEvent) -> None:
        """A grant was recorded (with its audit event): logged and counted."""
        if log.isEnabledFor(logging.INFO):
            log.info(f"{event.action}.granted", extra={"decision": event.as_dict()})
        self.observer.decided(event)

    async def store(self, awaitable: Awaitable[T], operation: str) -> T:
        """A store call (`operation`: its name, for the metrics); its failures become the refusal that fits,
        with nothing issued."""
        try:
            return await awaitable
        except TaskEnded as exc:  # ended while this request was being decided: nothing was written
            raise InvalidRequest("subject_token rejected: the task has ended") from exc
        except CredentialRevoked as exc:  # revoked or blocked (also: while this request was being decided)
            raise refused(exc) from exc
        except StoreError as exc:
            log.error("exchange.store_failed", extra={"operation": operation, "error": str(exc)})
            self.observer.store_failed(operation)
            raise TemporarilyUnavailable("the gateway could not reach its store; nothing was issued") from exc


class ExchangeFlow:
    """What each token-exchange flow declares: its audit action and which requests it takes, by whether
    the subject is a task token and whether a task token is asked for (RFC 8693 §2.1 token types)."""

    action: ClassVar[str]
    subject_is_task: ClassVar[bool]
    issues_task: ClassVar[bool]

    def __init__(self, steps: ExchangeSteps) -> None:
        self.steps = steps

    def can_handle(self, exchange: ExchangeRequest) -> bool:
        return ((exchange.subject.token_type == TXN_TOKEN_TYPE) == self.subject_is_task
                and (exchange.requested_token_type == TXN_TOKEN_TYPE) == self.issues_task)


def _within_subject(deadline: int, subject_expires_at: int | None, decision: Decision, ctx: FlowContext) -> int:
    """A task does not outlive the user's authority: its deadline is capped by the user token's `exp`,
    unless the policy lets it outlive that token explicitly (transaction tokens §6: MAY, by policy), and
    then the audit record says so."""
    if subject_expires_at is None or deadline <= subject_expires_at:
        return deadline
    if not decision.outlive_subject:
        return subject_expires_at
    ctx.audit.reasons = (*ctx.audit.reasons, OUTLIVED_SUBJECT)
    return deadline


def narrowed(wanted: Scope, where: str) -> Scope:
    """RFC 8693 §2.2.2: nothing requested is available `where` → invalid_scope, before the policy is asked."""
    if not wanted:
        raise InvalidScope(f"none of the requested scopes is {where}")
    return wanted


def granted(decision: Decision, wanted: Scope) -> Scope:
    """Whatever the policy says, the scope only narrows."""
    scope = wanted & Scope.of(list(decision.scope))
    if not scope:
        reason = decision.reasons[0] if decision.reasons else "no reason given"
        raise InvalidScope(f"policy grants none of the requested scopes: {reason}")
    return scope


def union_scopes(resources: Sequence[Resource]) -> Scope:
    return Scope(frozenset().union(*(r.scopes.values for r in resources)))
