"""RFC 9068 JWT access tokens: one signed token for an already-narrowed grant."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

from .scope import Scope
from .signing import SigningKey

ACCESS_TOKEN_JWT_TYPE = "at+jwt"


@dataclass(frozen=True, slots=True)
class Grant:
    """What the exchange decided: one audience, a non-empty scope, a lifetime."""

    audience: str
    scope: Scope
    ttl: int


@dataclass(frozen=True, slots=True)
class MintedToken:
    token: str
    jti: str
    issued_at: int
    expires_at: int
    claims: Mapping[str, Any] = field(compare=False)


def new_id() -> str:
    """An unguessable identifier: 192 random bits (RFC 6749 §10.10 asks at least 128, better 160)."""
    return secrets.token_urlsafe(24)


class Minter:
    """Signs access tokens with the current signing key; holds no other state."""

    def __init__(self, *, issuer: str, key: SigningKey) -> None:
        self.issuer = issuer
        self._key = key
        self._header = {"typ": ACCESS_TOKEN_JWT_TYPE, "kid": key.kid}

    def mint(
        self,
        grant: Grant,
        *,
        subject: str,
        actor: str,
        now: int,
        extra: Mapping[str, Any] | None = None,
    ) -> MintedToken:
        """RFC 9068 §2.2 claims; `client_id` and `act.sub` name the agent (RFC 8693 §4.1, §4.3)."""
        jti = new_id()
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": grant.audience,
            "client_id": actor,
            "scope": str(grant.scope),
            "iat": now,
            "exp": now + grant.ttl,
            "jti": jti,
            "act": {"sub": actor},
            **(extra or {}),
        }
        token = jwt.encode(claims, self._key.private_key, algorithm=self._key.algorithm, headers=self._header)
        return MintedToken(token, jti, now, now + grant.ttl, claims)
