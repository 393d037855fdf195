"""Proof-of-possession JWTs: the checks a client attestation PoP (draft-ietf-oauth-attestation-based-client-
auth-10 §5.1, §7.2) and a DPoP proof (RFC 9449 §4.3) share.

Both are short-lived JWTs signed with a key the client holds: the key arrives as a JWK (an attestation's
`cnf.jwk`, a proof's `jwk` header) that must be public and fit its algorithm; `iat` must fall in a short
window around `now`; `jti` must be a bounded string, so its single use can be recorded.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from .jws import TokenError
from .keys import UnsafeKey, VerificationKey, algorithm_for, bind_key
from .signing import thumbprint

WINDOW_S = 60  # a proof's `iat` may be this far in the past (RFC 9449 §11.1; abca §7.2 item 6)
FUTURE_S = 5  # and this far ahead, for clock skew
MAX_JTI_CHARS = 256  # RFC 9449 §11.1: an oversized jti is refused, never stored
KEY_CACHE_SIZE = 4096  # distinct proof keys whose loaded form is kept
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})  # RFC 7518 §6.2.2, §6.3.2, §6.4


def public_key(jwk: Any, *, where: str, allowed: frozenset[str], algorithm: str | None = None
               ) -> tuple[VerificationKey, str]:
    """The public key a PoP JWT is checked with, bound to one algorithm (RFC 8725 §3.1), and its RFC 7638
    thumbprint. `algorithm`: the one the proof's header names (DPoP), which must fit the key; else the one
    the JWK implies (`keys.algorithm_for`). `where` names the JWK in messages (e.g. "cnf.jwk")."""
    if not isinstance(jwk, dict):
        raise TokenError(f"{where} must be a JSON object (a JWK)")
    if private := sorted(PRIVATE_MEMBERS & jwk.keys()):
        raise TokenError(f"{where} holds private key material ({private[0]}); it must be a public key")
    implied = algorithm_for(jwk)
    chosen = algorithm or implied
    if chosen not in allowed:
        raise TokenError(f"{where} has no supported asymmetric signature algorithm")
    if algorithm is not None and jwk.get("kty") != "RSA" and implied != algorithm:
        raise TokenError(f"{where} does not fit algorithm {algorithm}")  # e.g. ES256 on a P-384 key
    try:
        return _bound_key(json.dumps(jwk, sort_keys=True), where, chosen)
    except (UnsafeKey, KeyError, TypeError, ValueError) as exc:
        raise TokenError(f"{where} cannot be used: {exc}") from exc


@functools.lru_cache(maxsize=KEY_CACHE_SIZE)
def _bound_key(jwk_json: str, where: str, algorithm: str) -> tuple[VerificationKey, str]:
    """An agent instance proves with one key call after call: loading it from its JWK (a quarter of a
    proof's check, `bench/sdk.py`) happens once per key. A refused key is not cached (it raises)."""
    jwk = json.loads(jwk_json)
    return bind_key(jwk, where, algorithm), thumbprint(jwk)


def issued_at(claims: Mapping[str, Any], *, now: int, section: str) -> int:
    """`iat`, required, within `WINDOW_S` before and `FUTURE_S` after `now` (checked before any jti is
    looked up). `section` names the spec section requiring it, for the message."""
    value = claims.get("iat")
    if type(value) is not int:
        raise TokenError(f"iat claim is required (section {section})")
    if not now - WINDOW_S <= value <= now + FUTURE_S:
        raise TokenError(f"iat is outside the accepted window ({WINDOW_S} s past, {FUTURE_S} s ahead)")
    return value


def jti(claims: Mapping[str, Any], *, section: str) -> str:
    """`jti`, required: a string of 1 to `MAX_JTI_CHARS` characters."""
    value = claims.get("jti")
    if not isinstance(value, str) or not 0 < len(value) <= MAX_JTI_CHARS:
        raise TokenError(f"jti claim is required: a string of 1 to {MAX_JTI_CHARS} characters (section {section})")
    return value
