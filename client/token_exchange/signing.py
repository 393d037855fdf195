"""Deputy's own signing keys: generation, PEM form, public JWK with an RFC 7638 thumbprint as `kid`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm, RSAPSSAlgorithm

from .keys import key_problem

SIGNING_ALGORITHMS = ("ES256", "EdDSA", "PS256", "RS256")
_JWK_WRITERS: dict[str, Any] = {
    "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm, "PS256": RSAPSSAlgorithm, "RS256": RSAAlgorithm
}
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private key bound to one algorithm, with its `kid` and public JWK."""

    algorithm: str
    private_key: Any
    kid: str
    public_jwk: dict[str, Any]

    @classmethod
    def of(cls, algorithm: str, private_key: Any) -> SigningKey:
        if algorithm not in _JWK_WRITERS:
            raise ValueError(f"unsupported signing algorithm {algorithm!r}")
        _check_key_fits(algorithm, private_key)
        jwk: dict[str, Any] = _JWK_WRITERS[algorithm].to_jwk(private_key.public_key(), as_dict=True)
        kid = thumbprint(jwk)
        return cls(algorithm, private_key, kid, {**jwk, "kid": kid, "alg": algorithm, "use": "sig"})

    @classmethod
    def generate(cls, algorithm: str) -> SigningKey:
        return cls.of(algorithm, _new_private_key(algorithm))

    @classmethod
    def from_pem(cls, algorithm: str, pem: bytes) -> SigningKey:
        return cls.of(algorithm, serialization.load_pem_private_key(pem, password=None))

    def to_pem(self) -> bytes:
        return bytes(self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ))


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url)."""
    members = {k: jwk[k] for k in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    digest = jwt.utils.base64url_encode(hashlib.sha256(canonical.encode()).digest())
    return digest.decode()


def _new_private_key(algorithm: str) -> PrivateKeyTypes:
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


def _check_key_fits(algorithm: str, key: Any) -> None:
    """Deputy's own keys follow the rules its verifiers apply to everyone else's (`keys.key_problem`)."""
    if not hasattr(key, "public_key") or key_problem(algorithm, key.public_key()) is not None:
        raise ValueError(f"key material does not fit {algorithm}")
