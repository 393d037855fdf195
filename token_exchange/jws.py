"""Verifying a compact JWS the RFC 8725 way, and remembering signatures already checked.

The algorithm comes from the key, never from the header alone (§3.1); only compact serialization with
base64url segments is accepted (RFC 8725bis §3.14); the claims are checked against a `now` passed in.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import jwt

from .keys import KeyLookupError, KeySource

MAX_TOKEN_BYTES = 16 * 1024
LEEWAY_S = 30
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_FORBIDDEN_HEADERS = frozenset({"jku", "x5u", "x5c", "jwk", "crit", "zip", "enc"})


class TokenError(Exception):
    """A presented token is malformed, untrusted or not valid now. The message names why, never the token."""


@dataclass(frozen=True, slots=True)
class SignedToken:
    """A JWS whose signature has been verified with a trusted key."""

    header: Mapping[str, Any]
    claims: Mapping[str, Any]


def unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a compact JWS, for choosing the key only; raises TokenError."""
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenError(f"longer than {MAX_TOKEN_BYTES} bytes")
    if not _COMPACT_JWS.fullmatch(token):
        raise TokenError("not a compact JWS (three base64url segments)")
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise TokenError(f"malformed: {exc}") from exc
    return header, claims


async def verify_signature(
    token: str, header: Mapping[str, Any], keys: KeySource, *, allowed: frozenset[str]
) -> SignedToken:
    """Check the signature with the key `kid` names, using that key's one algorithm."""
    kid = header.get("kid")
    if not isinstance(kid, str) or not 0 < len(kid) <= 256:
        raise TokenError("header has no usable kid")
    if forbidden := sorted(_FORBIDDEN_HEADERS & header.keys()):
        raise TokenError(f"header parameter {forbidden[0]} is not accepted")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in allowed:  # a list or object `alg` is unhashable
        raise TokenError(f"algorithm {str(alg)[:16]!r} is not allowed")
    try:
        key = await keys.key_for(kid)
    except KeyLookupError as exc:
        raise TokenError(str(exc)) from exc
    if alg != key.algorithm:
        raise TokenError(f"algorithm {alg} does not match key {kid[:64]!r} ({key.algorithm})")
    try:
        claims = jwt.decode(
            token,
            key.public_key,
            algorithms=[key.algorithm],
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
            },
        )
    except jwt.PyJWTError as exc:
        raise TokenError(f"signature rejected: {exc}") from exc
    return SignedToken(MappingProxyType(header), MappingProxyType(claims))


def check_time_claims(claims: Mapping[str, Any], *, now: int) -> int:
    """RFC 7519 §4.1.4-§4.1.6: `exp` required and in the future; `nbf`, `iat` not in the future. Returns exp."""
    exp = claims.get("exp")
    if type(exp) is not int:
        raise TokenError("exp claim missing or not an integer")
    if exp + LEEWAY_S <= now:
        raise TokenError("expired")
    for name in ("nbf", "iat"):
        value = claims.get(name)
        if value is None:
            continue
        if type(value) is not int:
            raise TokenError(f"{name} claim is not an integer")
        if value > now + LEEWAY_S:
            raise TokenError(f"{name} is in the future")
    return exp


def check_audience(claims: Mapping[str, Any], audience: str) -> None:
    """RFC 7519 §4.1.3, RFC 8725 §3.9: `aud` present and containing this recipient."""
    aud = claims.get("aud")
    values = [aud] if isinstance(aud, str) else aud
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise TokenError("aud claim missing or malformed")
    if audience not in values:
        raise TokenError(f"aud does not include {audience}")


def string_claim(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise TokenError(f"{name} claim missing or not a string")
    try:
        value.encode("utf-8")  # RFC 8725 §3.7: a JSON escape such as \ud800 decodes to no Unicode text
    except UnicodeEncodeError as exc:
        raise TokenError(f"{name} claim is not valid Unicode") from exc
    return value


KeyChoice = Callable[[Mapping[str, Any], Mapping[str, Any]], tuple[KeySource, frozenset[str]]]
"""Picks, from a token's unverified header and claims, the key source and algorithms that must verify it;
raises TokenError when the token cannot be of the expected kind."""


class SignatureCache:
    """Verified signatures by token digest, kept until the token expires (bounded, oldest dropped first).

    It caches the proof, not the verdict: time, audience and revocation checks still run on every use.
    """

    def __init__(self, max_entries: int = 50_000) -> None:
        self._entries: OrderedDict[bytes, tuple[int, SignedToken]] = OrderedDict()
        self._max = max_entries

    async def verified(self, token: str, *, now: int, choose: KeyChoice) -> SignedToken:
        """The token's verified signature: from the cache while the token is unexpired, else checked
        with the keys `choose` picks from the unverified header and claims (RFC 8725 §3.1, §3.8)."""
        digest = hashlib.sha256(token.encode()).digest()
        entry = self._entries.get(digest)
        if entry is not None:
            if entry[0] + LEEWAY_S > now:
                return entry[1]
            del self._entries[digest]
        header, claims = unverified_parts(token)
        keys, allowed = choose(header, claims)
        signed = await verify_signature(token, header, keys, allowed=allowed)
        if type(exp := signed.claims.get("exp")) is int:
            self._entries[digest] = (exp, signed)
            if len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return signed
