"""Verifying the user's token (`subject_token`) from a configured identity provider.

The issuer is chosen by the token's `iss`, then its keys verify the signature (RFC 8725 §3.8: the keys
must belong to that issuer); `aud` must include the configured audience (§3.9); `exp` is required.
One verifier takes the issuer's audience (`subject_token`s) and refuses a reserved one (the admin API's);
another takes that reserved audience only (admin credentials), so neither token passes for the other (§3.9).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from .jws import SignatureCache, TokenError, check_audience, check_time_claims, issued_at, string_claim
from .keys import ASYMMETRIC_ALGORITHMS, KeySource
from .scope import Scope

# Explicitly typed JWTs that are never a user's token (RFC 8725 §3.11, §3.12).
_FOREIGN_TYPES = frozenset({f"{prefix}{typ}" for prefix in ("", "application/") for typ in (
    "txntoken+jwt", "dpop+jwt", "oauth-client-attestation+jwt", "oauth-client-attestation-pop+jwt")})


@dataclass(frozen=True, slots=True)
class SubjectIssuer:
    """An identity provider whose tokens are accepted as `subject_token`."""

    issuer: str
    audience: str
    keys: KeySource


@dataclass(frozen=True, slots=True)
class VerifiedSubject:
    """A user whose token was verified: identified by (`issuer`, `subject`)."""

    issuer: str
    subject: str
    scope: Scope
    expires_at: int
    claims: Mapping[str, Any] = field(compare=False, default_factory=lambda: MappingProxyType({}))

    @property
    def issued_at(self) -> int | None:
        return issued_at(self.claims)


class SubjectVerifier(Protocol):
    """Verifies a user's token (`subject_token`, or an admin's Bearer token); raises TokenError."""

    async def verify(self, token: str, *, now: int) -> VerifiedSubject: ...


def user_scope(claims: Mapping[str, Any]) -> Scope:
    """The user's scopes: `scope` (RFC 8693 §4.2, a space-separated string) or `scp` (string or list)."""
    value = claims.get("scope", claims.get("scp"))
    if isinstance(value, str):
        return Scope.from_claim(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return Scope.from_claim(" ".join(value))
    return Scope(frozenset())


class UserTokenVerifier:
    """Verifies user tokens from the configured subject issuers: for `audience` if given (instead of the
    issuer's), and never one whose `aud` includes `reserved` (an audience kept for another API)."""

    def __init__(self, issuers: Mapping[str, SubjectIssuer], *, audience: str | None = None,
                 reserved: str | None = None) -> None:
        self._issuers = dict(issuers)
        self._audience, self._reserved = audience, reserved
        self._cache = SignatureCache()

    async def verify(self, token: str, *, now: int) -> VerifiedSubject:
        claims = (await self._cache.verified(token, now=now, choose=self._keys_for)).claims
        issuer = self._issuers[claims["iss"]]  # the issuer whose keys verified it (RFC 8725 §3.8)
        check_audience(claims, self._audience or issuer.audience)
        if self._reserved is not None and _holds(claims, self._reserved):
            raise TokenError(f"aud includes {self._reserved}, the audience of the admin API: such a token is an "
                             "admin credential, never a subject_token (RFC 8725 section 3.9)")
        expires_at = check_time_claims(claims, now=now)
        return VerifiedSubject(
            issuer=issuer.issuer,
            subject=string_claim(claims, "sub"),
            scope=user_scope(claims),
            expires_at=expires_at,
            claims=claims,
        )

    def _keys_for(self, header: Mapping[str, Any], claims: Mapping[str, Any]) -> tuple[KeySource, frozenset[str]]:
        """The keys of the configured issuer the token names; explicitly typed foreign JWTs are refused."""
        typ = header.get("typ")
        if isinstance(typ, str) and typ.lower() in _FOREIGN_TYPES:
            raise TokenError(f"a {typ} token is not a user token")
        issuer = self._issuers.get(string_claim(claims, "iss"))
        if issuer is None:
            raise TokenError("issuer is not a configured subject issuer")
        return issuer.keys, ASYMMETRIC_ALGORITHMS


def _holds(claims: Mapping[str, Any], audience: str) -> bool:
    """Whether `aud` (checked already by `check_audience`) includes `audience`."""
    aud = claims["aud"]
    return audience == aud if isinstance(aud, str) else audience in aud
