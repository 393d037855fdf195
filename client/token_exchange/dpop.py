"""DPoP proofs (RFC 9449), the client's side: one key per agent instance, a fresh proof for every request.

A proof is a JWT with `typ: dpop+jwt`, the public key in its `jwk` header, and `jti`, `htm`, `htu`, `iat`
(§4.2); at a resource server also `ath`, the hash of the access token it accompanies (§4.2, §7), and after
a server has given one, its `nonce` (§8, §9). The token a proof binds carries the key's RFC 7638
thumbprint as `cnf.jkt` (§6.1).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jwt

from .signing import SigningKey

HEADER = "DPoP"  # §4.1; field names are case-insensitive
NONCE_HEADER = "DPoP-Nonce"  # §8
TYP = "dpop+jwt"  # §4.2
SCHEME = "DPoP"  # §7.1: `Authorization: DPoP <token>`
TOKEN_TYPE = "DPoP"  # §5: `token_type` of a bound token
DEFAULT_PORTS = {"http": 80, "https": 443}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def access_token_hash(access_token: str) -> str:
    """§4.2 `ath`: base64url of the SHA-256 of the token's ASCII."""
    return b64url(hashlib.sha256(access_token.encode("ascii")).digest())


def target_uri(url: str) -> str:
    """§4.2 `htu`: the request URI without query and fragment, scheme and host in lower case (RFC 3986
    §6.2.2), without the scheme's default port (§6.2.3); "" for anything but an http or https URI with a host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return ""
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in DEFAULT_PORTS or not host:
        return ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    if port is not None and DEFAULT_PORTS.get(scheme) != port:
        host = f"{host}:{port}"
    userinfo = parts.netloc.rpartition("@")[0]
    return urlunsplit((scheme, f"{userinfo}@{host}" if userinfo else host, parts.path or "/", "", ""))


@dataclass(frozen=True, slots=True)
class DpopKey:
    """An agent instance's proof-of-possession key: ES256 on P-256, made fresh in memory and never written."""

    signing_key: SigningKey = field(default_factory=lambda: SigningKey.generate("ES256"))
    _headers: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.signing_key.algorithm != "ES256":
            raise ValueError("a DPoP key is ES256 (P-256)")
        object.__setattr__(self, "_headers", {"typ": TYP, "jwk": self.public_jwk})

    @property
    def jkt(self) -> str:
        """The RFC 7638 thumbprint a bound token carries as `cnf.jkt` (§6.1)."""
        return self.signing_key.kid

    @property
    def public_jwk(self) -> dict[str, Any]:
        return {k: self.signing_key.public_jwk[k] for k in ("kty", "crv", "x", "y")}

    def proof(self, method: str, url: str, *, access_token: str | None = None, nonce: str | None = None,
              now: float | None = None) -> str:
        """A fresh proof for one request (§4.2): a new `jti` every time."""
        claims: dict[str, Any] = {"jti": secrets.token_urlsafe(16), "htm": method.upper(), "htu": target_uri(url),
                                  "iat": int(time.time() if now is None else now)}
        if access_token is not None:
            claims["ath"] = access_token_hash(access_token)
        if nonce is not None:
            claims["nonce"] = nonce
        return jwt.encode(claims, self.signing_key.private_key, algorithm="ES256", headers=self._headers)
