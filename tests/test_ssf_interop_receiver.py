"""The spec-only receiver of the interoperability test (tests/ssf_interop_receiver.py) is no rubber stamp:
it refuses the SETs SSF 1.0 §4 and the CAEP interoperability profile forbid, signed with joserfc here."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from joserfc import jws
from joserfc.jwk import KeySet, OctKey, RSAKey

from tests.ssf_interop_receiver import InteropError, InteropReceiver, well_known_url

ISSUER, AUD = "https://tr.example.com", "https://rs.example.com"
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1", "alg": "RS256"})
EVENT = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"


@pytest.fixture
def receiver() -> InteropReceiver:
    interop = InteropReceiver(ISSUER, bearer=lambda: "unused", http=httpx2.Client())
    interop.stream = {"aud": AUD}
    interop.keys = KeySet.import_key_set({"keys": [KEY.as_dict(private=False)]})
    return interop


def claims(**overrides: Any) -> dict[str, Any]:
    body = {"iss": ISSUER, "aud": AUD, "iat": int(time.time()), "jti": "j1", "txn": "t",
            "sub_id": {"format": "opaque", "id": "task-1"}, "events": {EVENT: {}}}
    return {k: v for k, v in {**body, **overrides}.items() if v is not None}


def signed(body: dict[str, Any], key: Any = KEY, **header: Any) -> str:
    full = {"alg": "RS256", "typ": "secevent+jwt", "kid": "k1", **header}
    return jws.serialize_compact({k: v for k, v in full.items() if v is not None}, json.dumps(body), key,
                                 algorithms=[full["alg"]])


def test_a_good_set_is_decoded(receiver: InteropReceiver) -> None:
    assert receiver.decode("j1", signed(claims())).event_type == EVENT


BAD: list[tuple[str, Callable[[], str]]] = [
    ("sub", lambda: signed(claims(sub="alice"))),
    ("exp", lambda: signed(claims(exp=2_000_000_000))),
    ("typ_jwt", lambda: signed(claims(), typ="JWT")),
    ("hs256", lambda: signed(claims(), OctKey.generate_key(256), alg="HS256")),
    ("key_not_in_jwks", lambda: signed(claims(), RSAKey.generate_key(2048))),
    ("other_aud", lambda: signed(claims(aud="https://other.example.com"))),
    ("other_iss", lambda: signed(claims(iss=ISSUER + "/"))),
    ("two_events", lambda: signed(claims(events={EVENT: {}, EVENT + "2": {}}))),
    ("sub_id_extra_member", lambda: signed(claims(sub_id={"format": "opaque", "id": "x", "name": "y"}))),
    ("jti_not_the_key", lambda: signed(claims(jti="j2"))),
]


@pytest.mark.parametrize("token", [b[1] for b in BAD], ids=[b[0] for b in BAD])
def test_ssf_4_forbidden_sets_are_refused(receiver: InteropReceiver, token: Callable[[], str]) -> None:
    with pytest.raises(InteropError):
        receiver.decode("j1", token())


def test_ssf_7_2_well_known_is_inserted_before_the_issuers_path() -> None:
    assert well_known_url("https://tr.example.com/issuer1/") == "https://tr.example.com/.well-known/ssf-configuration/issuer1"
    assert well_known_url("https://tr.example.com") == "https://tr.example.com/.well-known/ssf-configuration"
