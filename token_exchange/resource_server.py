"""RFC 9068 §4 for resource servers: verify Deputy's JWT access tokens locally, against live revocation state.

The verifier checks each token against the issuer's cached `jwks_uri` (RFC 8414 §2), the required scope
(RFC 6750 §3.1), and the revocation feed it follows (`/revocations/stream`, resumed from `/revocations`).
When it cannot confirm the feed is in sync for longer than `max_feed_staleness`, it rejects every token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

import httpx

from .errors import OAuthError, error_description
from .jws import SignatureCache, TokenError, check_audience, string_claim
from .keys import ASYMMETRIC_ALGORITHMS, KeySource, RemoteKeys, parse_key_set
from .rfc8414 import well_known_path
from .scope import Scope

log = logging.getLogger(__name__)

ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
MAX_LEEWAY_S = 300
FEED_PAGE = 500
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.05, 5.0
STREAM_READ_TIMEOUT_S = 60.0  # the gateway sends a keep-alive comment every 15 s of quiet


class BearerTokenError(Exception):
    """A refusal reported per RFC 6750 §3: `error`, `status`, a description safe to show the caller."""

    error: ClassVar[str]
    status: ClassVar[int]

    def __init__(self, description: str) -> None:
        self.description = error_description(description)
        super().__init__(f"{self.error}: {self.description}")


class InvalidToken(BearerTokenError):
    """RFC 6750 §3.1 `invalid_token`: expired, revoked, malformed or otherwise invalid (401)."""

    error = "invalid_token"
    status = 401


class FeedStale(InvalidToken):
    """The revocation state could not be confirmed recently enough: every token is refused (fail closed)."""


class InsufficientScope(BearerTokenError):
    """RFC 6750 §3.1 `insufficient_scope`: a valid token without the scope this request needs (403)."""

    error = "insufficient_scope"
    status = 403

    def __init__(self, description: str, *, required: Scope) -> None:
        super().__init__(description)
        self.required = required


class DiscoveryFailed(Exception):
    """The issuer's RFC 8414 metadata could not be fetched or does not name this issuer."""


@dataclass(frozen=True, slots=True)
class VerifiedAccess:
    """What a verified access token grants: the user, the agent acting for them, the scope and the task."""

    subject: str
    agent: str
    scope: Scope
    task_id: str | None
    jti: str
    claims: Mapping[str, Any] = field(compare=False, default_factory=lambda: MappingProxyType({}))


class RevocationState:
    """Revoked jtis and task ids learned from the feed, the cursor reached, and when it was last confirmed."""

    def __init__(self) -> None:
        self.cursor = 0
        self.jtis: set[str] = set()
        self.task_ids: set[str] = set()
        self.confirmed_at = float("-inf")  # monotonic time at which the feed was known complete
        self.updated = asyncio.Event()  # set (and replaced) whenever events are applied

    def apply(self, events: Iterable[Any]) -> int:
        """Record feed events (`{"seq", "task_ids", "jtis", ...}`); returns how many were new."""
        applied = 0
        for event in events:
            if not isinstance(event, dict) or type(seq := event.get("seq")) is not int:
                raise ValueError("feed event without an integer seq")
            self.jtis.update(v for v in event.get("jtis") or () if isinstance(v, str))
            self.task_ids.update(v for v in event.get("task_ids") or () if isinstance(v, str))
            if seq > self.cursor:
                self.cursor = seq
                applied += 1
        if applied:
            self.updated.set()
            self.updated = asyncio.Event()
        return applied

    def confirm(self, at: float) -> None:
        self.confirmed_at = max(self.confirmed_at, at)


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
            resource's `clients`; called for every feed request, so rotation is picked up.
        max_feed_staleness: seconds the revocation state may go unconfirmed before every token is refused.
        leeway: seconds of clock skew allowed on `exp`, `nbf` and `iat` (at most 300).
        feed_uri: the paged feed; `<issuer>/revocations` unless given (the stream is `<feed_uri>/stream`).
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        client: httpx.AsyncClient,
        svid: Callable[[], str],
        max_feed_staleness: float = 5.0,
        leeway: int = 30,
        algorithms: frozenset[str] = ASYMMETRIC_ALGORITHMS,
        feed_uri: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= leeway <= MAX_LEEWAY_S:
            raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY_S} seconds")
        if max_feed_staleness <= 0:
            raise ValueError("max_feed_staleness must be positive")
        if not algorithms <= ASYMMETRIC_ALGORITHMS:
            raise ValueError("only asymmetric algorithms may be allowed (RFC 9068 section 2.1)")
        self.issuer = issuer
        self.audience = audience
        self.max_feed_staleness = max_feed_staleness
        self.revocations = RevocationState()
        self._client = client
        self._svid = svid
        self._leeway = leeway
        self._algorithms = algorithms
        self._feed_uri = feed_uri or issuer.rstrip("/") + "/revocations"
        self._clock = clock
        self._keys: RemoteKeys | None = None
        self._signatures = SignatureCache()
        self._tasks: list[asyncio.Task[None]] = []
        self._poll_lock = asyncio.Lock()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Discover `jwks_uri` (RFC 8414 §3), catch up with the feed once, then follow it in the background.

        Raises `DiscoveryFailed` if the metadata is unusable. An unreachable feed does not raise: the
        verifier simply refuses tokens until it has caught up.
        """
        url = self.issuer.partition("://")[0] + "://" + self.issuer.partition("://")[2].partition("/")[0]
        try:
            response = await self._client.get(url + well_known_path(self.issuer),
                                              headers={"Accept": "application/json"})
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise DiscoveryFailed(f"metadata of {self.issuer} unavailable: {exc}") from exc
        if not isinstance(document, dict) or document.get("issuer") != self.issuer:
            raise DiscoveryFailed("metadata issuer does not match (RFC 8414 section 3.3)")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise DiscoveryFailed("metadata has no usable jwks_uri")
        algorithms = self._algorithms
        self._keys = RemoteKeys(jwks_uri, client=self._client,
                                parse=lambda doc: parse_key_set(doc, allowed=algorithms))
        with contextlib.suppress(httpx.HTTPError, ValueError):
            await self.poll()
        self._tasks = [asyncio.create_task(self._follow_stream(), name="deputy-revocation-stream"),
                       asyncio.create_task(self._heartbeat(), name="deputy-revocation-heartbeat")]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def __aenter__(self) -> AccessTokenVerifier:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ verification

    async def verify(self, token: str, required_scope: str | Scope, *, now: int | None = None) -> VerifiedAccess:
        """RFC 9068 §4, then revocation, then scope. Raises `InvalidToken` (401) or `InsufficientScope` (403)."""
        now = int(time.time()) if now is None else now
        required = required_scope if isinstance(required_scope, Scope) else required_scope_of(required_scope)
        if self._keys is None:
            raise RuntimeError("AccessTokenVerifier.start() has not been awaited")
        try:
            claims = await self._verified_claims(token, now)
            access = VerifiedAccess(
                subject=string_claim(claims, "sub"),
                agent=string_claim(claims, "client_id"),
                scope=Scope.from_claim(claims["scope"]) if isinstance(claims.get("scope"), str) else Scope(frozenset()),
                task_id=claims["txn"] if isinstance(claims.get("txn"), str) else None,
                jti=string_claim(claims, "jti"),
                claims=MappingProxyType(dict(claims)),
            )
        except TokenError as exc:
            raise InvalidToken(str(exc)) from exc
        self._check_not_revoked(access)
        if not required <= access.scope:
            raise InsufficientScope(f"this request needs scope {required}", required=required)
        return access

    async def _verified_claims(self, token: str, now: int) -> Mapping[str, Any]:
        keys = self._keys
        assert keys is not None

        def choose(header: Mapping[str, Any], _: Mapping[str, Any]) -> tuple[KeySource, frozenset[str]]:
            self._check_typ(header)  # before any key lookup: a task token or ID token goes no further
            return keys, self._algorithms

        signed = await self._signatures.verified(token, now=now, choose=choose)
        self._check_typ(signed.header)
        claims = signed.claims
        if claims.get("iss") != self.issuer:  # RFC 9068 §4 item 3: exact match
            raise TokenError("iss is not the expected issuer")
        check_audience(claims, self.audience)  # §4 item 4
        self._check_time(claims, now)  # §4 item 6
        for name in ("sub", "client_id", "jti"):  # §2.2 REQUIRED
            string_claim(claims, name)
        return claims

    @staticmethod
    def _check_typ(header: Mapping[str, Any]) -> None:
        # RFC 9068 §4 item 1: reject any typ but at+jwt / application/at+jwt; media types are case-insensitive.
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in ACCESS_TOKEN_TYPES:
            raise TokenError("typ is not at+jwt: not an access token")

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
        state = self.revocations
        if self._clock() - state.confirmed_at > self.max_feed_staleness:
            raise FeedStale("revocation state unavailable; refusing all tokens")
        if access.jti in state.jtis or (access.task_id is not None and access.task_id in state.task_ids):
            raise InvalidToken("token has been revoked")

    # ------------------------------------------------------------------ the revocation feed

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._svid()}"}

    async def poll(self) -> None:
        """Page through `/revocations` from the cursor until caught up; then the state is confirmed as of
        the moment the last page was asked for. Raises httpx.HTTPError or ValueError."""
        async with self._poll_lock:
            while True:
                asked_at = self._clock()
                response = await self._client.get(self._feed_uri, headers=self._auth(),
                                                  params={"since": self.revocations.cursor, "limit": FEED_PAGE})
                response.raise_for_status()
                body = response.json()
                events = body.get("events") if isinstance(body, dict) else None
                if not isinstance(events, list):
                    raise ValueError("feed page has no events array")
                self.revocations.apply(events)
                if len(events) < FEED_PAGE:
                    self.revocations.confirm(asked_at)
                    return

    async def _heartbeat(self) -> None:
        """Confirm the state well within the staleness bound, whether or not the stream is up."""
        interval = min(max(self.max_feed_staleness / 4, 0.05), 5.0)
        while True:
            try:
                await self.poll()
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("revocation_feed.poll_failed", extra={"error": type(exc).__name__})
            await asyncio.sleep(interval)

    async def _follow_stream(self) -> None:
        """Follow `/revocations/stream` from the cursor; reconnect with exponential backoff."""
        backoff = BACKOFF_MIN_S
        timeout = httpx.Timeout(5.0, read=STREAM_READ_TIMEOUT_S)
        while True:
            try:
                headers = {**self._auth(), "Accept": "text/event-stream"}
                async with self._client.stream("GET", self._feed_uri + "/stream", headers=headers, timeout=timeout,
                                               params={"since": self.revocations.cursor}) as response:
                    response.raise_for_status()
                    backoff = BACKOFF_MIN_S
                    await self._read_events(response)
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("revocation_feed.stream_failed", extra={"error": type(exc).__name__})
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _read_events(self, response: httpx.Response) -> None:
        """Server-Sent Events (WHATWG HTML §9.2): `event: revocation` blocks with JSON `data`."""
        kind, data = "message", list[str]()
        async for line in response.aiter_lines():
            if line == "":
                if kind == "revocation" and data:
                    self.revocations.apply([json.loads("\n".join(data))])
                kind, data = "message", list[str]()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            elif line.startswith("event:"):
                kind = line[6:].strip()
