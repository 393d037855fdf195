"""Refusals a resource server reports: RFC 6750 §3.1 `invalid_request` (400), `invalid_token` (401),
`insufficient_scope` (403), and RFC 9449 §7.1 `invalid_dpop_proof` (401); with the `WWW-Authenticate`
challenge that goes with each (`www_authenticate`)."""

from __future__ import annotations

from typing import ClassVar

from token_exchange.dpop import SCHEME as DPOP_SCHEME
from token_exchange.errors import error_description
from token_exchange.scope import Scope

BEARER_SCHEME = "Bearer"


class BearerTokenError(Exception):
    """A refusal reported per RFC 6750 §3 (RFC 9449 §7.1 for the DPoP scheme): `error`, `status`, a
    description safe to show the caller, and `scheme`, the authentication scheme the failed credentials
    used ("Bearer" or "DPoP"), whose challenge carries the error."""

    error: ClassVar[str]
    status: ClassVar[int]

    def __init__(self, description: str, *, scheme: str = BEARER_SCHEME) -> None:
        self.description = error_description(description)
        self.scheme = scheme
        super().__init__(f"{self.error}: {self.description}")


class InvalidToken(BearerTokenError):
    """RFC 6750 §3.1 `invalid_token`: expired, revoked, malformed or otherwise invalid (401)."""

    error = "invalid_token"
    status = 401


class FeedStale(InvalidToken):
    """The revocation state could not be confirmed recently enough: every token is refused (fail closed)."""


class NoCredentials(BearerTokenError):
    """RFC 6750 §3.1: a request with no credentials at all; its challenge carries no error code (401)."""

    error = ""
    status = 401


class MalformedRequest(BearerTokenError):
    """RFC 6750 §3.1 `invalid_request` (400): a malformed Authorization header, or credentials sent more
    than one way (two Authorization headers, a Bearer token with a DPoP proof: RFC 9449 §7.2)."""

    error = "invalid_request"
    status = 400


class InvalidDpopProof(BearerTokenError):
    """RFC 9449 §7.1 `invalid_dpop_proof` (401): the DPoP proof is missing, invalid, replayed, or signed by
    another key than the one the token is bound to."""

    error = "invalid_dpop_proof"
    status = 401

    def __init__(self, description: str) -> None:
        super().__init__(description, scheme=DPOP_SCHEME)


class InsufficientScope(BearerTokenError):
    """RFC 6750 §3.1 `insufficient_scope`: a valid token without the scope this request needs (403)."""

    error = "insufficient_scope"
    status = 403

    def __init__(self, description: str, *, required: Scope, scheme: str = BEARER_SCHEME) -> None:
        super().__init__(description, scheme=scheme)
        self.required = required


class DiscoveryFailed(Exception):
    """The issuer's RFC 8414 metadata could not be fetched or does not name this issuer."""


def www_authenticate(exc: BearerTokenError, *, algs: str) -> str:
    """The `WWW-Authenticate` value for a refusal by a resource server that accepts both schemes: the
    failed scheme's challenge with the error (none for `NoCredentials`), then the other's, bare (RFC 9110
    §11.6.1). The DPoP challenge lists the accepted proof algorithms `algs` (RFC 9449 §7.1)."""
    params = [f'error="{exc.error}"', f'error_description="{exc.description}"'] if exc.error else []
    if isinstance(exc, InsufficientScope):
        params.append(f'scope="{exc.required}"')
    dpop_params = [f'algs="{algs}"']
    if exc.scheme == DPOP_SCHEME:
        return f"{DPOP_SCHEME} {', '.join(params + dpop_params)}, {BEARER_SCHEME}"
    bearer = f"{BEARER_SCHEME} {', '.join(params)}" if params else BEARER_SCHEME
    return f"{bearer}, {DPOP_SCHEME} {', '.join(dpop_params)}"
