"""OpenID Shared Signals 1.0 and CAEP 1.0 as Deputy transmits them: event types, subject identifiers (RFC 9493,
SSF §3), Security Event Token claims (RFC 8417, SSF §4) and the transmitter metadata (SSF §7).

Signing is the caller's: the claims here have no `iss` (the signer's), and never `sub` or `exp` (SSF §4.1.2,
§4.1.7: a SET must not pass for an ID or access token, RFC 8417 §4)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import OAuthError

SET_MEDIA_TYPE = "application/secevent+jwt"  # RFC 8417 §2.3
PUSH_DELIVERY, POLL_DELIVERY = "urn:ietf:rfc:8935", "urn:ietf:rfc:8936"  # SSF §6.1
SPEC_VERSION = "1_0"

CAEP_EVENTS = "https://schemas.openid.net/secevent/caep/event-type/"
SSF_EVENTS = "https://schemas.openid.net/secevent/ssf/event-type/"
SESSION_REVOKED = CAEP_EVENTS + "session-revoked"  # CAEP §3.1
CREDENTIAL_CHANGE = CAEP_EVENTS + "credential-change"  # CAEP §3.3
VERIFICATION = SSF_EVENTS + "verification"  # SSF §8.1.4
STREAM_UPDATED = SSF_EVENTS + "stream-updated"  # SSF §8.1.5
INITIATING_ENTITIES = frozenset({"admin", "user", "policy", "system"})  # CAEP §2

SubjectId = dict[str, Any]


class TooManyRequests(OAuthError):
    """SSF §8.1.4.2: a verification asked for sooner than `min_verification_interval` allows (429)."""

    error = "too_many_requests"
    status = 429

    def __init__(self, description: str, *, retry_after: int) -> None:
        super().__init__(description)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "Retry-After": str(max(1, self.retry_after))}


class StreamConflict(OAuthError):
    """SSF §8.1.1.1: 409, the transmitter will not make another stream for this receiver."""

    error = "conflict"
    status = 409


# Subject identifiers: every member the format requires, none it does not describe (RFC 9493 §3).
def opaque(identifier: str) -> SubjectId:
    """RFC 9493 §3.2.4."""
    return {"format": "opaque", "id": _member("id", identifier)}


def iss_sub(iss: str, sub: str) -> SubjectId:
    """RFC 9493 §3.2.3."""
    return {"format": "iss_sub", "iss": _member("iss", iss), "sub": _member("sub", sub)}


def uri(value: str) -> SubjectId:
    """RFC 9493 §3.2.7."""
    return {"format": "uri", "uri": _member("uri", value)}


def jwt_id(iss: str, jti: str) -> SubjectId:
    """SSF §3.5.1: one JWT, by its issuer and `jti`."""
    return {"format": "jwt_id", "iss": _member("iss", iss), "jti": _member("jti", jti)}


def complex_subject(**members: SubjectId) -> SubjectId:
    """SSF §3.3: simple subjects naming aspects (`user`, `session`, ...) of one principal."""
    if not members:
        raise ValueError("a complex subject needs at least one member")
    return {"format": "complex", **members}


def _member(name: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"a subject identifier's {name} must be a non-empty string (RFC 9493 section 3)")
    return value


# Event payloads
def reason(text: str) -> dict[str, str]:
    """CAEP §2 `reason_admin`: language tag → message; the interoperability profile asks a non-empty one."""
    return {"en": text.strip() or "access ended"}


def session_revoked(*, at: int, initiator: str, why: str) -> dict[str, Any]:
    """CAEP §3.1: `event_timestamp` is the revocation time."""
    entity = initiator if initiator in INITIATING_ENTITIES else "system"
    return {"event_timestamp": at, "initiating_entity": entity, "reason_admin": reason(why)}


def credential_change(*, credential_type: str, at: int, why: str) -> dict[str, Any]:
    """CAEP §3.3, an admin's revocation of a credential (interoperability profile §3.2: `reason_admin`)."""
    return {"credential_type": credential_type, "change_type": "revoke", "event_timestamp": at,
            "initiating_entity": "admin", "reason_admin": reason(why)}


def verification(state: str | None) -> dict[str, Any]:
    """SSF §8.1.4.1: the receiver's `state`, echoed."""
    return {} if state is None else {"state": state}


def stream_updated(status: str, why: str | None) -> dict[str, Any]:
    """SSF §8.1.5."""
    return {"status": status} | ({"reason": why} if why else {})


def set_claims(*, audience: Sequence[str], txn: str, subject: SubjectId, event: str, payload: Mapping[str, Any],
               jti: str, iat: int) -> dict[str, Any]:
    """RFC 8417 §2.2, SSF §4.1: one event (interoperability profile §2.8.1), the subject in `sub_id` (§3.1),
    `aud` a string when there is one (§4.1.8), `txn` shared by the SETs of one cause (§4.1.9)."""
    aud: str | list[str] = audience[0] if len(audience) == 1 else sorted(audience)
    return {"jti": jti, "iat": iat, "aud": aud, "txn": txn, "sub_id": subject, "events": {event: dict(payload)}}


def event_type(token: str) -> str | None:
    """The event type of a SET Deputy signed itself (read without verifying: it is Deputy's own)."""
    try:
        payload = token.split(".")[1]
        events = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["events"]
        return next(iter(events)) if isinstance(events, dict) and events else None
    except (IndexError, KeyError, TypeError, ValueError, binascii.Error):
        return None


# Transmitter metadata
def well_known_path(issuer: str) -> str:
    """SSF §7.2: `/.well-known/ssf-configuration` inserted between the host and the issuer's path (its
    trailing `/` removed first)."""
    path = issuer.partition("://")[2].partition("/")[2].rstrip("/")
    return "/.well-known/ssf-configuration" + (f"/{path}" if path else "")


def endpoint(issuer: str, path: str) -> str:
    """An SSF endpoint of Deputy's, relative to its issuer."""
    return issuer.rstrip("/") + path


def metadata(issuer: str) -> dict[str, Any]:
    """SSF §7.1 and the interoperability profile §2.3: no add/remove-subject endpoints, since every subject of
    the receiver's resources is included (`default_subjects: ALL`)."""
    return {
        "issuer": issuer,
        "spec_version": SPEC_VERSION,
        "jwks_uri": endpoint(issuer, "/ssf/jwks.json"),
        "delivery_methods_supported": [PUSH_DELIVERY, POLL_DELIVERY],
        "configuration_endpoint": endpoint(issuer, "/ssf/streams"),
        "status_endpoint": endpoint(issuer, "/ssf/status"),
        "verification_endpoint": endpoint(issuer, "/ssf/verify"),
        "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6749"}],
        "default_subjects": "ALL",
    }
