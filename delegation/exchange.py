"""The token exchange (RFC 8693 §2): verify both tokens, narrow the scope, ask the policy, mint, record.

Each step raises the OAuth error that fits; one audit event is written for either outcome.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from token_exchange.errors import (
    POLICY_ERRORS,
    InvalidRequest,
    InvalidScope,
    OAuthError,
    TemporarilyUnavailable,
    UnauthorizedClient,
)
from token_exchange.jws import TokenError
from token_exchange.rfc8693 import ACCESS_TOKEN_TYPE, ExchangeRequest, TokenResponse
from token_exchange.rfc9068 import Grant, Minter, new_id
from token_exchange.scope import Scope
from token_exchange.spiffe import VerifiedActor
from token_exchange.user_tokens import VerifiedSubject

from .audit import AuditEvent
from .policy import Decision, PolicyEngine, PolicyInput
from .records import ExchangeRecords, IssuedTokenRecord, StoreError
from .resources import Resource, Resources

log = logging.getLogger(__name__)
V_co = TypeVar("V_co", covariant=True)


class IdentityVerifier(Protocol[V_co]):
    async def verify(self, token: str, *, now: int) -> V_co: ...


@dataclass(frozen=True, slots=True)
class Lifetimes:
    default_ttl: int
    max_ttl: int


class TokenExchange:
    """RFC 8693 token exchange for agents acting for users."""

    def __init__(
        self,
        *,
        actors: IdentityVerifier[VerifiedActor],
        subjects: IdentityVerifier[VerifiedSubject],
        resources: Resources,
        policy: PolicyEngine,
        minter: Minter,
        records: ExchangeRecords,
        lifetimes: Lifetimes,
    ) -> None:
        self.actors = actors
        self.subjects = subjects
        self.resources = resources
        self.policy = policy
        self.minter = minter
        self.records = records
        self.lifetimes = lifetimes

    async def exchange(self, req: ExchangeRequest, *, now: int) -> TokenResponse:
        """Run the exchange and audit it, granted or refused."""
        event = AuditEvent(
            decision_id=new_id(),
            at=now,
            action="exchange",
            outcome="refused",
            requested_scope=str(req.scope),
            audience=req.targets[0].value if len(req.targets) == 1 else None,
            policy_revision=self.policy.revision,
        )
        try:
            response, event = await self._exchange(req, now, event)
        except OAuthError as exc:
            await self._audit_refusal(replace(event, error=exc.error, reasons=event.reasons or (exc.description,)))
            raise
        return response

    async def _exchange(self, req: ExchangeRequest, now: int, event: AuditEvent) -> tuple[TokenResponse, AuditEvent]:
        actor = await self._verify(self.actors, req.actor.token, "actor_token", now)
        event = replace(event, agent=str(actor.spiffe_id))
        if req.client_id is not None and req.client_id != str(actor.spiffe_id):
            raise UnauthorizedClient("client_id does not match the actor_token SPIFFE ID")
        subject = await self._verify(self.subjects, req.subject.token, "subject_token", now)
        event = replace(event, user_issuer=subject.issuer, user_subject=subject.subject)
        resource = self.resources.resolve(req.single_target())
        wanted = req.scope & subject.scope & resource.scopes
        if not wanted:  # RFC 8693 §2.2.2: checked before the policy is asked
            raise InvalidScope("none of the requested scopes is held by the user and offered by the resource")
        decision = await self.policy.decide(_policy_input(subject, actor, req, resource, now))
        event = replace(event, reasons=decision.reasons)
        grant = self._narrow(decision, wanted, resource, subject, now)
        token = self.minter.mint(grant, subject=subject.subject, actor=str(actor.spiffe_id), now=now)
        event = replace(event, outcome="granted", granted_scope=str(grant.scope), jti=token.jti)
        record = IssuedTokenRecord(
            jti=token.jti,
            user_issuer=subject.issuer,
            user_subject=subject.subject,
            agent=str(actor.spiffe_id),
            audience=resource.audience,
            scope=str(grant.scope),
            issued_at=token.issued_at,
            expires_at=token.expires_at,
        )
        try:
            await self.records.record_grant(record, event)
        except StoreError as exc:
            log.error("exchange.store_failed", extra={"error": str(exc)})
            raise TemporarilyUnavailable("the gateway could not record the grant; no token was issued") from exc
        log.info("exchange.granted", extra={"event": event.as_dict()})
        return TokenResponse(token.token, ACCESS_TOKEN_TYPE, "Bearer", grant.ttl, grant.scope), event

    @staticmethod
    async def _verify(verifier: IdentityVerifier[V_co], token: str, name: str, now: int) -> V_co:
        try:
            return await verifier.verify(token, now=now)
        except TokenError as exc:  # RFC 8693 §2.2.2: a bad subject or actor token is invalid_request
            raise InvalidRequest(f"{name} rejected: {exc}") from exc

    def _narrow(
        self, decision: Decision, wanted: Scope, resource: Resource, subject: VerifiedSubject, now: int
    ) -> Grant:
        """Enforce the invariants whatever the policy said: scope only narrows, lifetime only shortens."""
        reason = decision.reasons[0] if decision.reasons else "no reason given"
        if not decision.allow:
            error = POLICY_ERRORS.get(decision.error or "", UnauthorizedClient)
            raise error(f"policy refused: {reason}")
        scope = wanted & Scope.of(list(decision.scope))
        if not scope:
            raise InvalidScope(f"policy grants none of the requested scopes: {reason}")
        ttl = min(
            decision.ttl or self.lifetimes.default_ttl,
            resource.max_ttl,
            self.lifetimes.max_ttl,
            subject.expires_at - now,
        )
        if ttl <= 0:
            raise InvalidRequest("subject_token rejected: expired")
        return Grant(resource.audience, scope, ttl)

    async def _audit_refusal(self, event: AuditEvent) -> None:
        log.info("exchange.refused", extra={"event": event.as_dict()})
        try:
            await self.records.append_audit(event)
        except StoreError as exc:
            log.error("audit.store_failed", extra={"error": str(exc)})


def _policy_input(
    subject: VerifiedSubject,
    actor: VerifiedActor,
    req: ExchangeRequest,
    resource: Resource,
    now: int,
) -> PolicyInput:
    return PolicyInput(
        {
            "action": "exchange",
            "subject": {
                "iss": subject.issuer,
                "sub": subject.subject,
                "scope": subject.scope.sorted(),
                "claims": dict(subject.claims),
            },
            "actor": {
                "sub": str(actor.spiffe_id),
                "trust_domain": actor.spiffe_id.trust_domain,
                "claims": dict(actor.claims),
            },
            "request": {
                "scope": req.scope.sorted(),
                "audience": resource.audience,
                "requested_token_type": req.requested_token_type,
            },
            "now": now,
        }
    )
