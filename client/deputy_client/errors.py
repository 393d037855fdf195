"""The errors an agent sees: the protocol core's OAuth errors (RFC 6749 §5.2, RFC 8693 §2.2.2), rebuilt from
the gateway's answers, and the SDK's own for a gateway that stays unavailable.

`deputy_client.OAuthError` is `token_exchange.errors.OAuthError`: a refusal raises the subclass of its `error`
code (`InvalidGrant`, `InvalidScope`, `InvalidTarget`...), an unknown code the base class's generic subclass
`UnknownOAuthError` with that code. Each carries `error` and `error_description`.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from token_exchange.errors import (
    AccessDenied,
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    TemporarilyUnavailable,
    UnauthorizedClient,
    UnsupportedGrantType,
    UseFreshAttestation,
    rfc6749_charset,
)

__all__ = ["AccessDenied", "DiscoveryError", "GatewayUnavailable", "InvalidClient", "InvalidGrant", "InvalidRequest",
           "InvalidScope", "InvalidTarget", "OAuthError", "TemporarilyUnavailable", "UnauthorizedClient",
           "UnknownOAuthError", "UnsupportedGrantType", "UseFreshAttestation", "from_response"]


class GatewayUnavailable(TemporarilyUnavailable):
    """The gateway answered 503 or could not be reached, on every attempt the retry budget allows."""


class DiscoveryError(Exception):
    """The gateway's RFC 8414 metadata is missing, malformed, or names another issuer (§3.3)."""


class UnknownOAuthError(OAuthError):
    """A code this SDK has no class for; `error` is the code the gateway sent."""

    error = "unknown_error"


def _known_codes() -> dict[str, type[OAuthError]]:
    """Every OAuth error class of the protocol core and this package, by code; breadth first, so a class wins
    over its subclasses of the same code (`InvalidRequest` over `PayloadTooLarge`)."""
    found: dict[str, type[OAuthError]] = {}
    queue: list[type[OAuthError]] = [OAuthError]
    while queue:
        cls = queue.pop(0)
        for sub in cls.__subclasses__():
            if sub.__module__.partition(".")[0] in ("token_exchange", "deputy_client") and sub is not UnknownOAuthError:
                found.setdefault(sub.error, sub)
                queue.append(sub)
    return found


@cache
def _unknown(code: str) -> type[OAuthError]:
    return type("UnknownOAuthError", (UnknownOAuthError,), {"error": code, "__module__": __name__})


def from_response(status: int, body: Any) -> OAuthError:
    """The error a non-2xx answer of the gateway stands for: its JSON `error` code's class, with its
    `error_description` (RFC 6749 §5.2); an answer that is no OAuth error is an `UnknownOAuthError`."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return _unknown("invalid_response")(f"the gateway answered HTTP {status} without an OAuth error")
    code = rfc6749_charset(body["error"])[:64]
    description = body.get("error_description")
    text = description if isinstance(description, str) else f"HTTP {status}"
    cls = _known_codes().get(code)
    return (cls or _unknown(code))(text)
