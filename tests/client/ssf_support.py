"""Real RS256 Security Event Tokens for the receiver's tests, made the way a transmitter makes them, or
broken the way an attacker likes (tests.support.compact builds any header)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.support import compact, signer_for
from token_exchange.signing import SigningKey

CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
SESSION_REVOKED = CAEP + "session-revoked"
CREDENTIAL_CHANGE = CAEP + "credential-change"
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"
STREAM_UPDATED = "https://schemas.openid.net/secevent/ssf/event-type/stream-updated"
ISSUER = "https://deputy.example.com"
AUDIENCE = "https://mail.example.com"
IDP = "https://idp.example.com"


def rsa_key(bits: int = 2048) -> SigningKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if bits >= 2048:
        return SigningKey.of("RS256", private)
    # SigningKey refuses a weak key; build its JWK by hand so a transmitter's bad key set can be served.
    jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return SigningKey("RS256", private, f"weak-{bits}", {**jwk, "kid": f"weak-{bits}", "alg": "RS256"})


def session_subject(task_id: str, user: str = "alice") -> dict[str, Any]:
    return {"format": "complex", "session": {"format": "opaque", "id": task_id},
            "user": {"format": "iss_sub", "iss": IDP, "sub": user}}


@dataclass
class SetSigner:
    """A transmitter's SET signing key (RS256, 2048 bits, its own kid) and the claims it would send."""

    issuer: str = ISSUER
    audience: str | list[str] = AUDIENCE
    key: SigningKey = field(default_factory=rsa_key)

    def jwks(self, *extra: SigningKey) -> dict[str, Any]:
        return {"keys": [self.key.public_jwk, *(k.public_jwk for k in extra)]}

    def claims(self, event_type: str = SESSION_REVOKED, event: dict[str, Any] | None = None,
               sub_id: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
        if event is None:
            event = {"event_timestamp": int(time.time()), "initiating_entity": "user",
                     "reason_admin": {"en": "task completed"}}
        body: dict[str, Any] = {
            "iss": self.issuer, "aud": self.audience, "iat": int(time.time()), "jti": secrets.token_urlsafe(16),
            "txn": "task-1", "sub_id": sub_id or session_subject("task-1"), "events": {event_type: event}}
        body.update(overrides)
        return {k: v for k, v in body.items() if v is not None}

    def sign(self, claims: dict[str, Any], header: dict[str, Any] | None = None, key: SigningKey | None = None,
             algorithm: str = "RS256") -> str:
        key = key or self.key
        full = {"alg": algorithm, "typ": "secevent+jwt", "kid": key.kid, **(header or {})}
        return compact({k: v for k, v in full.items() if v is not None}, claims,
                       signer_for(algorithm, key.private_key))

    def set(self, **claims: Any) -> tuple[str, str]:
        """(jti, SET) for the claims `claims(**claims)` makes."""
        body = self.claims(**claims)
        return body["jti"], self.sign(body)
