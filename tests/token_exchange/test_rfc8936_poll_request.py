"""RFC 8936 §2.2-§2.4 poll requests, pure: `json_object` (the body) then `PollRequest.parse`.

Known members of the wrong type are refused with `invalid_request` naming the member (§2.5.1); unknown
members are ignored."""

from __future__ import annotations

from typing import Any

import pytest

from token_exchange.errors import InvalidRequest
from token_exchange.json_bodies import json_object
from token_exchange.rfc8936 import MAX_ACKS, PollRequest, SetError, response


def parsed(body: bytes) -> PollRequest:
    return PollRequest.parse(json_object(body))


def test_rfc8936_2_2_an_empty_request_is_a_long_poll_without_limit() -> None:
    assert parsed(b"{}") == PollRequest(max_events=None, return_immediately=False, ack=())


def test_rfc8936_2_2_every_member_is_read() -> None:
    request = parsed(b'{"maxEvents": 0, "returnImmediately": true, "ack": ["a", "b"],'
                     b' "setErrs": {"c": {"err": "invalid_key", "description": "no such kid"}}, "future": 1}')
    assert (request.max_events, request.return_immediately, request.ack) == (0, True, ("a", "b"))
    assert dict(request.set_errs) == {"c": SetError("invalid_key", "no such kid")}


def test_rfc8936_2_4_3_a_set_error_may_come_without_description() -> None:
    assert parsed(b'{"setErrs": {"c": {"err": "invalid_request"}}}').set_errs["c"] == SetError("invalid_request", "")


@pytest.mark.parametrize(("body", "names"), [
    (b'{"maxEvents": -1}', "maxEvents"),
    (b'{"maxEvents": "5"}', "maxEvents"),
    (b'{"maxEvents": 1.5}', "maxEvents"),
    (b'{"maxEvents": true}', "maxEvents"),
    (b'{"maxEvents": null}', "maxEvents"),
    (b'{"returnImmediately": "true"}', "returnImmediately"),
    (b'{"returnImmediately": 1}', "returnImmediately"),
    (b'{"returnImmediately": null}', "returnImmediately"),
    (b'{"ack": "a"}', "ack"),
    (b'{"ack": [1]}', "ack"),
    (b'{"ack": [""]}', "ack"),
    (b'{"ack": [null]}', "ack"),
    (b'{"ack": {"a": 1}}', "ack"),
    (b'{"setErrs": ["a"]}', "setErrs"),
    (b'{"setErrs": {"a": "invalid_key"}}', "setErrs"),
    (b'{"setErrs": {"a": {"description": "no err"}}}', "setErrs"),
    (b'{"setErrs": {"a": {"err": 7}}}', "setErrs"),
    (b'{"setErrs": {"a": {"err": "x", "description": 7}}}', "setErrs"),
    (b'{"setErrs": {"": {"err": "x"}}}', "setErrs"),
])
def test_rfc8936_2_5_1_malformed_members_are_invalid_requests(body: bytes, names: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parsed(body)
    assert refused.value.error == "invalid_request" and refused.value.status == 400
    assert names in refused.value.description


def test_rfc8936_2_2_too_many_acknowledgements_at_once_are_refused() -> None:
    acks = ",".join(f'"j{i}"' for i in range(MAX_ACKS + 1))
    with pytest.raises(InvalidRequest, match="ack"):
        parsed(f'{{"ack": [{acks}]}}'.encode())


@pytest.mark.parametrize(("body", "why"), [
    (b"", "not valid JSON"),
    (b"[]", "JSON object"),
    (b'"poll"', "JSON object"),
    (b"null", "JSON object"),
    (b"{", "not valid JSON"),
    (b'{"maxEvents": NaN}', "not valid JSON"),
    (b'{"maxEvents": Infinity}', "not valid JSON"),
    (b'{"ack": [], "ack": ["a"]}', "repeated"),
    (b"\xff\xfe{}", "UTF-8"),
    (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply"),
    (b'{"maxEvents": 1' + b"0" * 5000 + b"}", "not valid JSON"),
])
def test_rfc8259_a_body_that_is_not_one_json_object_is_an_invalid_request(body: bytes, why: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        json_object(body)
    assert why in refused.value.description


def test_rfc8936_2_3_the_response_names_each_set_by_its_jti() -> None:
    body: dict[str, Any] = response({"j1": "a.b.c"}, more_available=True)
    assert body == {"sets": {"j1": "a.b.c"}, "moreAvailable": True}
    assert response({}, more_available=False) == {"sets": {}, "moreAvailable": False}
