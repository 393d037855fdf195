"""Agents as verified workloads: whose identity token was checked, and how a chain of them is written.

A SPIFFE JWT-SVID is one kind of workload identity; Kubernetes service-account tokens and other OIDC
workload tokens are others. Each verifier returns the same `VerifiedActor`, and `WorkloadVerifiers`
routes a token to the verifier for its issuer, so the rest of Deputy never asks which kind it holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Protocol

from .attestation import Posture
from .errors import shown
from .jws import TokenError, issued_at, unverified_parts

ActorKind = Literal["spiffe", "kubernetes", "oidc"]


@dataclass(frozen=True, slots=True)
class ActorRef:
    """Who an agent is: its `id` is unique within its `domain` (a SPIFFE trust domain, or an issuer)."""

    id: str
    kind: ActorKind
    domain: str

    def act_entry(self) -> dict[str, str]:
        """RFC 8693 §4.1: `sub`, plus `iss` where the `sub` is unique only within its issuer."""
        return {"sub": self.id} if self.kind == "spiffe" else {"sub": self.id, "iss": self.domain}


@dataclass(frozen=True, slots=True)
class VerifiedActor:
    """An agent whose workload identity token was verified, the posture its instance attested in this
    request, if it sent an attestation (`attestation.AttestationVerifier`), and the thumbprint of the key
    its DPoP proof proved, if it sent one (`dpop_token.TokenEndpointDpop`)."""

    id: str
    kind: ActorKind
    domain: str
    expires_at: int
    claims: Mapping[str, Any] = field(compare=False, default_factory=lambda: MappingProxyType({}))
    posture: Posture | None = field(compare=False, default=None)
    dpop_jkt: str | None = field(compare=False, default=None)  # RFC 9449: the key this request's proof proved

    @property
    def ref(self) -> ActorRef:
        return ActorRef(self.id, self.kind, self.domain)

    @property
    def issued_at(self) -> int | None:
        return issued_at(self.claims)


class ActorVerifier(Protocol):
    async def verify(self, token: str, *, now: int) -> VerifiedActor: ...


def actor_claim(chain: tuple[ActorRef, ...]) -> dict[str, Any]:
    """RFC 8693 §4.1 nesting: the current actor outermost, the first agent innermost."""
    act: dict[str, Any] = {}
    for agent in chain:
        act = {**agent.act_entry(), **({"act": act} if act else {})}
    return act


class WorkloadVerifiers:
    """Routes an actor token to the verifier of its issuer; a token of no configured issuer goes to the
    SPIFFE verifier, which finds the bundle of its `sub`'s trust domain (JWT-SVIDs need not carry `iss`).

    The route is final: a token whose `iss` is a configured workload issuer is that issuer's to accept or
    refuse, and one it refuses is never retried as a JWT-SVID (reference/k8s-oidc-workload-tokens.md,
    "one token type, many issuers"). The header never chooses."""

    def __init__(self, *, spiffe: ActorVerifier | None, by_issuer: Mapping[str, ActorVerifier] | None = None) -> None:
        self._spiffe = spiffe
        self._by_issuer = dict(by_issuer or {})

    async def verify(self, token: str, *, now: int) -> VerifiedActor:
        verifier = self._spiffe
        if self._by_issuer:
            _, claims = unverified_parts(token)
            issuer, sub = claims.get("iss"), claims.get("sub")
            if isinstance(issuer, str) and issuer in self._by_issuer:
                verifier = self._by_issuer[issuer]
            elif issuer is not None and not (isinstance(sub, str) and sub.startswith("spiffe://")):
                raise TokenError(f"iss {shown(issuer, 200)} is not a configured workload issuer, and sub is not "
                                 "a SPIFFE ID")
        if verifier is None:
            raise TokenError("no trusted workload issuer or trust domain")
        return await verifier.verify(token, now=now)
