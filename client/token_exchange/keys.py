"""Verification keys and where they come from: JWK Sets (RFC 7517), SPIFFE JWT bundles, remote `jwks_uri`.

Every key is bound to exactly one algorithm when it is loaded (RFC 8725 §3.1): the token's `alg` header
must then equal it. Keys come only from configuration; `jku`, `x5u` and embedded `jwk` headers never
select one (RFC 8725 §3.10). A key too weak for its algorithm, or on another curve than the one its
algorithm names, is refused when it is loaded (RFC 7518 §3.3, §3.4, RFC 8037 §3.1): a key file holding
one stops start-up; a fetched one is skipped, logged, and never used.
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
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from .errors import shown

log = logging.getLogger(__name__)

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_CURVE_ALGORITHM = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "Ed25519": "EdDSA", "Ed448": "EdDSA"}
_ALGORITHM_CURVE = {"ES256": ("secp256r1", "P-256"), "ES384": ("secp384r1", "P-384"), "ES512": ("secp521r1", "P-521")}
_JWK_CURVE = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_KEY_TYPES = frozenset({"RSA", "EC", "OKP"})  # others (oct, unknown) are ignored (SPIFFE bundle §4.2.1)
MIN_RSA_BITS = 2048
REFETCH_INTERVAL_S = 30.0
MAX_KEY_AGE_S = 300.0
MAX_JWKS_BYTES = 256 * 1024


class KeyLookupError(Exception):
    """Base of key-source failures; the message is safe to show a client."""


class UnknownKey(KeyLookupError):
    def __init__(self, kid: str) -> None:
        super().__init__(f"no trusted key with kid {shown(kid)}")


class RefusedKey(KeyLookupError):
    """The `kid` names a key of the set that was refused when it was loaded (see `key_problem`)."""

    def __init__(self, kid: str, reason: str) -> None:
        super().__init__(f"key {shown(kid)} of the key set is not used: {reason}")


class KeySetUnavailable(KeyLookupError):
    """The key set could not be fetched or parsed: fail closed."""


class UnsafeKey(ValueError):
    """Key material that must not verify signatures with the algorithm it is bound to; says why."""


def key_problem(algorithm: str, public_key: object) -> str | None:
    """Why `public_key` must not verify `algorithm` signatures, or None when it may: RS* and PS* need an
    RSA key of at least 2048 bits (RFC 7518 §3.3, §3.5), ES256/384/512 a key on P-256/P-384/P-521
    (§3.4), EdDSA an Ed25519 or Ed448 key (RFC 8037 §3.1)."""
    if algorithm[:2] in ("RS", "PS"):
        if not isinstance(public_key, rsa.RSAPublicKey):
            return f"{_kind(public_key)} cannot be used with {algorithm}; an RSA key is required"
        if public_key.key_size < MIN_RSA_BITS:
            section = "3.3" if algorithm[:2] == "RS" else "3.5"
            return (f"RSA key of {public_key.key_size} bits; at least {MIN_RSA_BITS} are required "
                    f"(RFC 7518 section {section})")
        return None
    if algorithm in _ALGORITHM_CURVE:
        curve, name = _ALGORITHM_CURVE[algorithm]
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != curve:
            return (f"{_kind(public_key)} cannot be used with {algorithm}; a {name} key is required "
                    "(RFC 7518 section 3.4)")
        return None
    if algorithm == "EdDSA":
        if not isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            return (f"{_kind(public_key)} cannot be used with EdDSA; an Ed25519 or Ed448 key is required "
                    "(RFC 8037 section 3.1)")
        return None
    return f"{shown(algorithm, 16)} is not an asymmetric signature algorithm"


def _kind(public_key: object) -> str:
    if isinstance(public_key, rsa.RSAPublicKey):
        return "an RSA key"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"an EC key on {_JWK_CURVE.get(public_key.curve.name, public_key.curve.name)}"
    if isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "an OKP key"
    return "a private or unknown key"


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A public key bound to its one algorithm. One that `key_problem` refuses cannot exist."""

    kid: str
    algorithm: str
    public_key: Any

    def __post_init__(self) -> None:
        if (problem := key_problem(self.algorithm, self.public_key)) is not None:
            raise UnsafeKey(problem)


class KeySource(Protocol):
    """Finds the verification key a token's `kid` names; raises `UnknownKey`, `RefusedKey` or
    `KeySetUnavailable`."""

    async def key_for(self, kid: str) -> VerificationKey: ...


class KeySet(dict[str, VerificationKey]):
    """The usable keys of a JWK Set by `kid`, and the keys refused when loaded (`rejected`: kid to reason)."""

    def __init__(self, keys: Mapping[str, VerificationKey], rejected: Mapping[str, str]) -> None:
        super().__init__(keys)
        self.rejected = dict(rejected)


def algorithm_for(jwk: Mapping[str, Any]) -> str | None:
    """The one algorithm a JWK may be used with: its `alg`, else implied by `kty`/`crv` (RSA: RS256)."""
    if isinstance(alg := jwk.get("alg"), str):
        return alg
    if jwk.get("kty") == "RSA":
        return "RS256"
    crv = jwk.get("crv")
    return _CURVE_ALGORITHM.get(crv) if isinstance(crv, str) else None


def bind_key(jwk: Mapping[str, Any], kid: str, algorithm: str) -> VerificationKey:
    """The JWK's public key, bound to `algorithm`; raises UnsafeKey saying why it must not be used."""
    kty = jwk.get("kty")
    wanted = "RSA" if algorithm[:2] in ("RS", "PS") else "OKP" if algorithm == "EdDSA" else "EC"
    if kty != wanted:
        raise UnsafeKey(f"kty {kty} cannot be used with {algorithm}; an {wanted} key is required")
    if "d" in jwk:  # RFC 7518 §6.2.2.1, §6.3.2.1, RFC 8037 §2: a published key set holds public keys only
        raise UnsafeKey("the JWK holds private key material (d); a key set must hold public keys only")
    try:
        loaded = jwt.PyJWK(dict(jwk), algorithm=algorithm)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
        raise UnsafeKey(f"its {kty} key material cannot be loaded") from exc
    return VerificationKey(kid, algorithm, loaded.key)


def parse_key_set(document: Any, *, allowed: frozenset[str], use: str | None = None) -> KeySet:
    """Usable keys of a JWK Set by `kid`, and those refused as unsafe.

    Keys that are not for this verifier are ignored: with `use` given (SPIFFE bundles: "jwt-svid"), keys
    with another or no `use` (SPIFFE Trust Domain and Bundle §4.2.2); keys with no `kid`, a `kty` other
    than RSA, EC or OKP (§4.2.1), or an algorithm outside `allowed`. A key meant for it that `bind_key`
    refuses (too weak, wrong curve or type, private, unloadable) is listed in `rejected`, never used.
    A document that is not a JWK Set, or names a `kid` twice, raises ValueError.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK Set: a JSON object with a 'keys' array is required")
    keys: dict[str, VerificationKey] = {}
    rejected: dict[str, str] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or not isinstance(kid := jwk.get("kid"), str) or not kid:
            continue
        if use is not None and jwk.get("use") != use:
            continue
        if not isinstance(kty := jwk.get("kty"), str) or kty not in _KEY_TYPES:
            continue
        if (alg := algorithm_for(jwk)) not in allowed:
            continue
        if kid in keys or kid in rejected:
            raise ValueError(f"kid {shown(kid)} appears twice")
        try:
            keys[kid] = bind_key(jwk, kid, alg)
        except UnsafeKey as exc:
            rejected[kid] = str(exc)
    return KeySet(keys, rejected)


def json_document(raw: bytes) -> Any:
    """A key set's bytes as JSON: at most MAX_JWKS_BYTES, UTF-8 (RFC 8259 §8.1); raises a ValueError
    (UnicodeDecodeError and JSONDecodeError are ones)."""
    if len(raw) > MAX_JWKS_BYTES:
        raise ValueError(f"larger than {MAX_JWKS_BYTES} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError as exc:
        raise ValueError("not JSON: nested too deeply") from exc


async def download(client: httpx2.AsyncClient, uri: str) -> bytes:
    """A JSON document's body (a key set, an OIDC discovery document), read no further than one byte past
    MAX_JWKS_BYTES, so `json_document` refuses a larger one; raises httpx2.HTTPError on a non-2xx answer."""
    body = bytearray()
    async with client.stream("GET", uri, headers={"Accept": "application/json"}) as response:
        response.raise_for_status()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_JWKS_BYTES:
                break
    return bytes(body)


def read_key_set(path: str, *, allowed: frozenset[str], use: str | None = None) -> KeySet:
    """Load a JWK Set file; raises OSError or ValueError with a readable message.

    The file is the operator's statement of trust, so one unsafe key in it is an error, even beside good
    ones (a fetched set only skips it: see `RemoteKeys`)."""
    with open(path, "rb") as f:
        raw = f.read(MAX_JWKS_BYTES + 1)
    try:
        document = json_document(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    keys = parse_key_set(document, allowed=allowed, use=use)
    if keys.rejected:
        kid, reason = next(iter(keys.rejected.items()))
        raise ValueError(f"kid {shown(kid)}: {reason}")
    return keys


class StaticKeys:
    """Keys held in memory: read at start-up from a JWKS or bundle file, or Deputy's own key ring."""

    def __init__(self, keys: Mapping[str, VerificationKey]) -> None:
        self._keys = dict(keys)

    def replace(self, keys: Mapping[str, VerificationKey]) -> None:
        """Use `keys` from now on (Deputy's own key ring after a rotation)."""
        self._keys = dict(keys)

    async def key_for(self, kid: str) -> VerificationKey:
        if (key := self._keys.get(kid)) is None:
            raise UnknownKey(kid)
        return key


class RemoteKeys:
    """A `jwks_uri` or SPIFFE `bundle_uri`, cached; refetched on an unknown `kid` at most once per 30 s.

    A failed fetch never trusts a key it has not seen: the lookup raises `KeySetUnavailable`.
    Keys already fetched stay in use until a later fetch succeeds. A fetched key that `parse` refuses
    is logged (`jwks.key_skipped`) and never used; a token naming it is told why (`RefusedKey`).
    """

    def __init__(
        self,
        uri: str,
        *,
        client: httpx2.AsyncClient,
        parse: Callable[[Any], KeySet],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.uri = uri
        self._client = client
        self._parse = parse
        self._clock = clock
        self._keys = KeySet({}, {})
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
            if (reason := self._keys.rejected.get(kid)) is not None:
                raise RefusedKey(kid, reason)
            raise UnknownKey(kid)
        return key

    def _due(self, kid: str) -> bool:
        age = self._clock() - self._fetched_at
        return age >= MAX_KEY_AGE_S or (kid not in self._keys and age >= REFETCH_INTERVAL_S)

    async def _refetch(self) -> None:
        self._fetched_at = self._clock()  # failures count too: no refetch storm
        try:
            keys = self._parse(json_document(await download(self._client, self.uri)))
            for kid, reason in keys.rejected.items():  # skipped, never used; the others still are
                log.warning("jwks.key_skipped", extra={"uri": self.uri, "kid": kid[:256], "reason": reason})
            self._keys, self._last_error = keys, None
        except (httpx2.HTTPError, ValueError) as exc:
            self._last_error = type(exc).__name__
            log.warning("jwks.fetch_failed", extra={"uri": self.uri, "error": str(exc)})
