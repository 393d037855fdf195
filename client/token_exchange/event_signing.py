"""Signing RFC 8417 Security Event Tokens as SSF 1.0 §4.1 profiles them, with Deputy's current event key."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import jwt

from .rfc9068 import new_id
from .signing import SigningKey

SET_TYPE = "secevent+jwt"
"""RFC 8417 §2.3 explicit typing, which SSF 1.0 §4.1.1 makes a MUST."""
EVENT_SIGNING_ALGORITHM = "RS256"  # CAEP interoperability profile §2.6
FORBIDDEN_CLAIMS = ("sub", "exp")  # SSF 1.0 §4.1.2 (the subject goes in `sub_id`), §4.1.7


class EventSigner:
    """Signs SETs: the claims as given, plus `iss` (Deputy's issuer), `iat` and a fresh `jti` unless given;
    the header has `typ: secevent+jwt`, `alg: RS256` and the key's `kid`."""

    def __init__(self, *, issuer: str, key: SigningKey) -> None:
        self.issuer = issuer
        self._key = _checked(key)

    def use(self, key: SigningKey) -> None:
        """Sign with `key` from now on (a rotated key ring)."""
        self._key = _checked(key)

    def sign_event(self, claims: Mapping[str, Any]) -> str:
        """One signed SET; ValueError for claims no SSF SET may carry (`sub`, `exp`, another `iss`) or without
        an `events` object (RFC 8417 §2.2)."""
        if found := [name for name in FORBIDDEN_CLAIMS if name in claims]:
            raise ValueError(f"an SSF SET must not carry {', '.join(found)} (SSF 1.0 sections 4.1.2, 4.1.7)")
        if claims.get("iss", self.issuer) != self.issuer:
            raise ValueError("an SSF SET's iss must be the transmitter's issuer (SSF 1.0 section 4.1.6)")
        if not isinstance(claims.get("events"), Mapping) or not claims["events"]:
            raise ValueError("a SET must carry a non-empty events object (RFC 8417 section 2.2)")
        key = self._key
        body = {"iss": self.issuer, "iat": int(time.time()), "jti": new_id(), **claims}
        return jwt.encode(body, key.private_key, algorithm=key.algorithm, headers={"typ": SET_TYPE, "kid": key.kid})


def _checked(key: SigningKey) -> SigningKey:
    if key.algorithm != EVENT_SIGNING_ALGORITHM:
        raise ValueError(f"SETs are signed with {EVENT_SIGNING_ALGORITHM}, not {key.algorithm}")
    return key
