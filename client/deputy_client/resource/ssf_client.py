"""The receiver's side of SSF 1.0 over HTTP: transmitter metadata (§7), a poll stream's management (§8.1)
and the polls themselves (RFC 8936 §2).

Every request but the metadata's carries the receiver's JWT-SVID as a Bearer token, so every endpoint the
metadata or the stream configuration names must be at the issuer's own origin: an address elsewhere
would be handed a credential the gateway accepts. URLs are https (plain http on loopback only).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2

from token_exchange.errors import shown
from token_exchange.oidc_discovery import is_loopback

from .errors import DiscoveryFailed

WELL_KNOWN = "/.well-known/ssf-configuration"
POLL = "urn:ietf:rfc:8936"
MAX_EVENTS = 500
LONG_POLL_READ_S = 60.0  # the transmitter holds a long poll for its poll_timeout (Deputy: 15 s)
REQUEST_TIMEOUT = httpx2.Timeout(5.0)


class TransmitterError(Exception):
    """A management call or poll failed (network, status, or an answer that does not follow SSF)."""


class StreamGone(TransmitterError):
    """The transmitter no longer knows the stream (404)."""


class TooSoon(TransmitterError):
    """A verification request came before the stream's `min_verification_interval` (429, SSF §8.1.4.2)."""


def configuration_url(issuer: str) -> str:
    """SSF §7.2: `/.well-known/ssf-configuration` inserted between the host and the issuer's path (whose
    trailing `/` is removed first)."""
    parts = urlsplit(issuer)
    return f"{parts.scheme}://{parts.netloc}{WELL_KNOWN}{parts.path.rstrip('/')}"


def _url(value: Any, name: str, *, origin: str | None) -> str:
    """An https URL (http on loopback), at `origin` when one is given; raises ValueError naming `name`."""
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or not parts.hostname or parts.fragment or parts.scheme not in ("https", "http"):
        raise ValueError(f"{name} is not an absolute https URL")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(f"{name} must use https (plain http on loopback only; SSF section 7.1)")
    if origin is not None and f"{parts.scheme}://{parts.netloc}" != origin:
        raise ValueError(f"{name} is not at the issuer's origin, and would be sent the receiver's credential")
    return str(value)


@dataclass(frozen=True, slots=True)
class TransmitterMetadata:
    """The members of SSF §7.1 this receiver uses."""

    issuer: str
    jwks_uri: str
    configuration_endpoint: str
    status_endpoint: str
    verification_endpoint: str
    critical_subject_members: frozenset[str]

    @classmethod
    def parse(cls, document: Any, *, issuer: str) -> TransmitterMetadata:
        """SSF §7.2.4: `issuer` identical to the one asked for, else the data MUST NOT be used."""
        if not isinstance(document, dict):
            raise DiscoveryFailed("the SSF configuration is not a JSON object")
        if document.get("issuer") != issuer:
            raise DiscoveryFailed(f"the SSF configuration's issuer {shown(document.get('issuer'), 200)} is not "
                                  f"{issuer} (SSF section 7.2.4)")
        parts = urlsplit(issuer)
        origin = f"{parts.scheme}://{parts.netloc}"
        critical = document.get("critical_subject_members", [])
        try:
            _url(issuer, "issuer", origin=None)
            endpoints = {name: _url(document.get(name), name, origin=origin) for name in
                         ("configuration_endpoint", "status_endpoint", "verification_endpoint")}
            jwks_uri = _url(document.get("jwks_uri"), "jwks_uri", origin=None)
            if not isinstance(critical, list) or not all(isinstance(m, str) for m in critical):
                raise ValueError("critical_subject_members is not an array of strings")
        except ValueError as exc:
            raise DiscoveryFailed(f"the SSF configuration of {issuer} is unusable: {exc}") from exc
        return cls(issuer, jwks_uri, critical_subject_members=frozenset(critical), **endpoints)


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """A poll stream as the transmitter created it (SSF §8.1.1)."""

    stream_id: str
    poll_url: str
    audience: frozenset[str]
    min_verification_interval: float

    @classmethod
    def parse(cls, document: Any, *, issuer: str, audience: str) -> StreamConfig:
        """SSF §8.1.1.1: the receiver MUST check `iss`, SHOULD check `aud`; poll delivery (RFC 8936)."""
        if not isinstance(document, dict) or not isinstance(stream_id := document.get("stream_id"), str):
            raise TransmitterError("the stream configuration has no stream_id")
        if document.get("iss") != issuer:
            raise TransmitterError("the stream configuration's iss is not the issuer (SSF section 8.1.1.1)")
        aud = document.get("aud")
        values = [aud] if isinstance(aud, str) else aud
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values) or audience not in values:
            raise TransmitterError(f"the stream's aud does not name {audience} (SSF section 8.1.1.1.1)")
        delivery = document.get("delivery")
        if not isinstance(delivery, dict) or delivery.get("method") != POLL:
            raise TransmitterError("the stream is not delivered by poll (RFC 8936)")
        parts = urlsplit(issuer)
        try:
            poll_url = _url(delivery.get("endpoint_url"), "endpoint_url", origin=f"{parts.scheme}://{parts.netloc}")
        except ValueError as exc:
            raise TransmitterError(str(exc)) from exc
        interval = document.get("min_verification_interval", 0)
        interval = interval if type(interval) is int and interval >= 0 else 0
        return cls(stream_id, poll_url, frozenset(values), float(interval))


@dataclass(frozen=True, slots=True)
class PollAnswer:
    """RFC 8936 §2.3: SETs by jti, and whether more are waiting (absent: false)."""

    sets: Mapping[str, Any]
    more_available: bool


async def discover(client: httpx2.AsyncClient, issuer: str) -> TransmitterMetadata:
    """Fetch and check the transmitter metadata; raises DiscoveryFailed."""
    try:
        response = await client.get(configuration_url(issuer), headers={"Accept": "application/json"},
                                    timeout=REQUEST_TIMEOUT)
        response.raise_for_status()
        document = response.json()
    except (httpx2.HTTPError, ValueError) as exc:
        raise DiscoveryFailed(f"SSF configuration of {issuer} unavailable: {exc}") from exc
    return TransmitterMetadata.parse(document, issuer=issuer)


class SsfClient:
    """The stream management API and the poll endpoint, as one receiver (its JWT-SVID from `svid`)."""

    def __init__(self, metadata: TransmitterMetadata, *, client: httpx2.AsyncClient, svid: Callable[[], str]) -> None:
        self.metadata = metadata
        self._client = client
        self._svid = svid

    async def create(self, audience: str) -> StreamConfig:
        """SSF §8.1.1.1: no `delivery` asks for poll; 201 with the configuration."""
        body = await self._call("POST", self.metadata.configuration_endpoint, {}, expect=201)
        return StreamConfig.parse(body, issuer=self.metadata.issuer, audience=audience)

    async def delete(self, stream_id: str) -> None:
        await self._call("DELETE", self.metadata.configuration_endpoint, None, expect=204,
                         params={"stream_id": stream_id})

    async def status(self, stream_id: str) -> tuple[str, str | None]:
        """SSF §8.1.2.1: the stream's `status`, and its `reason` if given."""
        body = await self._call("GET", self.metadata.status_endpoint, None, expect=200, params={"stream_id": stream_id})
        if not isinstance(body, dict) or body.get("stream_id") != stream_id or not isinstance(body.get("status"), str):
            raise TransmitterError("the stream status answer does not follow SSF section 8.1.2.1")
        reason = body.get("reason")
        return body["status"], reason if isinstance(reason, str) else None

    async def verify(self, stream_id: str, state: str) -> None:
        """SSF §8.1.4.2: ask for a verification event carrying `state`; 204. Raises TooSoon on 429."""
        await self._call("POST", self.metadata.verification_endpoint, {"stream_id": stream_id, "state": state},
                         expect=204)

    async def poll(self, stream: StreamConfig, *, ack: list[str], errors: Mapping[str, Mapping[str, str]],
                   immediate: bool, max_events: int | None = None) -> PollAnswer:
        """RFC 8936 §2.2: acknowledge `ack`, report `errors` (`setErrs`), and ask for up to `max_events` SETs
        (MAX_EVENTS unless given), held by the transmitter until one comes unless `immediate`."""
        request: dict[str, Any] = {"maxEvents": MAX_EVENTS if max_events is None else max_events,
                                   "returnImmediately": immediate, "ack": ack}
        if errors:
            request["setErrs"] = errors
        timeout = REQUEST_TIMEOUT if immediate else httpx2.Timeout(5.0, read=LONG_POLL_READ_S)
        body = await self._call("POST", stream.poll_url, request, expect=200, timeout=timeout,
                                language=bool(errors))
        sets = body.get("sets") if isinstance(body, dict) else None
        more = body.get("moreAvailable", False) if isinstance(body, dict) else None
        if not isinstance(sets, dict) or not isinstance(more, bool):
            raise TransmitterError("the poll answer does not follow RFC 8936 section 2.3")
        return PollAnswer(sets, more)

    async def _call(self, method: str, url: str, body: Any, *, expect: int, params: Mapping[str, str] | None = None,
                    timeout: httpx2.Timeout = REQUEST_TIMEOUT, language: bool = False) -> Any:
        headers = {"Authorization": f"Bearer {self._svid()}", "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if language:  # RFC 8936 §2.6: setErrs descriptions are in English
            headers["Content-Language"] = "en"
        try:
            response = await self._client.request(method, url, headers=headers, params=params, timeout=timeout,
                                                  content=None if body is None else json.dumps(body).encode())
        except httpx2.HTTPError as exc:
            raise TransmitterError(f"{method} {url}: {type(exc).__name__}") from exc
        if response.status_code == 404:
            raise StreamGone(f"{method} {url}: 404")
        if response.status_code == 429:
            raise TooSoon(f"{method} {url}: 429")
        if response.status_code != expect:
            raise TransmitterError(f"{method} {url}: HTTP {response.status_code}")
        try:
            return response.json() if response.content else None
        except ValueError as exc:
            raise TransmitterError(f"{method} {url}: the answer is not JSON") from exc
