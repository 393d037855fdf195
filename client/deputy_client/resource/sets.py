"""Validating a Security Event Token as SSF 1.0 profiles it (RFC 8417 §2; SSF §4.1-§4.2; CAEP interop §2.6).

A SET that fails is refused with the RFC 8935 §2.4 error code a receiver reports in `setErrs` (RFC 8936
§2.4.4): `invalid_key` (no usable key, or an algorithm other than RS256), `authentication_failed` (the
signature does not verify), `invalid_issuer`, `invalid_audience`, and `invalid_request` for everything
else. A SET that cannot be checked at all right now (the transmitter's key set unreachable) is neither
refused nor accepted: `SetUnverifiable`, so it stays unacknowledged and comes again.

The keys come from `SetKeys`: the transmitter's `jwks_uri` cached, and fetched afresh as soon as a SET names
a `kid` the cache lacks (at most once a second), so a rotated key is used at once and "no such key" is only
said of a key set just fetched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2

from token_exchange.errors import error_description
from token_exchange.jws import TokenError, check_claim_values, header_algorithm, unverified_parts, verify_with_key
from token_exchange.keys import (
    KeyLookupError,
    KeySetUnavailable,
    KeySource,
    RemoteKeys,
    UnknownKey,
    VerificationKey,
    parse_key_set,
)

from .caep import EventError, check_event
from .subjects import SubjectError, check_subject

SET_TYPE = "secevent+jwt"  # RFC 8417 §2.3, SSF §4.1.1
SET_ALGORITHMS = frozenset({"RS256"})  # CAEP interoperability profile §2.6
RENEW_MIN_S = 1.0  # a SET naming a kid the cache lacks fetches the key set again, at most this often


class SetRejected(Exception):
    """A SET that failed parsing or validation: `err` (RFC 8935 §2.4) and a description for `setErrs`."""

    def __init__(self, err: str, description: str) -> None:
        self.err = err
        self.description = error_description(description)
        super().__init__(f"{err}: {self.description}")


class SetUnverifiable(Exception):
    """The SET could not be checked now (its key set could not be fetched); not the SET's fault."""


class SetKeys:
    """A `KeySource` for the SET keys at `uri` (RS256 keys of at least 2048 bits); see the module docstring.
    A fetch that fails keeps the keys already held."""

    def __init__(self, uri: str, *, client: httpx2.AsyncClient, clock: Callable[[], float] = time.monotonic) -> None:
        self.uri = uri
        self._client = client
        self._clock = clock
        self._keys = self._fresh()
        self._renewed_at = float("-inf")

    def _fresh(self) -> RemoteKeys:
        return RemoteKeys(self.uri, client=self._client, clock=self._clock,
                          parse=lambda document: parse_key_set(document, allowed=SET_ALGORITHMS))

    async def key_for(self, kid: str) -> VerificationKey:
        try:
            return await self._keys.key_for(kid)
        except (UnknownKey, KeySetUnavailable) as exc:
            if self._clock() - self._renewed_at < RENEW_MIN_S:  # no verdict on a key set not fetched just now
                raise KeySetUnavailable(f"key set {self.uri} not fetched again yet") from exc
        self._renewed_at = self._clock()
        fresh = self._fresh()
        try:
            key = await fresh.key_for(kid)
        except KeySetUnavailable:
            raise
        except KeyLookupError:
            self._keys = fresh  # fetched: the verdict on this kid stands
            raise
        self._keys = fresh
        return key


@dataclass(frozen=True, slots=True)
class ReceivedSet:
    """A SET whose signature and claims have been validated, with its one event."""

    jti: str
    iat: int
    txn: str | None
    event_type: str
    event: Mapping[str, Any]
    subject: Mapping[str, Any]


class SetValidator:
    """Validates the SETs of one stream: its transmitter's `issuer`, the stream's `audience` values, and the
    keys of the transmitter's `jwks_uri` (RS256 keys of at least 2048 bits)."""

    def __init__(self, *, issuer: str, audience: frozenset[str], keys: KeySource) -> None:
        self.issuer = issuer
        self.audience = audience
        self._keys = keys

    async def validate(self, token: Any, *, jti: str) -> ReceivedSet:
        """The SET delivered under `jti` (the member name of an RFC 8936 `sets` object), validated; raises
        `SetRejected` or `SetUnverifiable`."""
        if not isinstance(token, str):
            raise SetRejected("invalid_request", "the SET is not a string")
        try:
            header, _ = unverified_parts(token)
        except TokenError as exc:
            raise SetRejected("invalid_request", f"the SET does not parse: {exc}") from exc
        if header.get("typ") != SET_TYPE:  # SSF §4.1.1: explicit typing; never another kind of JWT
            raise SetRejected("invalid_request", "typ is not secevent+jwt (RFC 8417 section 2.3)")
        key = await self._key(header)
        try:
            claims = verify_with_key(token, header, key).claims
        except TokenError as exc:
            raise SetRejected("authentication_failed", str(exc)) from exc
        return self._checked(claims, jti)

    async def _key(self, header: Mapping[str, Any]) -> VerificationKey:
        if header.get("alg") not in SET_ALGORITHMS:
            raise SetRejected("invalid_key", "the SET is not signed with RS256 (CAEP interoperability section 2.6)")
        try:
            header_algorithm(header, allowed=SET_ALGORITHMS)  # no jku, x5u, jwk, crit (RFC 8725 §3.10)
        except TokenError as exc:
            raise SetRejected("invalid_request", str(exc)) from exc
        kid = header.get("kid")
        if not isinstance(kid, str) or not 0 < len(kid) <= 256:
            raise SetRejected("invalid_key", "the SET header has no usable kid")
        try:
            return await self._keys.key_for(kid)
        except KeySetUnavailable as exc:
            raise SetUnverifiable(str(exc)) from exc
        except KeyLookupError as exc:
            raise SetRejected("invalid_key", str(exc)) from exc

    def _checked(self, claims: Mapping[str, Any], jti: str) -> ReceivedSet:
        try:
            check_claim_values(claims)  # iat a NumericDate, aud strings, no NUL or lone surrogate anywhere
        except TokenError as exc:
            raise SetRejected("invalid_request", str(exc)) from exc
        if claims.get("iss") != self.issuer:  # SSF §4.1.6: exactly the issuer the metadata came from
            raise SetRejected("invalid_issuer", "iss is not the transmitter's issuer (SSF section 4.1.6)")
        aud = claims.get("aud")
        if frozenset([aud] if isinstance(aud, str) else aud or ()) != self.audience:  # SSF §4.1.8
            raise SetRejected("invalid_audience", "aud is not this stream's audience (SSF section 4.1.8)")
        if claims.get("jti") != jti or not jti:  # RFC 8936 §2.3: SETs are keyed by their jti
            raise SetRejected("invalid_request", "jti is missing or not the one it was delivered under")
        if type(iat := claims.get("iat")) is not int:
            raise SetRejected("invalid_request", "iat is missing (RFC 8417 section 2.2)")
        for name in ("sub", "exp"):  # SSF §4.1.2, §4.1.7 (RFC 8417 §4.1: never mistaken for an ID token)
            if name in claims:
                raise SetRejected("invalid_request", f"an SSF SET must not carry {name} (SSF section 4.1)")
        txn = claims.get("txn")
        if txn is not None and (not isinstance(txn, str) or not txn):
            raise SetRejected("invalid_request", "txn is not a string (RFC 8417 section 2.2)")
        event_type, event = _one_event(claims.get("events"))
        try:
            subject = check_subject(claims.get("sub_id"))  # SSF §3.1: sub_id MUST be used
            check_event(event_type, event)
        except (SubjectError, EventError) as exc:
            raise SetRejected("invalid_request", str(exc)) from exc
        return ReceivedSet(jti, iat, txn, event_type, event, subject)


def _one_event(events: Any) -> tuple[str, Mapping[str, Any]]:
    """RFC 8417 §2.2: `events` an object of event URI to object; CAEP interop §2.8.1: exactly one member."""
    if not isinstance(events, dict) or len(events) != 1:
        raise SetRejected("invalid_request", "events must hold exactly one event (CAEP interoperability 2.8.1)")
    ((event_type, event),) = events.items()
    if ":" not in event_type or not isinstance(event, dict):
        raise SetRejected("invalid_request", "an event must be a URI naming a JSON object (RFC 8417 section 2.2)")
    return event_type, event
