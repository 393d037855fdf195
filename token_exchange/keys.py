"""Verification keys and where they come from: JWK Sets (RFC 7517), SPIFFE JWT bundles, remote `jwks_uri`.

Every key is bound to exactly one algorithm when it is loaded (RFC 8725 §3.1): the token's `alg` header
must then equal it. Keys come only from configuration; `jku`, `x5u` and embedded `jwk` headers never
select one (RFC 8725 §3.10).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx2
import jwt

log = logging.getLogger(__name__)

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_CURVE_ALGORITHM = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "Ed25519": "EdDSA"}
REFETCH_INTERVAL_S = 30.0
MAX_KEY_AGE_S = 300.0
MAX_JWKS_BYTES = 256 * 1024


class KeyLookupError(Exception):
    """Base of key-source failures; the message is safe to show a client."""


class UnknownKey(KeyLookupError):
    def __init__(self, kid: str) -> None:
        super().__init__(f"no trusted key with kid {kid[:64]!r}")


class KeySetUnavailable(KeyLookupError):
    """The key set could not be fetched or parsed: fail closed."""


@dataclass(frozen=True, slots=True)
class VerificationKey:
    kid: str
    algorithm: str
    public_key: Any


class KeySource(Protocol):
    """Finds the verification key a token's `kid` names; raises `UnknownKey` or `KeySetUnavailable`."""

    async def key_for(self, kid: str) -> VerificationKey: ...


def algorithm_for(jwk: Mapping[str, Any]) -> str | None:
    """The one algorithm a JWK may be used with: its `alg`, else implied by `kty`/`crv` (RSA: RS256)."""
    if isinstance(alg := jwk.get("alg"), str):
        return alg
    if jwk.get("kty") == "RSA":
        return "RS256"
    crv = jwk.get("crv")
    return _CURVE_ALGORITHM.get(crv) if isinstance(crv, str) else None


def parse_key_set(document: Any, *, allowed: frozenset[str], use: str | None = None) -> dict[str, VerificationKey]:
    """Usable keys of a JWK Set by `kid`.

    With `use` given (SPIFFE bundles: "jwt-svid"), keys with another or no `use` are ignored
    (SPIFFE Trust Domain and Bundle §4.2.2). Keys with no `kid`, an algorithm outside `allowed`,
    or material pyjwt cannot load are ignored too; a document that is not a JWK Set raises ValueError.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set: a JSON object with a 'keys' array is required")
    keys: dict[str, VerificationKey] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or not isinstance(kid := jwk.get("kid"), str) or not kid:
            continue
        if use is not None and jwk.get("use") != use:
            continue
        if jwk.get("kty") == "oct" or (alg := algorithm_for(jwk)) not in allowed:
            continue
        try:
            loaded = jwt.PyJWK(jwk, algorithm=alg)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
        if kid in keys:
            raise ValueError(f"kid {kid!r} appears twice")
        keys[kid] = VerificationKey(kid, alg, loaded.key)
    return keys


def read_key_set(path: str, *, allowed: frozenset[str], use: str | None = None) -> dict[str, VerificationKey]:
    """Load a JWK Set file; raises OSError or ValueError with a readable message."""
    with open(path, "rb") as f:
        raw = f.read(MAX_JWKS_BYTES + 1)
    if len(raw) > MAX_JWKS_BYTES:
        raise ValueError(f"larger than {MAX_JWKS_BYTES} bytes")
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    return parse_key_set(document, allowed=allowed, use=use)


class StaticKeys:
    """Keys fixed at start-up (a JWKS or bundle file)."""

    def __init__(self, keys: Mapping[str, VerificationKey]) -> None:
        self._keys = dict(keys)

    async def key_for(self, kid: str) -> VerificationKey:
        if (key := self._keys.get(kid)) is None:
            raise UnknownKey(kid)
        return key


class RemoteKeys:
    """A `jwks_uri` or SPIFFE `bundle_uri`, cached; refetched on an unknown `kid` at most once per 30 s.

    A failed fetch never trusts a key it has not seen: the lookup raises `KeySetUnavailable`.
    Keys already fetched stay in use until a later fetch succeeds.
    """

    def __init__(
        self,
        uri: str,
        *,
        client: httpx2.AsyncClient,
        parse: Callable[[Any], dict[str, VerificationKey]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.uri = uri
        self._client = client
        self._parse = parse
        self._clock = clock
        self._keys: dict[str, VerificationKey] = {}
        self._fetched_at = float("-inf")
        self._last_error: str | None = None
        self._lock = asyncio.Lock()

    async def key_for(self, kid: str) -> VerificationKey:
        key = self._keys.get(kid)
        if key is None or self._clock() - self._fetched_at >= MAX_KEY_AGE_S:
            async with self._lock:
                if self._due(kid):
                    await self._refetch()
            key = self._keys.get(kid)
        if key is None:
            if self._last_error is not None:
                raise KeySetUnavailable(f"key set {self.uri} unavailable: {self._last_error}")
            raise UnknownKey(kid)
        return key

    def _due(self, kid: str) -> bool:
        age = self._clock() - self._fetched_at
        return age >= MAX_KEY_AGE_S or (kid not in self._keys and age >= REFETCH_INTERVAL_S)

    async def _refetch(self) -> None:
        self._fetched_at = self._clock()  # failures count too: no refetch storm
        try:
            response = await self._client.get(self.uri, headers={"Accept": "application/json"})
            response.raise_for_status()
            if len(response.content) > MAX_JWKS_BYTES:
                raise ValueError(f"larger than {MAX_JWKS_BYTES} bytes")
            self._keys = self._parse(response.json())
            self._last_error = None
        except (httpx2.HTTPError, ValueError) as exc:
            self._last_error = type(exc).__name__
            log.warning("jwks.fetch_failed", extra={"uri": self.uri, "error": str(exc)})
