"""RFC 6750 §3.1 refusals a resource server reports: `invalid_token` (401) and `insufficient_scope` (403)."""

from __future__ import annotations

from typing import ClassVar

from token_exchange.errors import error_description
from token_exchange.scope import Scope


class BearerTokenError(Exception):
    """A refusal reported per RFC 6750 §3: `error`, `status`, a description safe to show the caller."""

    error: ClassVar[str]
    status: ClassVar[int]

    def __init__(self, description: str) -> None:
        self.description = error_description(description)
        super().__init__(f"{self.error}: {self.description}")


class InvalidToken(BearerTokenError):
    """RFC 6750 §3.1 `invalid_token`: expired, revoked, malformed or otherwise invalid (401)."""

    error = "invalid_token"
    status = 401


class FeedStale(InvalidToken):
    """The revocation state could not be confirmed recently enough: every token is refused (fail closed)."""


class InsufficientScope(BearerTokenError):
    """RFC 6750 §3.1 `insufficient_scope`: a valid token without the scope this request needs (403)."""

    error = "insufficient_scope"
    status = 403

    def __init__(self, description: str, *, required: Scope) -> None:
        super().__init__(description)
        self.required = required


class DiscoveryFailed(Exception):
    """The issuer's RFC 8414 metadata could not be fetched or does not name this issuer."""
