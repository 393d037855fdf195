"""OAuth error responses: RFC 6749 §5.2, RFC 8693 §2.2.2, RFC 8707 §2.

One class per error code. The raise site gives a description that names the parameter or token and why;
the text is reduced to the RFC 6749 §5.2 character set so no raw input can reach a client unescaped, and
a description too long to send is cut at a word boundary, never inside a word.
"""

from __future__ import annotations

from typing import ClassVar

MAX_DESCRIPTION = 400
"""Longer than any description Deputy builds from its own text, so only echoed input can make one cut."""
_ELLIPSIS = "..."  # U+2026 is outside the RFC 6749 §5.2 set


def rfc6749_charset(text: str) -> str:
    """Keep only %x20-21 / %x23-5B / %x5D-7E (RFC 6749 §5.2); anything else becomes '?'."""
    return "".join(c if (" " <= c <= "~" and c not in '"\\') else "?" for c in text)


def error_description(text: str, limit: int = MAX_DESCRIPTION) -> str:
    """`text` as an `error_description` (RFC 6749 §5.2, RFC 6750 §3): only the allowed characters, and
    at most `limit` of them, cut at the last space before the limit and marked with "..."."""
    text = rfc6749_charset(text)
    if len(text) <= limit:
        return text
    end = limit - len(_ELLIPSIS)
    space = text.rfind(" ", 0, end + 1)
    if space > end // 2:  # a word boundary in the second half; otherwise one huge word is cut
        end = space
    return text[:end].rstrip(" ,;:") + _ELLIPSIS


def shown(value: object, limit: int = 64, otherwise: str = "(not shown)") -> str:
    """A value taken from a request, quoted for a description when every character of it may be sent
    (RFC 6749 §5.2) and it is at most `limit` long; else `otherwise`, so nothing is replaced by '?'."""
    if not isinstance(value, str) or not value or len(value) > limit or rfc6749_charset(value) != value:
        return otherwise
    return f"'{value}'"


class OAuthError(Exception):
    """An error the token endpoint reports to the client as JSON `{"error", "error_description"}`."""

    error: ClassVar[str]
    status: ClassVar[int] = 400

    def __init__(self, description: str) -> None:
        self.description = error_description(description)
        super().__init__(f"{self.error}: {self.description}")

    @property
    def error_description(self) -> str:
        """The description under its RFC 6749 §5.2 name, as a client reads it."""
        return self.description

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
    """The gateway cannot complete the request now (its store or policy engine failed); nothing was issued."""

    error = "temporarily_unavailable"
    status = 503


POLICY_ERRORS: dict[str, type[OAuthError]] = {
    cls.error: cls for cls in (InvalidRequest, InvalidScope, InvalidTarget, UnauthorizedClient, InvalidGrant)
}
"""The codes a policy may choose for a refusal; any other code becomes `unauthorized_client`."""


class UseFreshAttestation(OAuthError):
    """draft-ietf-oauth-attestation-based-client-auth-10 §7.4: the client attestation is not fresh enough
    (expired, or issued longer ago than its attester's `max_age`); the client should fetch a new one.

    400: the draft gives this code no status, and RFC 6749 §5.2 answers 400 unless a code says otherwise
    (only `invalid_client` may be 401). The request is otherwise well formed; the client can recover."""

    error = "use_fresh_attestation"
