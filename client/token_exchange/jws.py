"""Verifying a compact JWS the RFC 8725 way, and remembering signatures already checked.

The algorithm comes from the key, never from the header alone (§3.1); only compact serialization with
base64url segments is accepted (RFC 8725bis §3.14); every claim value must be one that the policy
engine, the store and the audit trail can hold exactly as it was signed (`check_claim_values`); the
claims are checked against a `now` passed in.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, TypeVar

import jwt

from .errors import shown
from .keys import KeyLookupError, KeySource, VerificationKey

T = TypeVar("T")

MAX_TOKEN_BYTES = 16 * 1024
LEEWAY_S = 30
MAX_CLAIM_DEPTH = 32  # the policy input holds 64 levels, the claims sit 2 deep in it
MAX_NUMERIC_DATE = 2**53 - 1  # RFC 7493 §2.2: the integers every JSON implementation holds exactly
_INT64 = range(-(2**63), 2**63)
_TIME_CLAIMS = ("exp", "nbf", "iat")
_IDENTIFIERS = ("iss", "sub", "client_id", "jti")  # top level; in act and may_act: iss, sub, client_id
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CLAIM_NAME = re.compile(r"[A-Za-z0-9_-]{1,40}")
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_FORBIDDEN_HEADERS = frozenset({"jku", "x5u", "x5c", "jwk", "crit", "zip", "enc"})
# pyjwt checks the signature only: every claim is Deputy's to check, in Deputy's words ("Subject must be a
# string" was pyjwt's); its key-length floor repeats, at verification, the check made when keys are loaded.
_SIGNATURE_ONLY: jwt.types.Options = {
    "verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False, "verify_iss": False,
    "verify_sub": False, "verify_jti": False, "enforce_minimum_key_length": True,
}


_BYTE_ORDER_MARK = chr(0xFEFF)


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
    encoded_header, encoded_claims, _ = token.split(".")
    header = _json_object(encoded_header)
    if not isinstance(header.get("kid", ""), str):  # RFC 7515 §4.1.4: a case-sensitive string
        raise TokenError("malformed: the kid header must be a string")
    return header, _json_object(encoded_claims)


def _json_object(segment: str) -> dict[str, Any]:
    """A base64url segment holding a JSON object in UTF-8 (RFC 7515 §2, RFC 8725 §3.7): no other encoding,
    no byte order mark (the JSON parser would accept either silently)."""
    try:
        text = jwt.utils.base64url_decode(segment).decode("utf-8")
        value = json.loads(text) if not text.startswith(_BYTE_ORDER_MARK) else None
    except (ValueError, RecursionError) as exc:  # binascii.Error, UnicodeDecodeError and JSONDecodeError too
        raise TokenError("malformed: header and payload must be base64url JSON objects in UTF-8") from exc
    if not isinstance(value, dict):
        raise TokenError("malformed: header and payload must be base64url JSON objects in UTF-8")
    return value


async def verify_signature(
    token: str, header: Mapping[str, Any], keys: KeySource, *, allowed: frozenset[str]
) -> SignedToken:
    """Check the signature with the key `kid` names, using that key's one algorithm."""
    kid = header.get("kid")
    if not isinstance(kid, str) or not 0 < len(kid) <= 256:
        raise TokenError("header has no usable kid")
    header_algorithm(header, allowed=allowed)
    try:
        key = await keys.key_for(kid)
    except KeyLookupError as exc:
        raise TokenError(str(exc)) from exc
    return verify_with_key(token, header, key)


def header_algorithm(header: Mapping[str, Any], *, allowed: frozenset[str], own_key: bool = False) -> str:
    """The `alg` of a header that names no key of its own choosing (`jku`, `x5u`, `x5c`, `jwk`: RFC 8725
    §3.10) and no extension (`crit`), from the verifier's allow-list (§3.1), never `none`. `own_key`: a
    proof of possession (RFC 9449 §4.2) carries its key as `jwk`, and is checked against it by the caller."""
    if forbidden := sorted(_FORBIDDEN_HEADERS.difference(("jwk",) if own_key else ()) & header.keys()):
        raise TokenError(f"header parameter {forbidden[0]} is not accepted")
    alg = header.get("alg")
    if not isinstance(alg, str):  # a list or object `alg` is unhashable
        raise TokenError("alg header is missing or not a string")
    if alg not in allowed:
        raise TokenError(f"algorithm {shown(alg, 16)} is not allowed")
    return alg


def verify_with_key(token: str, header: Mapping[str, Any], key: VerificationKey) -> SignedToken:
    """Check the signature with one known key, using that key's one algorithm (RFC 8725 §3.1): for a
    token whose key another verified token names (a `cnf` key), as well as for one found by `kid`."""
    alg = header.get("alg")
    if alg != key.algorithm:
        named = alg if isinstance(alg, str) and len(alg) <= 16 else "(not shown)"  # callers check it is allowed
        raise TokenError(f"algorithm {named} does not match key {shown(key.kid)} ({key.algorithm})")
    try:
        claims = jwt.decode(token, key.public_key, algorithms=[key.algorithm], options=_SIGNATURE_ONLY)
    except jwt.PyJWTError as exc:
        raise TokenError(f"signature rejected: it does not verify with key {shown(key.kid)}") from exc
    return SignedToken(MappingProxyType(header), MappingProxyType(claims))


def check_claim_values(claims: Mapping[str, Any]) -> None:
    """Refuse a token whose claims cannot reach the policy, the store and the audit exactly as signed.

    Registered claims, when present, have their RFC 7519 §4.1 types: `exp`, `nbf`, `iat` integers from 0
    to 2**53 - 1 (a NumericDate, §2, in the RFC 7493 §2.2 range); `aud` a string or a list of strings;
    identifiers (`iss`, `sub`, `client_id`, `jti`, and `iss`, `sub`, `client_id` in `act` at any depth
    and in `may_act`) strings without a C0 control character or DEL. Everywhere, member names included:
    no U+0000 (the policy engine's C strings end there), no text that is not Unicode (RFC 8725 §3.7), no
    integer beyond 64 bits, no NaN or infinity, at most 32 levels of nesting. Messages name the claim,
    never its value.
    """
    for name in _TIME_CLAIMS:
        value = claims.get(name, 0)
        if type(value) is not int or not 0 <= value <= MAX_NUMERIC_DATE:
            raise TokenError(f"{name} claim is not an integer from 0 to 2**53 - 1 (a NumericDate)")
    aud = claims.get("aud", "")
    if not isinstance(aud, str) and not (isinstance(aud, list) and all(isinstance(a, str) for a in aud)):
        raise TokenError("aud claim is not a string or a list of strings")
    for path, value in _identifiers(claims):
        if not isinstance(value, str):
            raise TokenError(f"{path} claim is not a string")
        if _CONTROL.search(value):
            raise TokenError(f"{path} claim contains a control character")
    _check_values(claims)


def _identifiers(claims: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """(path, value) of every identifier claim: the top-level ones, then those of `act` (nested) and `may_act`."""
    yield from ((name, claims[name]) for name in _IDENTIFIERS if name in claims)
    for path, actor in _actors(claims):
        yield from ((f"{path}.{name}", actor[name]) for name in _IDENTIFIERS[:3] if name in actor)


def _actors(claims: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    if isinstance(may_act := claims.get("may_act"), dict):
        yield "may_act", may_act
    path, act = "act", claims.get("act")
    while isinstance(act, dict) and path.count(".") < MAX_CLAIM_DEPTH:  # RFC 8693 §4.1: prior actors nest
        yield path, act
        path, act = f"{path}.act", act.get("act")


def _check_values(claims: Mapping[str, Any]) -> None:
    """One iterative walk over every value, so no nesting can exhaust the stack; paths are built only
    for the message."""
    pending: list[tuple[tuple[str, ...], Any, int]] = [((), claims, 0)]
    while pending:
        path, value, depth = pending.pop()
        kind = type(value)
        if kind is dict or kind is list or kind is MappingProxyType:
            if depth >= MAX_CLAIM_DEPTH:
                raise TokenError(f"claims are nested more than {MAX_CLAIM_DEPTH} levels deep")
            if kind is list:
                pending.extend((path, item, depth + 1) for item in value)
                continue
            for name, item in value.items():
                if problem := _text_problem(name):
                    where = f"a member name of {_claim(path)}" if path else "a claim name"
                    raise TokenError(f"{where} {problem}")
                pending.append(((*path, name), item, depth + 1))
        elif kind is str:
            if problem := _text_problem(value):
                raise TokenError(f"{_claim(path)} {problem}")
        elif kind is int and value not in _INT64:
            raise TokenError(f"{_claim(path)} is an integer beyond 64 bits")
        elif kind is float and not math.isfinite(value):
            raise TokenError(f"{_claim(path)} is not a finite number")


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character"
    if text.isascii():
        return None
    try:
        text.encode("utf-8")  # RFC 8725 §3.7: a JSON escape such as \ud800 decodes to no Unicode text
    except UnicodeEncodeError:
        return "is not valid Unicode"
    return None


def _claim(path: tuple[str, ...]) -> str:
    """`a.b claim` for the path to a value, as far as its names are [A-Za-z0-9_-]; else `a claim`."""
    shown_names = []
    for name in path:
        if not _CLAIM_NAME.fullmatch(name):
            break
        shown_names.append(name)
    return f"{'.'.join(shown_names)} claim" if shown_names else "a claim"


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


def issued_at(claims: Mapping[str, Any]) -> int | None:
    """A verified token's `iat` (checked to be an integer by `check_claim_values`), or None without one."""
    iat = claims.get("iat")
    return iat if type(iat) is int else None


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


class VerifiedCache(Generic[T]):
    """What verifying a token proved, by the token's digest, kept until the token expires (bounded, oldest
    dropped first). It caches the proof, not the verdict: time, audience and revocation checks still run
    on every use."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self._entries: OrderedDict[bytes, tuple[int, T]] = OrderedDict()
        self._max = max_entries

    async def get(self, token: str, *, now: int, verify: Callable[[], Awaitable[tuple[Any, T]]]) -> T:
        """The cached proof of `token` while it is unexpired, else `verify()`'s, which gives the token's `exp`
        (kept only when an integer) and the proof."""
        digest = hashlib.sha256(token.encode()).digest()
        entry = self._entries.get(digest)
        if entry is not None:
            if entry[0] + LEEWAY_S > now:
                return entry[1]
            del self._entries[digest]
        exp, proof = await verify()
        if type(exp) is int:
            self._entries[digest] = (exp, proof)
            if len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return proof


class SignatureCache:
    """Verified signatures of tokens whose keys a `KeyChoice` picks, cached in a `VerifiedCache`."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self._cache: VerifiedCache[SignedToken] = VerifiedCache(max_entries)

    async def verified(self, token: str, *, now: int, choose: KeyChoice) -> SignedToken:
        """The token's verified signature: from the cache while the token is unexpired, else checked
        with the keys `choose` picks from the unverified header and claims (RFC 8725 §3.1, §3.8), whose
        values `check_claim_values` has accepted first; so a cached proof covers them too."""

        async def verify() -> tuple[Any, SignedToken]:
            header, claims = unverified_parts(token)
            check_claim_values(claims)  # before they choose the key (RFC 8725 §3.10); the same bytes are signed
            keys, allowed = choose(header, claims)
            signed = await verify_signature(token, header, keys, allowed=allowed)
            return signed.claims.get("exp"), signed

        return await self._cache.get(token, now=now, verify=verify)
