"""SSF 1.0 §8.1.1 stream configurations: what a receiver may set (`StreamRequest`), what the transmitter sets,
and the configuration document a stream is shown as."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from token_exchange.errors import InvalidRequest
from token_exchange.json_bodies import optional_string
from token_exchange.oidc_discovery import is_loopback
from token_exchange.rfc9068 import new_id
from token_exchange.ssf import CREDENTIAL_CHANGE, SESSION_REVOKED, endpoint

from ..store import ENABLED, POLL, PUSH, Stream
from .seams import StreamTimings

EVENTS_SUPPORTED = (SESSION_REVOKED, CREDENTIAL_CHANGE)
TRANSMITTER_SUPPLIED = ("stream_id", "iss", "aud", "events_supported", "events_delivered",
                        "min_verification_interval", "inactivity_timeout")
RECEIVER_SUPPLIED = ("delivery", "events_requested", "description")
MAX_URL, MAX_HEADER, MAX_DESCRIPTION, MAX_EVENTS, MAX_EVENT_URI = 2048, 4096, 1024, 32, 512


@dataclass(frozen=True, slots=True)
class Delivery:
    """SSF §6.1: poll from Deputy's endpoint, or push to the receiver's `endpoint_url` with its header."""

    method: str
    endpoint_url: str | None = None
    authorization_header: str | None = None

    @classmethod
    def parse(cls, value: Any) -> Delivery:
        """§8.1.1.1: no `delivery` means poll; a poll stream's `endpoint_url` is the transmitter's to choose."""
        if not isinstance(value, dict):
            raise InvalidRequest("delivery must be an object with a method")
        method = value.get("method")
        if method == POLL:
            if "authorization_header" in value:
                raise InvalidRequest("delivery.authorization_header is for push delivery only")
            return cls(POLL, optional_string(value, "endpoint_url", limit=MAX_URL))
        if method != PUSH:
            raise InvalidRequest(f"delivery.method must be {PUSH} (push) or {POLL} (poll)")
        url = _push_url(value.get("endpoint_url"))
        header = value.get("authorization_header")
        if header is not None and (not isinstance(header, str) or not 0 < len(header) <= MAX_HEADER
                                   or not all(" " <= c <= "~" for c in header)):
            raise InvalidRequest(f"delivery.authorization_header must be 1 to {MAX_HEADER} visible ASCII characters")
        return cls(PUSH, url, header)


def _push_url(value: Any) -> str:
    """RFC 8935 §2: an https URL (plain http on loopback only, for development), no credentials or fragment."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_URL or not value.isascii() or not value.isprintable():
        raise InvalidRequest(f"delivery.endpoint_url is required for push: an https URL of at most {MAX_URL} chars")
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError as exc:
        raise InvalidRequest("delivery.endpoint_url is not a URL") from exc
    if parts.scheme not in ("https", "http") or not host or parts.fragment or "@" in parts.netloc:
        raise InvalidRequest("delivery.endpoint_url must be an https URL without credentials or fragment")
    if parts.scheme == "http" and not is_loopback(host):
        raise InvalidRequest("delivery.endpoint_url must use https (plain http is allowed on loopback only)")
    return value


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """The receiver-supplied members a request sent (§8.1.1): `sent` names them, the others are defaults."""

    delivery: Delivery
    events_requested: tuple[str, ...] | None  # None: not sent (every supported event)
    description: str | None
    sent: frozenset[str]

    @classmethod
    def parse(cls, document: Mapping[str, Any]) -> StreamRequest:
        delivery = Delivery.parse(document["delivery"]) if "delivery" in document else Delivery(POLL)
        return cls(delivery, _events_requested(document), optional_string(document, "description",
                                                                           limit=MAX_DESCRIPTION),
                   frozenset(name for name in RECEIVER_SUPPLIED if name in document))


def _events_requested(document: Mapping[str, Any]) -> tuple[str, ...] | None:
    """Unknown event types MUST be ignored (§8.1.1): they stay requested, and are never delivered."""
    if "events_requested" not in document:
        return None
    value = document["events_requested"]
    if not isinstance(value, list) or len(value) > MAX_EVENTS or not all(
            isinstance(e, str) and 0 < len(e) <= MAX_EVENT_URI for e in value):
        raise InvalidRequest(f"events_requested must be an array of at most {MAX_EVENTS} event type URIs")
    return tuple(dict.fromkeys(value))


def delivered(requested: Sequence[str] | None) -> tuple[str, ...]:
    """§8.1.1: `events_delivered` = supported ∩ requested; not requested at all: every supported event."""
    return EVENTS_SUPPORTED if requested is None else tuple(e for e in EVENTS_SUPPORTED if e in requested)


def new_stream(request: StreamRequest, *, client: str, audiences: frozenset[str], now: int) -> Stream:
    """A stream of `client` about `audiences` (its resources'), enabled, its backlog the whole feed (cursor 0)."""
    stream = Stream(new_id(), client, tuple(sorted(audiences)), POLL, None, None, (), EVENTS_SUPPORTED, None,
                    ENABLED, None, 0, now, now)
    return _apply(stream, request, sent=frozenset(RECEIVER_SUPPLIED), now=now, poll_url=None)


def updated(stream: Stream, request: StreamRequest, *, replace_all: bool, issuer: str, now: int) -> Stream:
    """§8.1.1.3 PATCH: the members sent replace theirs, the rest stay; §8.1.1.4 PUT: the rest go to defaults."""
    poll_url = poll_endpoint(issuer, stream.id) if stream.delivery == POLL else None
    return _apply(stream, request, sent=frozenset(RECEIVER_SUPPLIED) if replace_all else request.sent, now=now,
                  poll_url=poll_url)


def _apply(stream: Stream, request: StreamRequest, *, sent: frozenset[str], now: int, poll_url: str | None) -> Stream:
    """`poll_url`: the stream's poll endpoint, the one a poll `delivery` may name (None: it may name none)."""
    if "delivery" in sent:
        if request.delivery.method == POLL and request.delivery.endpoint_url not in (None, poll_url):
            raise InvalidRequest("delivery.endpoint_url of a poll stream is the transmitter's and cannot be chosen")
        stream = replace(stream, delivery=request.delivery.method,
                         endpoint_url=request.delivery.endpoint_url if request.delivery.method == PUSH else None,
                         authorization_header=request.delivery.authorization_header)
    if "events_requested" in sent:
        stream = replace(stream, events_requested=request.events_requested or (),
                         events_delivered=delivered(request.events_requested))
    if "description" in sent:
        stream = replace(stream, description=request.description)
    return replace(stream, touched_at=now)


def poll_endpoint(issuer: str, stream_id: str) -> str:
    """§6.1.2: the poll endpoint, Deputy's, unique to the stream."""
    return endpoint(issuer, "/ssf/poll/" + stream_id)


def configuration(stream: Stream, *, issuer: str, timings: StreamTimings) -> dict[str, Any]:
    """§8.1.1: the stream as its receiver reads it. A push stream's `authorization_header` is never shown:
    it is the receiver's secret, to be sent again with any change of `delivery`."""
    url = stream.endpoint_url if stream.delivery == PUSH else poll_endpoint(issuer, stream.id)
    document: dict[str, Any] = {
        "stream_id": stream.id, "iss": issuer,
        "aud": stream.audiences[0] if len(stream.audiences) == 1 else list(stream.audiences),
        "delivery": {"method": stream.delivery, "endpoint_url": url},
        "events_supported": list(EVENTS_SUPPORTED), "events_delivered": list(stream.events_delivered),
        "min_verification_interval": timings.min_verification_interval,
        "inactivity_timeout": timings.inactivity_timeout,
    }
    if stream.events_requested:
        document["events_requested"] = list(stream.events_requested)
    if stream.description is not None:
        document["description"] = stream.description
    return document


def check_transmitter_supplied(document: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    """§8.1.1.3: transmitter-supplied members a receiver sends MUST match; `aud` is never updatable."""
    for name in TRANSMITTER_SUPPLIED:
        if name in document and not _same(document[name], config[name]):
            if name == "aud":
                raise InvalidRequest("aud cannot be changed: it is the audiences of the receiver's resources")
            raise InvalidRequest(f"{name} is supplied by the transmitter; send it unchanged or not at all")


def _same(sent: Any, value: Any) -> bool:
    """Equal, with arrays of strings compared as sets and a lone string as an array of one (`aud`)."""
    def as_set(item: Any) -> frozenset[str] | None:
        if isinstance(item, str):
            return frozenset([item])
        return frozenset(item) if isinstance(item, list) and all(isinstance(i, str) for i in item) else None

    if isinstance(value, str | list):
        return as_set(sent) is not None and as_set(sent) == as_set(value)
    return type(sent) is type(value) and bool(sent == value)
