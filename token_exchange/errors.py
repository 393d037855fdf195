"""OAuth error responses: RFC 6749 §5.2, RFC 8693 §2.2.2, RFC 8707 §2.

One class per error code. The raise site gives a description that names the parameter or token and why;
the text is reduced to the RFC 6749 §5.2 character set so no raw input can reach a client unescaped.
"""

from __future__ import annotations

from typing import ClassVar

_MAX_DESCRIPTION = 200


def rfc6749_charset(text: str) -> str:
    """Keep only %x20-21 / %x23-5B / %x5D-7E (RFC 6749 §5.2); anything else becomes '?'."""
    return "".join(c if (" " <= c <= "~" and c not in '"\\') else "?" for c in text)


def client_description(text: str) -> str:
    """A description fit to show a client: RFC 6749 §5.2 charset, at most 200 characters."""
    return rfc6749_charset(text)[:_MAX_DESCRIPTION]


class OAuthError(Exception):
    """An error the token endpoint reports to the client as JSON `{"error", "error_description"}`."""

    error: ClassVar[str]
    status: ClassVar[int] = 400

    def __init__(self, description: str) -> None:
        self.description = client_description(description)
        super().__init__(f"{self.error}: {self.description}")

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}

    def headers(self) -> dict[str, str]:
        return {"Cache-Control": "no-store", "Pragma": "no-cache"}


class InvalidRequest(OAuthError):
    """RFC 6749 §5.2; RFC 8693 §2.2.2: also a subject or actor token that is invalid or unacceptable."""

    error = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    """An `invalid_request` whose cause is a body over the size limit, answered with HTTP 413."""

    status = 413


class InvalidClient(OAuthError):
    """RFC 6749 §5.2: client authentication failed; 401 with a challenge (RFC 9110 §15.5.2)."""

    error = "invalid_client"
    status = 401

    def __init__(self, description: str, *, scheme: str = "Bearer") -> None:
        super().__init__(description)
        self.scheme = scheme

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "WWW-Authenticate": f'{self.scheme} realm="deputy"'}


class InvalidGrant(OAuthError):
    """RFC 6749 §5.2."""

    error = "invalid_grant"


class UnauthorizedClient(OAuthError):
    """RFC 6749 §5.2: this client (agent) may not use this grant; Deputy: the policy refused the agent."""

    error = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    """RFC 6749 §5.2."""

    error = "unsupported_grant_type"


class InvalidScope(OAuthError):
    """RFC 6749 §3.3, §5.2: scope missing, malformed, or nothing of it can be granted."""

    error = "invalid_scope"


class InvalidTarget(OAuthError):
    """RFC 8707 §2, RFC 8693 §2.2.2: unwilling or unable to issue a token for the requested target."""

    error = "invalid_target"


class AccessDenied(OAuthError):
    """Authenticated, but not allowed here (403): the caller is not an admin, or not a resource's client."""

    error = "access_denied"
    status = 403


class TemporarilyUnavailable(OAuthError):
    """The gateway cannot complete the request now (its store failed); nothing was issued."""

    error = "temporarily_unavailable"
    status = 503


POLICY_ERRORS: dict[str, type[OAuthError]] = {
    cls.error: cls for cls in (InvalidRequest, InvalidScope, InvalidTarget, UnauthorizedClient, InvalidGrant)
}
"""The codes a policy may choose for a refusal; any other code becomes `unauthorized_client`."""
