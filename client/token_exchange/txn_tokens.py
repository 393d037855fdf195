"""Task tokens: Deputy's transaction tokens (draft-ietf-oauth-transaction-tokens §9), and verification of
the JWTs Deputy signed itself (task tokens and access tokens), each kind by its own `typ` (RFC 8725 §3.12).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .actors import ActorRef, actor_claim
from .jws import SignatureCache, TokenError, check_audience, check_time_claims, string_claim
from .keys import KeySource
from .rfc8693 import TXN_TOKEN_TYPE
from .scope import Scope

__all__ = ["TASK_TOKEN_JWT_TYPE", "TXN_TOKEN_TYPE", "OwnTokenVerifier", "TaskContext", "task_token_claims"]

TASK_TOKEN_JWT_TYPE = "txntoken+jwt"


@dataclass(frozen=True, slots=True)
class TaskContext:
    """The draft's context claims (§9.2.2, §9.2.3): `tctx` holds the purpose and the request details,
    immutable along the chain; `rctx` the environment of the request that opened this task."""

    purpose: str | None = None
    details: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    environment: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def claims(self) -> dict[str, Any]:
        tctx = {**self.details, **({"purpose": self.purpose} if self.purpose else {})}
        return {**({"tctx": tctx} if tctx else {}), **({"rctx": dict(self.environment)} if self.environment else {})}


def task_token_claims(
    *, task_id: str, user: str, chain: tuple[ActorRef, ...], scope: Scope, audience: str, context: TaskContext,
    now: int, deadline: int,
) -> dict[str, Any]:
    """Claims of a task token: `txn` the task id, `sub` the user, `act` the chain, `exp` the deadline.

    `aud` is Deputy's own issuer, which no resource audience may equal; `req_wl` (REQUIRED by the draft)
    names the requesting agent; `tctx` and `rctx` carry the task's context (draft §9.2.2, §9.2.3).
    """
    return {
        "aud": audience,
        "sub": user,
        "txn": task_id,
        "scope": str(scope),
        "act": actor_claim(chain),
        "req_wl": chain[-1].id,
        "iat": now,
        "exp": deadline,
        **context.claims(),
    }


@dataclass(frozen=True, slots=True)
class OwnToken:
    """A JWT Deputy signed, verified: its kind, `jti`, and claims."""

    typ: str
    jti: str
    expires_at: int
    claims: Mapping[str, Any] = field(compare=False, default_factory=lambda: MappingProxyType({}))


class OwnTokenVerifier:
    """Verifies JWTs signed with Deputy's own keys, for one expected `typ`."""

    def __init__(self, keys: KeySource, *, issuer: str, allowed: frozenset[str]) -> None:
        self._keys = keys
        self._issuer = issuer
        self._allowed = allowed
        self._cache = SignatureCache()

    async def verify(self, token: str, *, typ: str, now: int, audience: str | None = None) -> OwnToken:
        signed = await self._cache.verified(token, now=now, choose=lambda header, claims: (self._keys, self._allowed))
        if signed.header.get("typ") != typ:
            raise TokenError(f"not a {typ} token")
        claims = signed.claims
        if claims.get("iss") != self._issuer:
            raise TokenError("iss is not this gateway")
        if audience is not None:
            check_audience(claims, audience)
        expires_at = check_time_claims(claims, now=now)
        return OwnToken(typ, string_claim(claims, "jti"), expires_at, claims)
