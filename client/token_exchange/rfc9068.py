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
    """An unguessable identifier: 192 random bits (RFC 6749 §10.10 asks at least 128, better 160), never
    starting with "-" (a command line would take it for an option)."""
    while (identifier := secrets.token_urlsafe(24)).startswith("-"):
        pass
    return identifier


class Signer:
    """Signs Deputy's own JWTs with the current key; every token carries `kid` and an explicit `typ`."""

    def __init__(self, *, issuer: str, key: SigningKey) -> None:
        self.issuer = issuer
        self._key = key

    def use(self, key: SigningKey) -> None:
        """Sign with `key` from now on (a rotated key ring)."""
        self._key = key

    def sign(self, claims: Mapping[str, Any], *, typ: str) -> MintedToken:
        """Adds `iss` and a fresh `jti`; `iat` and `exp` come with the claims."""
        jti = new_id()
        body = {"iss": self.issuer, **claims, "jti": jti}
        token = jwt.encode(body, self._key.private_key, algorithm=self._key.algorithm,
                           headers={"typ": typ, "kid": self._key.kid})
        return MintedToken(token, jti, body["iat"], body["exp"], body)


def access_token_claims(grant: Grant, *, subject: str, actor: Mapping[str, Any], now: int) -> dict[str, Any]:
    """RFC 9068 §2.2 claims; `client_id` and `act.sub` name the current agent (RFC 8693 §4.1, §4.3)."""
    return {
        "sub": subject,
        "aud": grant.audience,
        "client_id": actor["sub"],
        "scope": str(grant.scope),
        "iat": now,
        "exp": now + grant.ttl,
        "act": dict(actor),
    }
