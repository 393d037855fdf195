"""SPIFFE IDs (SPIFFE-ID §2) and JWT-SVID verification (JWT-SVID §2-§4, §6).

An invalid `SpiffeId` cannot exist: `parse` rejects what the spec forbids, uppercase trust domains
included (Deputy rejects rather than lowercases them), and `str()` gives back the exact text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .actors import VerifiedActor
from .jws import SignatureCache, TokenError, check_audience, check_time_claims, string_claim
from .keys import KeySource

MAX_SPIFFE_ID_BYTES = 2048
MAX_TRUST_DOMAIN_BYTES = 255
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_PATH_SEGMENT = re.compile(r"[a-zA-Z0-9._-]+")
SVID_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"}
)  # JWT-SVID §2.1: anything else, EdDSA included, is rejected


class SpiffeIdError(ValueError):
    """Text that is not a valid SPIFFE ID."""


class SvidError(TokenError):
    """A JWT-SVID that is malformed, untrusted or not valid now."""


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: str
    path: str

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """SPIFFE-ID §2: `spiffe://` + lowercase trust domain + clean path; no port, userinfo, query, fragment."""
        if not isinstance(text, str) or not text.isascii() or len(text) > MAX_SPIFFE_ID_BYTES:
            raise SpiffeIdError("not an ASCII SPIFFE ID of at most 2048 bytes")
        if not text.startswith("spiffe://"):
            raise SpiffeIdError("scheme must be spiffe://")
        domain, slash, rest = text.removeprefix("spiffe://").partition("/")
        cls.check_trust_domain(domain)
        path = slash + rest
        if path:
            for segment in rest.split("/"):
                if segment in ("", ".", "..") or not _PATH_SEGMENT.fullmatch(segment):
                    raise SpiffeIdError("path segments must be non-empty, not . or .., and [a-zA-Z0-9._-]")
        return cls(domain, path)

    @staticmethod
    def check_trust_domain(domain: str) -> str:
        """SPIFFE-ID §2.1: non-empty, at most 255 bytes, only [a-z0-9._-]."""
        if not domain or len(domain) > MAX_TRUST_DOMAIN_BYTES or not _TRUST_DOMAIN.fullmatch(domain):
            raise SpiffeIdError("trust domain must be 1-255 characters of [a-z0-9._-]")
        return domain

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"


class JwtSvidVerifier:
    """Verifies JWT-SVIDs for one audience against the JWT bundles of the configured trust domains;
    the actor's `id` is the SPIFFE ID and its `domain` the trust domain."""

    def __init__(self, bundles: Mapping[str, KeySource], *, audience: str) -> None:
        self._bundles = dict(bundles)
        self._audience = audience
        self._cache = SignatureCache()

    async def verify(self, token: str, *, now: int) -> VerifiedActor:
        try:
            return await self._verify(token, now)
        except SvidError:
            raise
        except TokenError as exc:
            raise SvidError(str(exc)) from exc

    async def _verify(self, token: str, now: int) -> VerifiedActor:
        claims = (await self._cache.verified(token, now=now, choose=self._bundle_for)).claims
        spiffe_id = _spiffe_id(string_claim(claims, "sub"))
        if not spiffe_id.path:
            raise SvidError("sub names a trust domain, not a workload")
        check_audience(claims, self._audience)
        expires_at = check_time_claims(claims, now=now)
        return VerifiedActor(str(spiffe_id), "spiffe", spiffe_id.trust_domain, expires_at, claims)

    def _bundle_for(
        self, header: Mapping[str, Any], claims: Mapping[str, Any]
    ) -> tuple[KeySource, frozenset[str]]:
        """JWT-SVID §2, §2.3: only alg, kid, typ (JWT or JOSE); the bundle of the sub's trust domain."""
        if header.keys() - {"alg", "kid", "typ"}:
            raise SvidError("header parameters other than alg, kid and typ are not allowed (JWT-SVID section 2)")
        if header.get("typ", "JWT") not in ("JWT", "JOSE"):
            raise SvidError("typ must be JWT or JOSE (JWT-SVID section 2.3)")
        bundle = self._bundles.get(self._trust_domain_of(claims))
        if bundle is None:
            raise SvidError("trust domain of sub is not trusted")
        return bundle, SVID_ALGORITHMS

    @staticmethod
    def _trust_domain_of(claims: Mapping[str, Any]) -> str:
        return _spiffe_id(string_claim(claims, "sub")).trust_domain


def _spiffe_id(text: str) -> SpiffeId:
    try:
        return SpiffeId.parse(text)
    except SpiffeIdError as exc:
        raise SvidError(f"sub is not a SPIFFE ID: {exc}") from exc
