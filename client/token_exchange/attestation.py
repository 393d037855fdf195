"""Client attestation at the token endpoint: draft-ietf-oauth-attestation-based-client-auth-10, used as an
additional security signal (§7.6) beside the agent's workload identity, with the posture it carries.

An agent instance may send two header fields: `OAuth-Client-Attestation`, a JWT from a configured attester
(§4) binding the instance's key (`cnf.jwk`) to the agent (`sub`), and `OAuth-Client-Attestation-PoP`, a
fresh JWT signed with that key for this gateway (§5.1). Both are checked as §7.1 and §7.2 say; the PoP's
`jti` is then recorded in a store every worker shares (§9.7, §11.1). What the attestation says about the
instance reaches the policy as a `Posture`: only its RFC 9711 claims (`eat.posture_claims`), never `cnf`,
never the PoP's claims. Server challenges (§6) and DPoP combined mode (§5.2, §7.3) are not offered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from . import pop
from .eat import posture_claims
from .errors import InvalidClient, UseFreshAttestation, shown
from .jws import (
    LEEWAY_S,
    SignedToken,
    TokenError,
    VerifiedCache,
    check_audience,
    check_claim_values,
    header_algorithm,
    string_claim,
    unverified_parts,
    verify_signature,
    verify_with_key,
)
from .keys import ASYMMETRIC_ALGORITHMS, KeySource, UnknownKey, VerificationKey
from .rfc6749 import TokenRequest
from .single_use import SingleUse

ATTESTATION_HEADER = "oauth-client-attestation"  # §4; field names are case-insensitive (RFC 9110 §5.1)
POP_HEADER = "oauth-client-attestation-pop"  # §5.1
ATTESTATION_TYP = "oauth-client-attestation+jwt"  # §4
POP_TYP = "oauth-client-attestation-pop+jwt"  # §5.1
AUTH_METHOD = "attest_jwt_client_auth"  # §8, §13.6
POP_METHODS = ("attestation_pop_jwt", "none")  # §7.6, §13.5: a PoP JWT is accepted; no attestation is fine too
SEEN_NAMESPACE = "attestation-pop-jti"
CHALLENGE_SCHEME = "OAuth-Client-Attestation"
"""The scheme named in the `WWW-Authenticate` of a 401 (RFC 9110 §15.5.2 requires a challenge; the draft
registers no scheme): the field whose credential failed, so a client can tell which one to renew."""


@dataclass(frozen=True, slots=True)
class Attester:
    """A configured client attester: its name (what the policy sees), its keys, and how old (by `iat`) an
    attestation may be and still count as fresh (§7.1 item 6: local policy)."""

    name: str
    keys: KeySource
    max_age: int = 300


@dataclass(frozen=True, slots=True)
class Posture:
    """What a verified attestation says about the agent instance, as the policy sees it."""

    attester: str
    issued_at: int
    expires_at: int
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    key_thumbprint: str | None = field(default=None, compare=False)  # RFC 7638, of `cnf.jwk`; not for the policy

    def policy_view(self) -> dict[str, Any]:
        """`input.actor.posture`: `{"attester", "iat", "exp", "claims"}` (docs/policy.md)."""
        return {"attester": self.attester, "iat": self.issued_at, "exp": self.expires_at, "claims": dict(self.claims)}


class _Attested(NamedTuple):
    posture: Posture
    key: VerificationKey  # the instance key, `cnf.jwk`
    key_thumbprint: str  # RFC 7638


def metadata(algorithms: frozenset[str] = ASYMMETRIC_ALGORITHMS) -> dict[str, Any]:
    """The RFC 8414 members §8 asks for (the auth method itself is `AUTH_METHOD`); `none` among the PoP
    methods says an attestation is optional (§7.6)."""
    listed = sorted(algorithms)
    return {"client_attestation_signing_alg_values_supported": listed,
            "client_attestation_pop_signing_alg_values_supported": listed,
            "client_attestation_pop_methods_supported": list(POP_METHODS)}


def attestation_rejected(check: str) -> InvalidClient:
    """401 `invalid_client` naming the check the attestation failed (§7.4: RFC 6749 §5.2 otherwise)."""
    return InvalidClient(f"client attestation rejected: {check}", scheme=CHALLENGE_SCHEME)


def pop_rejected(check: str) -> InvalidClient:
    return InvalidClient(f"client attestation PoP rejected: {check}", scheme=CHALLENGE_SCHEME)


class AttestationVerifier:
    """Checks the attestation headers of a token request against the actor they must attest (§7.1, §7.2)."""

    def __init__(self, attesters: Sequence[Attester], *, issuer: str, seen: SingleUse,
                 algorithms: frozenset[str] = ASYMMETRIC_ALGORITHMS) -> None:
        self._attesters = tuple(attesters)
        self._issuer = issuer
        self._seen = seen
        self._algorithms = algorithms
        self._signed: VerifiedCache[tuple[Attester, SignedToken]] = VerifiedCache()  # §9.2: one attestation,
        # many requests, each with its own PoP: its signature is checked once, its freshness every time

    async def verify(self, request: TokenRequest, *, actor: str, client_id: str | None, now: int) -> Posture | None:
        """The posture the request's attestation proves for `actor`, or None when it sends none.

        Raises `InvalidClient` (401) naming the check that failed, or `UseFreshAttestation` (400) for an
        attestation that expired or is older than its attester's `max_age` (§7.4). The PoP's `jti` is
        recorded last, once every other check has passed (§9.7)."""
        headers = _one_of_each(request)
        if headers is None:
            return None
        attested = await self._attestation(headers[0], actor=actor, client_id=client_id, now=now)
        issued_at, jti = self._proof(headers[1], attested.key, now=now)
        value = hashlib.sha256(f"{attested.key_thumbprint}.{jti}".encode()).hexdigest()  # bounded, per instance
        if not await self._seen.first_use(SEEN_NAMESPACE, value, expires_at=issued_at + pop.WINDOW_S + pop.FUTURE_S):
            raise pop_rejected("jti was already used (section 11.1: each PoP is accepted once)")
        return attested.posture

    async def _attestation(self, token: str, *, actor: str, client_id: str | None, now: int) -> _Attested:
        """§4, §7.1: typed, signed by a configured attester's key, fresh, naming the actor, binding a public key."""
        try:
            header, claims = unverified_parts(token)
            check_claim_values(claims)
            if header.get("typ") != ATTESTATION_TYP:
                raise TokenError(f"typ must be {ATTESTATION_TYP} (section 4)")
            attester, signed = await self._signed.get(token, now=now,
                                                      verify=lambda: self._signed_by_attester(token, header))
            issued_at, expires_at = _fresh(signed.claims, attester, now=now)
            sub = string_claim(signed.claims, "sub")
            if sub != actor:  # §4: sub is the client_id; Deputy's client is the agent the actor_token proved
                raise TokenError("sub does not name the actor (the actor_token's workload)")
            if client_id is not None and client_id != sub:
                raise TokenError("sub does not match client_id (section 7.5)")
            if "aud" in signed.claims:  # §4 needs none; RFC 7519 §4.1.3: one that is present must name us
                check_audience(signed.claims, self._issuer)
            key, key_thumbprint = _instance_key(signed.claims, self._algorithms)
            posture = Posture(attester.name, issued_at, expires_at, MappingProxyType(posture_claims(signed.claims)),
                              key_thumbprint)
        except TokenError as exc:
            raise attestation_rejected(str(exc)) from exc
        return _Attested(posture, key, key_thumbprint)

    async def _signed_by_attester(self, token: str, header: Mapping[str, Any]
                                  ) -> tuple[Any, tuple[Attester, SignedToken]]:
        """§7.1 item 4: the signature verifies with a key of a configured attester, found by `kid` in their
        key sets (in configuration order); no claim chooses the attester (an `iss` selects nothing), and
        `jku`, `x5u`, `x5c`, `jwk` headers are refused, never fetched (RFC 8725 §3.10). Gives the token's
        `exp` and (attester, proof), for the cache."""
        problem: TokenError | None = None
        for attester in self._attesters:
            try:
                signed = await verify_signature(token, header, attester.keys, allowed=self._algorithms)
                return signed.claims.get("exp"), (attester, signed)
            except TokenError as exc:
                if not isinstance(exc.__cause__, UnknownKey):
                    problem = problem or exc
        raise problem or TokenError(f"not signed by a configured attester (no attester has kid "
                                    f"{shown(header.get('kid'))})")

    def _proof(self, token: str, key: VerificationKey, *, now: int) -> tuple[int, str]:
        """§5.1, §7.2: typed, signed with the `cnf` key, for this gateway, fresh; its (iat, jti)."""
        try:
            header, claims = unverified_parts(token)
            check_claim_values(claims)
            if header.get("typ") != POP_TYP:
                raise TokenError(f"typ must be {POP_TYP} (section 5.1)")
            header_algorithm(header, allowed=self._algorithms)
            claims = dict(verify_with_key(token, header, key).claims)
            aud = claims.get("aud")
            if aud != self._issuer and aud != [self._issuer]:  # §5.1: one audience, this issuer exactly
                raise TokenError(f"aud is not this gateway's issuer {self._issuer}")
            issued_at = pop.issued_at(claims, now=now, section="5.1")  # before the jti is looked up (§9.7)
            _check_lifetime(claims, now=now)
            jti = pop.jti(claims, section="5.1")
        except TokenError as exc:
            raise pop_rejected(str(exc)) from exc
        return issued_at, jti


def _one_of_each(request: TokenRequest) -> tuple[str, str] | None:
    """§7.1 item 1, §7.2 item 1: precisely one of each header field, or neither (no attestation)."""
    attestations, proofs = request.header(ATTESTATION_HEADER), request.header(POP_HEADER)
    if not attestations and not proofs:
        return None
    if len(attestations) > 1:
        raise attestation_rejected("more than one OAuth-Client-Attestation header (section 7.1)")
    if len(proofs) > 1:
        raise pop_rejected("more than one OAuth-Client-Attestation-PoP header (section 7.2)")
    if not proofs:
        raise attestation_rejected("no OAuth-Client-Attestation-PoP header proves possession of its key "
                                   "(section 7.2; DPoP combined mode is not supported)")
    if not attestations:
        raise pop_rejected("no OAuth-Client-Attestation header comes with it (section 7.1)")
    return attestations[0], proofs[0]


def _fresh(claims: Mapping[str, Any], attester: Attester, *, now: int) -> tuple[int, int]:
    """§4: `exp` required and not passed; §7.1 item 6: fresh by `iat` within the attester's `max_age`
    (Deputy's local policy, so `iat` is required). Returns (iat, exp)."""
    expires_at, issued_at = claims.get("exp"), claims.get("iat")
    if type(expires_at) is not int:
        raise TokenError("exp claim is required (section 4)")
    if type(issued_at) is not int:
        raise TokenError("iat claim is required: freshness is judged by it (section 7.1)")
    if issued_at > now + LEEWAY_S:
        raise TokenError("iat is in the future")
    _check_lifetime(claims, now=now, stale=True)
    if now - issued_at > attester.max_age:
        raise UseFreshAttestation(f"client attestation is not fresh: issued {now - issued_at} s ago, and attester "
                                  f"{shown(attester.name)} allows {attester.max_age} s (section 7.1)")
    return issued_at, expires_at


def _check_lifetime(claims: Mapping[str, Any], *, now: int, stale: bool = False) -> None:
    """RFC 7519 §4.1.4, §4.1.5: not expired (an expired attestation is stale: §7.4), not before `nbf`."""
    if type(exp := claims.get("exp")) is int and exp + LEEWAY_S <= now:
        if stale:
            raise UseFreshAttestation("client attestation is not fresh: it has expired (section 4)")
        raise TokenError("expired")
    if type(nbf := claims.get("nbf")) is int and nbf > now + LEEWAY_S:
        raise TokenError("nbf is in the future")


def _instance_key(claims: Mapping[str, Any], allowed: frozenset[str]) -> tuple[VerificationKey, str]:
    """§4: `cnf.jwk` (RFC 7800 §3.2), a public key (§7.1 item 5) fit for its one algorithm (RFC 8725
    §3.1, `keys.key_problem`); with its RFC 7638 thumbprint."""
    cnf = claims.get("cnf")
    jwk = cnf.get("jwk") if isinstance(cnf, dict) else None
    if not isinstance(jwk, dict):
        alone = " (cnf.jkt alone is not accepted)" if isinstance(cnf, dict) and "jkt" in cnf else ""
        raise TokenError(f"cnf claim must hold the instance key as jwk{alone} (section 4)")
    return pop.public_key(jwk, where="cnf.jwk", allowed=allowed)  # §7.1 item 5: a public key
