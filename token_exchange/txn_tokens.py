"""Task tokens: Deputy's transaction tokens (draft-ietf-oauth-transaction-tokens §9), and verification of
the JWTs Deputy signed itself (task tokens and access tokens), each kind by its own `typ` (RFC 8725 §3.12).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .jws import SignatureCache, TokenError, check_audience, check_time_claims, string_claim
from .keys import KeySource
from .rfc8693 import TXN_TOKEN_TYPE
from .scope import Scope

__all__ = ["TASK_TOKEN_JWT_TYPE", "TXN_TOKEN_TYPE", "OwnTokenVerifier", "actor_claim", "task_token_claims"]

TASK_TOKEN_JWT_TYPE = "txntoken+jwt"


def actor_claim(chain: tuple[str, ...]) -> dict[str, Any]:
    """RFC 8693 §4.1 nesting: the current actor outermost, the first agent innermost."""
    act: dict[str, Any] = {}
    for agent in chain:
        act = {"sub": agent, **({"act": act} if act else {})}
    return act


def task_token_claims(
    *, task_id: str, user: str, chain: tuple[str, ...], scope: Scope, audience: str, purpose: str | None,
    now: int, deadline: int,
) -> dict[str, Any]:
    """Claims of a task token: `txn` the task id, `sub` the user, `act` the chain, `exp` the deadline.

    `aud` is Deputy's own issuer, which no resource audience may equal; `req_wl` (REQUIRED by the draft)
    names the requesting agent; `purp` is a Deputy-private claim.
    """
    claims: dict[str, Any] = {
        "aud": audience,
        "sub": user,
        "txn": task_id,
        "scope": str(scope),
        "act": actor_claim(chain),
        "req_wl": chain[-1],
        "iat": now,
        "exp": deadline,
    }
    if purpose:
        claims["purp"] = purpose
    return claims


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
