"""SSF 1.0 §8.1.1 stream configurations, pure: what a receiver may set on create (§8.1.1.1), update (PATCH,
§8.1.1.3) and replace (PUT, §8.1.1.4), what only the transmitter sets, and how a stream is shown."""

from __future__ import annotations

from typing import Any

import pytest

from delegation.ssf.config import (
    EVENTS_SUPPORTED,
    StreamRequest,
    check_transmitter_supplied,
    configuration,
    new_stream,
    updated,
)
from delegation.ssf.seams import StreamTimings
from delegation.store import POLL, PUSH, Stream
from token_exchange.errors import InvalidRequest
from token_exchange.ssf import CREDENTIAL_CHANGE, SESSION_REVOKED

ISSUER = "https://deputy.example.com"
MAIL, FILES = "https://mail.example.com", "https://files.example.com"
CLIENT = "spiffe://example.org/rs/mail"
TIMINGS = StreamTimings(poll_timeout=15, min_verification_interval=2, inactivity_timeout=600)
PUSH_DELIVERY = {"method": PUSH, "endpoint_url": "https://rs.example.com/events", "authorization_header": "Bearer x"}


def create(document: dict[str, Any], audiences: frozenset[str] = frozenset({MAIL})) -> Stream:
    return new_stream(StreamRequest.parse(document), client=CLIENT, audiences=audiences, now=100)


def shown(stream: Stream) -> dict[str, Any]:
    return configuration(stream, issuer=ISSUER, timings=TIMINGS)


def change(stream: Stream, document: dict[str, Any], *, replace_all: bool = False) -> Stream:
    return updated(stream, StreamRequest.parse(document), replace_all=replace_all, issuer=ISSUER, now=200)


def test_ssf_8_1_1_1_no_delivery_means_poll_at_an_endpoint_of_the_transmitter_unique_to_the_stream() -> None:
    stream = create({})
    config = shown(stream)
    assert config["delivery"] == {"method": POLL, "endpoint_url": f"{ISSUER}/ssf/poll/{stream.id}"}
    assert config["stream_id"] == stream.id and config["iss"] == ISSUER and config["aud"] == MAIL
    assert config["events_supported"] == config["events_delivered"] == list(EVENTS_SUPPORTED)
    assert (config["min_verification_interval"], config["inactivity_timeout"]) == (2, 600)
    assert (stream.cursor, stream.status, stream.touched_at) == (0, "enabled", 100)  # the backlog: the whole feed
    assert create({}).id != stream.id


def test_ssf_8_1_1_aud_is_an_array_when_the_receiver_has_several_resources() -> None:
    assert shown(create({}, frozenset({MAIL, FILES})))["aud"] == [FILES, MAIL]


def test_ssf_6_1_1_push_delivery_keeps_the_receivers_endpoint_and_header_but_never_shows_the_header() -> None:
    stream = create({"delivery": PUSH_DELIVERY, "description": "mail RS"})
    assert (stream.delivery, stream.endpoint_url, stream.authorization_header) == (
        PUSH, "https://rs.example.com/events", "Bearer x")
    config = shown(stream)
    assert config["delivery"] == {"method": PUSH, "endpoint_url": "https://rs.example.com/events"}
    assert config["description"] == "mail RS"


def test_ssf_8_1_1_events_delivered_is_supported_and_requested_and_unknown_types_are_ignored() -> None:
    stream = create({"events_requested": [CREDENTIAL_CHANGE, "https://example.com/unknown-event"]})
    assert stream.events_delivered == (CREDENTIAL_CHANGE,)
    assert shown(stream)["events_requested"] == [CREDENTIAL_CHANGE, "https://example.com/unknown-event"]


def test_ssf_8_1_1_an_empty_events_requested_delivers_no_subject_events() -> None:
    stream = create({"events_requested": []})
    assert stream.events_delivered == () and shown(stream)["events_delivered"] == []


@pytest.mark.parametrize(("document", "names"), [
    ({"delivery": "poll"}, "delivery"),
    ({"delivery": {}}, "delivery.method"),
    ({"delivery": {"method": "urn:example:carrier-pigeon"}}, "delivery.method"),
    ({"delivery": {"method": PUSH}}, "endpoint_url"),
    ({"delivery": {"method": PUSH, "endpoint_url": "http://rs.example.com/events"}}, "https"),
    ({"delivery": {"method": PUSH, "endpoint_url": "https://user:pw@rs.example.com/e"}}, "credentials"),
    ({"delivery": {"method": PUSH, "endpoint_url": "https://rs.example.com/e#f"}}, "fragment"),
    ({"delivery": {"method": PUSH, "endpoint_url": "ftp://rs.example.com/e"}}, "https"),
    ({"delivery": {"method": PUSH, "endpoint_url": "https://[::1/e"}}, "endpoint_url"),
    ({"delivery": {"method": PUSH, "endpoint_url": 7}}, "endpoint_url"),
    ({"delivery": {**PUSH_DELIVERY, "authorization_header": "Bearer x\r\nX-Injected: 1"}}, "authorization_header"),
    ({"delivery": {**PUSH_DELIVERY, "authorization_header": ""}}, "authorization_header"),
    ({"delivery": {"method": POLL, "authorization_header": "Bearer x"}}, "authorization_header"),
    ({"delivery": {"method": POLL, "endpoint_url": "https://rs.example.com/mine"}}, "endpoint_url"),
    ({"events_requested": SESSION_REVOKED}, "events_requested"),
    ({"events_requested": [7]}, "events_requested"),
    ({"events_requested": ["x"] * 33}, "events_requested"),
    ({"description": 7}, "description"),
    ({"description": "x" * 1025}, "description"),
])
def test_ssf_8_1_1_1_a_malformed_receiver_member_is_refused(document: dict[str, Any], names: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        create(document)
    assert names in refused.value.description


def test_rfc8935_plain_http_push_is_allowed_on_loopback_only() -> None:
    assert create({"delivery": {"method": PUSH, "endpoint_url": "http://127.0.0.1:9000/e"}}).delivery == PUSH


@pytest.mark.parametrize(("name", "value"), [
    ("stream_id", "mine"), ("iss", "https://other.example.com"), ("aud", "https://other.example.com"),
    ("aud", [MAIL, FILES]), ("events_supported", []), ("events_delivered", [SESSION_REVOKED]),
    ("min_verification_interval", 0), ("inactivity_timeout", "600"),
])
def test_ssf_8_1_1_3_transmitter_supplied_members_sent_must_match(name: str, value: Any) -> None:
    config = shown(create({}))
    with pytest.raises(InvalidRequest) as refused:
        check_transmitter_supplied({name: value}, config)
    assert name in refused.value.description


def test_ssf_8_1_1_3_matching_transmitter_supplied_members_are_accepted_in_any_order_or_form() -> None:
    config = shown(create({}, frozenset({MAIL, FILES})))
    check_transmitter_supplied({**config, "aud": [MAIL, FILES], "events_supported": list(reversed(EVENTS_SUPPORTED))},
                               config)
    single = shown(create({}))
    check_transmitter_supplied({"aud": [MAIL]}, single)


def test_ssf_8_1_1_3_patch_changes_what_is_sent_and_keeps_the_rest() -> None:
    stream = create({"events_requested": [SESSION_REVOKED], "description": "first"})
    patched = change(stream, {"stream_id": stream.id, "description": "second"})
    assert (patched.description, patched.events_delivered, patched.delivery) == ("second", (SESSION_REVOKED,), POLL)
    assert (patched.id, patched.cursor, patched.created_at, patched.touched_at) == (stream.id, 0, 100, 200)
    pushed = change(patched, {"stream_id": stream.id, "delivery": PUSH_DELIVERY})
    assert (pushed.delivery, pushed.description) == (PUSH, "second")


def test_ssf_8_1_1_3_a_poll_stream_may_name_its_own_endpoint() -> None:
    stream = create({})
    same = change(stream, {"delivery": {"method": POLL, "endpoint_url": f"{ISSUER}/ssf/poll/{stream.id}"}})
    assert same.delivery == POLL
    with pytest.raises(InvalidRequest, match="endpoint_url"):
        change(stream, {"delivery": {"method": POLL, "endpoint_url": f"{ISSUER}/ssf/poll/another"}})


def test_ssf_8_1_1_4_put_deletes_every_receiver_member_it_does_not_send() -> None:
    stream = create({"events_requested": [SESSION_REVOKED], "description": "first", "delivery": PUSH_DELIVERY})
    replaced = change(stream, {"stream_id": stream.id}, replace_all=True)
    assert (replaced.delivery, replaced.endpoint_url, replaced.authorization_header) == (POLL, None, None)
    assert (replaced.description, replaced.events_requested, replaced.events_delivered) == (None, (), EVENTS_SUPPORTED)
