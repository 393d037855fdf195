"""RFC 9068 §4 for resource servers: verify Deputy's JWT access tokens locally, against live revocation state.

The verifier checks each token against the issuer's cached `jwks_uri` (RFC 8414 §2), the required scope
(RFC 6750 §3.1), and the revocations it follows: Deputy's OpenID SSF transmitter by poll (the default,
`deputy_client.resource.ssf`) or Deputy's native feed (`revocations="feed"`). When it cannot confirm the
revocation state for longer than `max_feed_staleness`, it rejects every token. `verify_request` takes a
whole request: a Bearer token, or a DPoP-bound one with its proof (RFC 9449 §7).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import httpx2

from token_exchange.dpop import SCHEME as DPOP_SCHEME
from token_exchange.dpop_check import check_proof, one_proof
from token_exchange.errors import OAuthError
from token_exchange.jws import SignatureCache, TokenError, check_audience, string_claim
from token_exchange.keys import ASYMMETRIC_ALGORITHMS, KeySource, RemoteKeys, parse_key_set
from token_exchange.rfc8414 import metadata_url
from token_exchange.scope import Scope

from .dpop import ReplayCache, credentials
from .errors import (
    BEARER_SCHEME,
    BearerTokenError,
    DiscoveryFailed,
    FeedStale,
    InsufficientScope,
    InvalidDpopProof,
    InvalidToken,
    MalformedRequest,
)
from .revocations import RevocationFeed, RevocationSource, RevocationState
from .ssf import SsfReceiver

ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
MAX_LEEWAY_S = 300


@dataclass(frozen=True, slots=True)
class VerifiedAccess:
    """What a verified access token grants: the user, the agent acting for them, the scope and the task."""

    subject: str
    agent: str
    scope: Scope
    task_id: str | None
    jti: str
    claims: Mapping[str, Any] = field(compare=False, default_factory=lambda: MappingProxyType({}))
    agent_issuer: str | None = None  # a Kubernetes or OIDC agent's issuer (`act.iss`); None for a SPIFFE ID
    jkt: str | None = None  # RFC 9449 §6.1: the thumbprint of the key a DPoP-bound token is bound to

    @property
    def dpop_bound(self) -> bool:
        return self.jkt is not None

    @classmethod
    def of(cls, claims: Mapping[str, Any]) -> VerifiedAccess:
        scope = claims.get("scope")
        txn = claims.get("txn")
        act = claims.get("act")
        issuer = act.get("iss") if isinstance(act, Mapping) else None  # RFC 8693 §4.1: the current actor's
        return cls(subject=string_claim(claims, "sub"), agent=string_claim(claims, "client_id"),
                   scope=Scope.from_claim(scope) if isinstance(scope, str) else Scope(frozenset()),
                   task_id=txn if isinstance(txn, str) else None, jti=string_claim(claims, "jti"),
                   claims=MappingProxyType(dict(claims)), agent_issuer=issuer if isinstance(issuer, str) else None,
                   jkt=_bound_key(claims))


def _bound_key(claims: Mapping[str, Any]) -> str | None:
    """RFC 9449 §6.1 `cnf.jkt`; a `cnf` without a usable one binds the token to nothing this verifier
    can check, so the token is refused."""
    if (cnf := claims.get("cnf")) is None:
        return None
    jkt = cnf.get("jkt") if isinstance(cnf, Mapping) else None
    if not isinstance(jkt, str) or not jkt:
        raise TokenError("cnf claim holds no jkt (RFC 9449 section 6.1)")
    return jkt


def required_scope_of(text: str) -> Scope:
    """The scope a route requires; an empty or malformed one is a programming error, never "nothing"."""
    try:
        return Scope.parse(text)
    except OAuthError as exc:
        raise ValueError(f"required scope {text!r}: {exc.description}") from exc


class AccessTokenVerifier:
    """Verifies Deputy access tokens for one resource (its `audience`), following the revocation feed.

    Args:
        issuer: Deputy's issuer identifier; `iss` must equal it byte for byte (RFC 9068 §4 item 3).
        audience: this resource's indicator; `aud` must contain it (RFC 9068 §4 item 4).
        client: the HTTP client for metadata, keys and the feed; owned by the caller.
        svid: returns a current JWT-SVID (audience: the issuer) naming a SPIFFE ID listed in the
            resource's `clients`; called for every SSF or feed request, so rotation is picked up.
        max_feed_staleness: seconds the revocation state may go unconfirmed before every token is refused.
        leeway: seconds of clock skew allowed on `exp`, `nbf` and `iat` (at most 300).
        revocations: `"ssf"` (an SSF poll stream of this verifier's own) or `"feed"` (the native feed).
        feed_uri: with `"feed"`, the paged feed; `<issuer>/revocations` unless given (the stream is
            `<feed_uri>/stream`).
        dpop_algorithms: the algorithms accepted for DPoP proofs (RFC 9449 §7.1 `algs`).
    """

    def __init__(
        self, *, issuer: str, audience: str, client: httpx2.AsyncClient, svid: Callable[[], str],
        max_feed_staleness: float = 5.0, leeway: int = 30, algorithms: frozenset[str] = ASYMMETRIC_ALGORITHMS,
        revocations: Literal["ssf", "feed"] = "ssf", feed_uri: str | None = None,
        clock: Callable[[], float] = time.monotonic, dpop_algorithms: frozenset[str] = ASYMMETRIC_ALGORITHMS,
    ) -> None:
        if not 0 <= leeway <= MAX_LEEWAY_S:
            raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY_S} seconds")
        if max_feed_staleness <= 0:
            raise ValueError("max_feed_staleness must be positive")
        if not algorithms <= ASYMMETRIC_ALGORITHMS or not dpop_algorithms <= ASYMMETRIC_ALGORITHMS:
            raise ValueError("only asymmetric algorithms may be allowed (RFC 9068 section 2.1, RFC 9449 section 4.2)")
        self.issuer = issuer
        self.audience = audience
        self.max_feed_staleness = max_feed_staleness
        heartbeat = min(max(max_feed_staleness / 4, 0.05), 5.0)
        self.feed: RevocationSource
        if revocations == "ssf" and feed_uri is None:
            self.feed = SsfReceiver(issuer, audience=audience, client=client, svid=svid, heartbeat=heartbeat,
                                    clock=clock)
        elif revocations == "feed":
            self.feed = RevocationFeed(feed_uri or issuer.rstrip("/") + "/revocations", client=client, svid=svid,
                                       heartbeat=heartbeat, clock=clock)
        else:
            raise ValueError('feed_uri is for revocations="feed"; revocations must be "ssf" or "feed"')
        self._client = client
        self._leeway = leeway
        self._algorithms = algorithms
        self._clock = clock
        self._keys: RemoteKeys | None = None
        self._signatures = SignatureCache()
        self.dpop_algorithms = dpop_algorithms
        self._replays = ReplayCache()

    @property
    def revocations(self) -> RevocationState:
        return self.feed.state

    async def start(self) -> None:
        """Discover `jwks_uri` (RFC 8414 §3), catch up with the revocations once, then follow them in the
        background.

        Raises `DiscoveryFailed` if the metadata (or the SSF configuration) is unusable. An unreachable
        feed or stream does not raise: the verifier simply refuses tokens until it has caught up.
        """
        jwks_uri = await self._discover_jwks_uri()
        algorithms = self._algorithms
        self._keys = RemoteKeys(jwks_uri, client=self._client,
                                parse=lambda doc: parse_key_set(doc, allowed=algorithms))
        await self.feed.start()

    async def _discover_jwks_uri(self) -> str:
        try:
            response = await self._client.get(metadata_url(self.issuer), headers={"Accept": "application/json"})
            response.raise_for_status()
            document = response.json()
        except (httpx2.HTTPError, ValueError) as exc:
            raise DiscoveryFailed(f"metadata of {self.issuer} unavailable: {exc}") from exc
        if not isinstance(document, dict) or document.get("issuer") != self.issuer:
            raise DiscoveryFailed("metadata issuer does not match (RFC 8414 section 3.3)")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise DiscoveryFailed("metadata has no usable jwks_uri")
        return jwks_uri

    async def close(self) -> None:
        await self.feed.close()

    async def __aenter__(self) -> AccessTokenVerifier:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def verify(self, token: str, required_scope: str | Scope, *, now: int | None = None) -> VerifiedAccess:
        """A Bearer token (RFC 6750): RFC 9068 §4, then revocation, then scope. Raises `InvalidToken` (401),
        also for a DPoP-bound token (RFC 9449 §7.2: it is no Bearer token), or `InsufficientScope` (403)."""
        now = int(time.time()) if now is None else now
        access = await self._access(token, now)
        if access.dpop_bound:
            raise InvalidToken("a DPoP-bound token is not accepted as a Bearer token: send it with the DPoP "
                               "scheme and a proof (RFC 9449 section 7.2)")
        return _scoped(access, required_scope)

    async def verify_request(self, *, authorization: Sequence[str], dpop: Sequence[str], method: str, url: str,
                             required_scope: str | Scope, now: int | None = None) -> VerifiedAccess:
        """One request, whichever scheme it uses: `authorization` and `dpop` are every value of its
        `Authorization` and `DPoP` header fields, `method` its method, `url` its full URL as the client
        addressed it (scheme, host, port, path; the query is ignored).

        `Bearer` is `verify`. `DPoP` (RFC 9449 §7.1) also needs one proof, valid per §4.3 for this method
        and URL with the token's `ath`, signed by the key the token's `cnf.jkt` names (§6.1), and not seen
        before within its window (§11.1). Raises `NoCredentials` (401), `MalformedRequest` (400, also for
        credentials sent both ways: a Bearer token with a DPoP proof), `InvalidToken` (401),
        `InvalidDpopProof` (401) or `InsufficientScope` (403); each error's `scheme` says which challenge
        (`errors.www_authenticate`) it belongs to."""
        scheme, token = credentials(authorization)
        if scheme == BEARER_SCHEME:
            if dpop:
                raise MalformedRequest("a Bearer token comes with a DPoP proof: send a DPoP-bound token with the "
                                       "DPoP scheme, or no proof (RFC 9449 section 7.2)")
            return await self.verify(token, required_scope, now=now)
        now = int(time.time()) if now is None else now
        try:
            access = await self._access(token, now)
            if access.jkt is None:
                raise InvalidToken("the token is not DPoP-bound: send it with the Bearer scheme")
            self._check_proof(dpop, access.jkt, token, method=method, url=url, now=now)
            return _scoped(access, required_scope)
        except BearerTokenError as exc:
            exc.scheme = DPOP_SCHEME
            raise

    def _check_proof(self, values: Sequence[str], jkt: str, token: str, *, method: str, url: str, now: int) -> None:
        """RFC 9449 §7.1: the proof, for this request and token, by the bound key, used once."""
        try:
            presented = one_proof(values)
            if presented is None:
                raise TokenError("a DPoP-bound token needs a DPoP proof header (section 7.1)")
            proof = check_proof(presented, method=method, url=url, now=now, access_token=token,
                                algorithms=self.dpop_algorithms)
        except TokenError as exc:
            raise InvalidDpopProof(f"DPoP proof rejected: {exc}") from exc
        if proof.jkt != jkt:  # §4.3 item 11
            raise InvalidDpopProof("DPoP proof rejected: its key is not the one the token is bound to (cnf.jkt)")
        if not self._replays.first_use(proof.replay_value, until=proof.seen_until, now=now):
            raise InvalidDpopProof("DPoP proof rejected: jti was already used (section 11.1)")

    async def _access(self, token: str, now: int) -> VerifiedAccess:
        """RFC 9068 §4, then revocation."""
        if self._keys is None:
            raise RuntimeError("AccessTokenVerifier.start() has not been awaited")
        try:
            access = VerifiedAccess.of(await self._verified_claims(token, self._keys, now))
        except TokenError as exc:
            raise InvalidToken(str(exc)) from exc
        self._check_not_revoked(access)
        return access

    async def _verified_claims(self, token: str, keys: KeySource, now: int) -> Mapping[str, Any]:
        def choose(header: Mapping[str, Any], _: Mapping[str, Any]) -> tuple[KeySource, frozenset[str]]:
            _check_typ(header)  # before any key lookup: a task token or ID token goes no further
            return keys, self._algorithms

        signed = await self._signatures.verified(token, now=now, choose=choose)
        _check_typ(signed.header)
        claims = signed.claims
        if claims.get("iss") != self.issuer:  # RFC 9068 §4 item 3: exact match
            raise TokenError("iss is not the expected issuer")
        check_audience(claims, self.audience)  # §4 item 4
        self._check_time(claims, now)  # §4 item 6
        for name in ("sub", "client_id", "jti"):  # §2.2 REQUIRED
            string_claim(claims, name)
        return claims

    def _check_time(self, claims: Mapping[str, Any], now: int) -> None:
        exp = claims.get("exp")
        if type(exp) is not int:
            raise TokenError("exp claim missing or not an integer")
        if now >= exp + self._leeway:
            raise TokenError("expired")
        for name in ("iat", "nbf"):
            value = claims.get(name)
            if value is None and name == "iat":
                raise TokenError("iat claim missing")
            if value is not None and (type(value) is not int or value > now + self._leeway):
                raise TokenError(f"{name} is malformed or in the future")

    def _check_not_revoked(self, access: VerifiedAccess) -> None:
        state = self.feed.state
        if self._clock() - state.confirmed_at > self.max_feed_staleness:
            raise FeedStale("revocation state unavailable; refusing all tokens")
        if state.revoked(access.jti, access.task_id):
            raise InvalidToken("token has been revoked")
        if state.barred(agent=access.agent, agent_issuer=access.agent_issuer, subject=access.subject,
                        issued_at=access.claims["iat"]):
            raise InvalidToken("token has been revoked: its credentials were revoked after it was issued")

    async def poll(self) -> None:
        """Catch up with the revocations now (`SsfReceiver.poll`, `RevocationFeed.poll`)."""
        await self.feed.poll()


def _scoped(access: VerifiedAccess, required_scope: str | Scope) -> VerifiedAccess:
    required = required_scope if isinstance(required_scope, Scope) else required_scope_of(required_scope)
    if not required <= access.scope:
        raise InsufficientScope(f"this request needs scope {required}", required=required)
    return access


def _check_typ(header: Mapping[str, Any]) -> None:
    # RFC 9068 §4 item 1: reject any typ but at+jwt / application/at+jwt; media types are case-insensitive.
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() not in ACCESS_TOKEN_TYPES:
        raise TokenError("typ is not at+jwt: not an access token")
