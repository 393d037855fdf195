"""Checking DPoP proofs (RFC 9449 §4.3), for the token endpoint and resource servers alike.

`check_proof` enforces §4.3 items 1-11 on one proof: a compact JWS typed `dpop+jwt`, signed with an
allowed asymmetric algorithm by the public key in its `jwk` header (§4.2), carrying `jti`, `htm`, `htu`,
`iat` (and `ath` when it accompanies an access token, §7); the `htu` is compared with the request's URI
without query and fragment, both normalised by `dpop.target_uri` (§4.3 item 9). It returns what the
caller needs for the rest: the key's thumbprint (to bind a token or match `cnf.jkt`, §6), the `jti` (to
refuse replays, §11.1) and the `nonce` (checked by whoever issued nonces, §8, §9).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from . import pop
from .dpop import TYP, access_token_hash, target_uri
from .jws import TokenError, check_claim_values, header_algorithm, unverified_parts, verify_with_key
from .keys import ASYMMETRIC_ALGORITHMS


@dataclass(frozen=True, slots=True)
class DpopProof:
    """A proof that passed §4.3: its key's RFC 7638 thumbprint, its `jti`, `iat` and `nonce` (if any)."""

    jkt: str
    jti: str
    issued_at: int
    nonce: str | None = None

    @property
    def replay_value(self) -> str:
        """What a replay cache records (§11.1): the key's and the `jti`'s hash, bounded whatever the `jti`."""
        return hashlib.sha256(f"{self.jkt}.{self.jti}".encode()).hexdigest()

    @property
    def seen_until(self) -> int:
        """Until when the replay must be remembered: past it, the `iat` window refuses the proof anyway."""
        return self.issued_at + pop.WINDOW_S + pop.FUTURE_S


def one_proof(values: Sequence[str]) -> str | None:
    """§4.3 item 1: the one `DPoP` header field value, or None when the request has none."""
    if not values:
        return None
    if len(values) > 1:
        raise TokenError("more than one DPoP header (section 4.3)")
    return values[0].strip()


def check_proof(proof: str, *, method: str, url: str, now: int, access_token: str | None = None,
                algorithms: frozenset[str] = ASYMMETRIC_ALGORITHMS) -> DpopProof:
    """§4.3 items 2-11 (the nonce excepted) for a request of `method` to `url` at `now`; with
    `access_token`, also its `ath`. Raises TokenError naming the check that failed."""
    header, claims = unverified_parts(proof)  # item 2: one well-formed JWT
    check_claim_values(claims)
    if header.get("typ") != TYP:  # item 4, §11.5
        raise TokenError(f"typ must be {TYP} (section 4.2)")
    alg = header_algorithm(header, allowed=algorithms, own_key=True)  # item 5: never none nor a MAC
    key, jkt = pop.public_key(header.get("jwk"), where="jwk header", allowed=algorithms, algorithm=alg)  # item 7
    claims = dict(verify_with_key(proof, header, key).claims)  # item 6
    jti = pop.jti(claims, section="4.2")  # item 3
    if claims.get("htm") != method:  # item 8: methods are case-sensitive (RFC 9110 section 9.1)
        raise TokenError(f"htm does not match the request method {method} (section 4.3)")
    htu = claims.get("htu")
    if not isinstance(htu, str) or not (target := target_uri(htu)) or target != target_uri(url):  # item 9
        raise TokenError("htu does not match the request URI (section 4.3)")
    issued_at = pop.issued_at(claims, now=now, section="4.2")  # item 11, §11.1
    if access_token is not None and claims.get("ath") != access_token_hash(access_token):  # item 10 (§4.3 item 11)
        raise TokenError("ath is missing or is not the hash of the access token (section 4.3)")
    nonce = claims.get("nonce")
    if nonce is not None and not isinstance(nonce, str):
        raise TokenError("nonce claim is not a string (section 4.2)")
    return DpopProof(jkt, jti, issued_at, nonce)
