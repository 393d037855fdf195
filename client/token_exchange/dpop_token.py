"""DPoP at the token endpoint (RFC 9449 §5): the proof a token request brings, checked, and the key it
binds the access token to.

The proof's `htu` must be the token endpoint as the metadata names it (the issuer's origin + `/token`,
RFC 8414 §2), never a URL rebuilt from the request's Host header: behind a proxy that would be the
internal name, and a client cannot know it. Each proof is accepted once: its `jti` (hashed with the key,
so the stored value is bounded) is recorded in the store every worker and replica shares, in a namespace
of its own, for the window in which its `iat` is accepted (§11.1). With nonces switched on (§8), a proof
must carry a nonce `DpopNonces` accepts, else 400 `use_dpop_nonce` with a fresh one.
"""

from __future__ import annotations

from .dpop import HEADER
from .dpop_check import check_proof, one_proof
from .dpop_nonces import DpopNonces
from .errors import InvalidDpopProof, UseDpopNonce
from .jws import TokenError
from .keys import ASYMMETRIC_ALGORITHMS
from .rfc6749 import TokenRequest
from .single_use import SingleUse

SEEN_NAMESPACE = "dpop-jti"


class TokenEndpointDpop:
    """Checks the `DPoP` header of token requests sent to `token_url`."""

    def __init__(self, *, token_url: str, seen: SingleUse, nonces: DpopNonces | None = None,
                 algorithms: frozenset[str] = ASYMMETRIC_ALGORITHMS) -> None:
        self.token_url = token_url
        self.algorithms = algorithms
        self.nonces = nonces
        self._seen = seen

    async def verify(self, request: TokenRequest, *, now: int, attested: str | None = None) -> str | None:
        """The RFC 7638 thumbprint of the key the request's proof proves, or None without a `DPoP` header.

        `attested`: the thumbprint of the instance key a verified client attestation binds (`cnf.jwk`);
        the proof must be signed with that key. Raises `InvalidDpopProof`, or `UseDpopNonce` (nonces on);
        the `jti` is recorded last, once every other check has passed."""
        try:
            token = one_proof(request.header(HEADER))
            if token is None:
                return None
            proof = check_proof(token, method=request.method, url=self.token_url, now=now,
                                algorithms=self.algorithms)
        except TokenError as exc:
            raise InvalidDpopProof(f"DPoP proof rejected: {exc}") from exc
        if attested is not None and proof.jkt != attested:
            raise InvalidDpopProof("DPoP proof rejected: its key is not the attested instance key (cnf.jwk)")
        if self.nonces is not None and not self.nonces.valid(proof.nonce, now):
            problem = "has no nonce" if proof.nonce is None else "has a nonce this server did not give or that expired"
            raise UseDpopNonce(f"the DPoP proof {problem}: retry with the DPoP-Nonce given (section 8)",
                               nonce=self.nonces.issue(now))
        if not await self._seen.first_use(SEEN_NAMESPACE, proof.replay_value, expires_at=proof.seen_until):
            raise InvalidDpopProof("DPoP proof rejected: jti was already used (section 11.1: each proof is "
                                   "accepted once)")
        return proof.jkt
