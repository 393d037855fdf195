"""SET validation as SSF 1.0 profiles RFC 8417, on real RS256 SETs checked against a key set served on
loopback (`deputy_client.resource.sets.SetValidator`): each refusal carries the RFC 8935 §2.4 code a receiver
reports in RFC 8936 `setErrs`."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx2
import pytest
from cryptography.hazmat.primitives import serialization

from deputy_client.resource.sets import ReceivedSet, SetKeys, SetRejected, SetUnverifiable, SetValidator
from tests.client.ssf_support import (
    AUDIENCE,
    CAEP,
    CREDENTIAL_CHANGE,
    ISSUER,
    SESSION_REVOKED,
    SetSigner,
    rsa_key,
    session_subject,
)
from tests.support import JwksServer, b64url, compact

SIGNER = SetSigner()
STRANGER = rsa_key()  # a key the transmitter never published
WEAK = rsa_key(1024)


@pytest.fixture(scope="module")
def server() -> Iterator[JwksServer]:
    running = JwksServer()
    running.documents["/ssf/jwks.json"] = SIGNER.jwks(WEAK)
    yield running
    running.close()


@pytest.fixture
async def validator(server: JwksServer) -> AsyncIterator[SetValidator]:
    async with httpx2.AsyncClient(timeout=5) as client:
        keys = SetKeys(server.url + "/ssf/jwks.json", client=client)
        yield SetValidator(issuer=ISSUER, audience=frozenset({AUDIENCE}), keys=keys)


async def test_rfc8417_2_a_transmitters_set_validates_with_its_one_event(validator: SetValidator) -> None:
    jti, token = SIGNER.set(txn="cause-1")
    received = await validator.validate(token, jti=jti)
    assert received == ReceivedSet(jti=jti, iat=received.iat, txn="cause-1", event_type=SESSION_REVOKED,
                                   event=received.event, subject=session_subject("task-1"))
    assert received.event["reason_admin"] == {"en": "task completed"}


async def test_ssf_4_2_3_unknown_fields_and_event_types_pass_validation(validator: SetValidator) -> None:
    claims = SIGNER.claims(event_type="https://example.com/event/unknown", event={"anything": [1, {"x": None}]},
                           extra_claim={"nested": True})
    received = await validator.validate(SIGNER.sign(claims, header={"x-vendor": 1}), jti=claims["jti"])
    assert received.event_type == "https://example.com/event/unknown"


async def test_ssf_8_1_1_an_array_aud_must_be_the_streams_audiences(server: JwksServer) -> None:
    signer = SetSigner(key=SIGNER.key, audience=[AUDIENCE, "https://docs.example.com"])
    async with httpx2.AsyncClient(timeout=5) as client:
        keys = SetKeys(server.url + "/ssf/jwks.json", client=client)
        both = SetValidator(issuer=ISSUER, audience=frozenset({"https://docs.example.com", AUDIENCE}), keys=keys)
        jti, token = signer.set()
        assert (await both.validate(token, jti=jti)).jti == jti
        only_mail = SetValidator(issuer=ISSUER, audience=frozenset({AUDIENCE}), keys=keys)
        with pytest.raises(SetRejected) as caught:
            await only_mail.validate(token, jti=jti)
        assert caught.value.err == "invalid_audience"


def _hs256_with_public_key(claims: dict[str, Any]) -> str:
    secret = SIGNER.key.private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return compact({"alg": "HS256", "typ": "secevent+jwt", "kid": SIGNER.key.kid}, claims,
                   lambda message: hmac.new(secret, message, hashlib.sha256).digest())


def _other_signature(claims: dict[str, Any]) -> str:
    """Signed by a stranger's key under the transmitter's kid."""
    return SIGNER.sign(claims, header={"kid": SIGNER.key.kid}, key=STRANGER)


def _claims(**overrides: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda claims: {**claims, **overrides}


def _event(event_type: str, event: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda claims: {**claims, "events": {event_type: event}}


def _sub_id(sub_id: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda claims: {**claims, "sub_id": sub_id}


Sign = Callable[[dict[str, Any]], str]
SIGNED: Sign = SIGNER.sign
SIGNATURES: list[tuple[str, Sign, str, str]] = [
    ("typ_missing", lambda c: SIGNER.sign(c, header={"typ": None}), "invalid_request", "typ"),
    ("typ_jwt", lambda c: SIGNER.sign(c, header={"typ": "JWT"}), "invalid_request", "typ"),
    ("typ_at_jwt", lambda c: SIGNER.sign(c, header={"typ": "at+jwt"}), "invalid_request", "typ"),
    ("alg_none", lambda c: compact({"alg": "none", "typ": "secevent+jwt", "kid": SIGNER.key.kid}, c, b"x"),
     "invalid_key", "RS256"),
    ("hs256_keyed_with_the_public_key", _hs256_with_public_key, "invalid_key", "RS256"),
    ("ps256", lambda c: SIGNER.sign(c, algorithm="PS256"), "invalid_key", "RS256"),
    ("kid_unknown", lambda c: SIGNER.sign(c, key=STRANGER), "invalid_key", "no trusted key"),
    ("kid_missing", lambda c: SIGNER.sign(c, header={"kid": None}), "invalid_key", "kid"),
    ("key_of_1024_bits", lambda c: SIGNER.sign(c, key=WEAK), "invalid_key", "2048"),
    ("signature_of_another_key", _other_signature, "authentication_failed", "signature"),
    ("jku_header", lambda c: SIGNER.sign(c, header={"jku": "https://evil.example/jwks"}), "invalid_request", "jku"),
    ("not_a_jws", lambda c: "not.a-set", "invalid_request", "parse"),
]
CLAIMS: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]], str, str]] = [
    ("sub_present", _claims(sub="alice"), "invalid_request", "sub"),
    ("exp_present", _claims(exp=2_000_000_000), "invalid_request", "exp"),
    ("iss_trailing_slash", _claims(iss=ISSUER + "/"), "invalid_issuer", "iss"),
    ("iss_other_case", _claims(iss=ISSUER.upper()), "invalid_issuer", "iss"),
    ("iss_missing", _claims(iss=None), "invalid_issuer", "iss"),
    ("aud_other", _claims(aud="https://docs.example.com"), "invalid_audience", "aud"),
    ("aud_missing", _claims(aud=None), "invalid_audience", "aud"),
    ("aud_not_strings", _claims(aud=[1]), "invalid_request", "aud"),
    ("iat_missing", _claims(iat=None), "invalid_request", "iat"),
    ("iat_a_string", _claims(iat="now"), "invalid_request", "iat"),
    ("jti_missing", _claims(jti=None), "invalid_request", "jti"),
    ("txn_not_a_string", _claims(txn=7), "invalid_request", "txn"),
    ("events_missing", _claims(events=None), "invalid_request", "events"),
    ("events_empty", _claims(events={}), "invalid_request", "events"),
    ("two_independent_events", _claims(events={SESSION_REVOKED: {}, CREDENTIAL_CHANGE: {
        "credential_type": "x509", "change_type": "revoke"}}), "invalid_request", "exactly one"),
    ("event_payload_a_string", _event(SESSION_REVOKED, "revoked"), "invalid_request", "JSON object"),
    ("event_name_not_a_uri", _event("session-revoked", {}), "invalid_request", "URI"),
    ("sub_id_missing", _claims(sub_id=None), "invalid_request", "sub_id"),
    ("sub_id_unknown_format", _sub_id({"format": "username", "username": "alice"}), "invalid_request", "format"),
    ("iss_sub_with_empty_sub", _sub_id({"format": "iss_sub", "iss": "https://idp", "sub": ""}),
     "invalid_request", "sub_id.sub"),
    ("nested_aliases", _sub_id({"format": "aliases", "identifiers": [
        {"format": "aliases", "identifiers": [{"format": "opaque", "id": "x"}]}]}), "invalid_request", "nest"),
    ("phone_not_phone_number", _sub_id({"format": "phone_number", "phone": "+12065550100"}),
     "invalid_request", "phone_number"),
    ("jwt_id_without_jti", _sub_id({"format": "jwt_id", "iss": ISSUER}), "invalid_request", "jti"),
    ("complex_with_a_string_member", _sub_id({"format": "complex", "session": "task-1"}),
     "invalid_request", "sub_id.session"),
    ("initiating_entity_robot", _event(SESSION_REVOKED, {"initiating_entity": "robot"}),
     "invalid_request", "initiating_entity"),
    ("reason_admin_a_string", _event(SESSION_REVOKED, {"reason_admin": "done"}), "invalid_request", "reason_admin"),
    ("event_timestamp_a_string", _event(SESSION_REVOKED, {"event_timestamp": "2025-01-01"}),
     "invalid_request", "event_timestamp"),
    ("credential_change_without_change_type", _event(CREDENTIAL_CHANGE, {"credential_type": "x509"}),
     "invalid_request", "change_type"),
    ("credential_change_without_credential_type", _event(CREDENTIAL_CHANGE, {"change_type": "revoke"}),
     "invalid_request", "credential_type"),
    ("device_compliance_unknown", _event(CAEP + "device-compliance-change", {
        "previous_status": "compliant", "current_status": "unknown"}), "invalid_request", "current_status"),
    ("assurance_direction_up", _event(CAEP + "assurance-level-change", {
        "namespace": "NIST-AAL", "current_level": "nist-aal2", "change_direction": "up"}),
     "invalid_request", "change_direction"),
    ("stream_updated_unknown_status", _event(
        "https://schemas.openid.net/secevent/ssf/event-type/stream-updated", {"status": "sleeping"}),
     "invalid_request", "status"),
]


@pytest.mark.parametrize(("sign", "err", "names"), [p[1:] for p in SIGNATURES], ids=[p[0] for p in SIGNATURES])
async def test_ssf_4_1_signature_and_header_refusals(validator: SetValidator, sign: Sign, err: str,
                                                     names: str) -> None:
    claims = SIGNER.claims()
    with pytest.raises(SetRejected) as caught:
        await validator.validate(sign(claims), jti=claims["jti"])
    assert (caught.value.err, names in caught.value.description) == (err, True), caught.value.description


@pytest.mark.parametrize(("mangle", "err", "names"), [p[1:] for p in CLAIMS], ids=[p[0] for p in CLAIMS])
async def test_rfc8417_ssf_4_claim_refusals(validator: SetValidator, mangle: Callable[[dict[str, Any]], dict[str, Any]],
                                            err: str, names: str) -> None:
    claims = {k: v for k, v in mangle(SIGNER.claims()).items() if v is not None}
    jti = claims.get("jti", "delivered-as")
    with pytest.raises(SetRejected) as caught:
        await validator.validate(SIGNER.sign(claims), jti=jti)
    assert (caught.value.err, names in caught.value.description) == (err, True), caught.value.description


async def test_rfc8936_2_3_a_set_must_be_delivered_under_its_own_jti(validator: SetValidator) -> None:
    jti, token = SIGNER.set()
    with pytest.raises(SetRejected) as caught:
        await validator.validate(token, jti="another-" + jti)
    assert caught.value.err == "invalid_request"
    with pytest.raises(SetRejected):
        await validator.validate({"not": "a string"}, jti=jti)


async def test_a_payload_altered_after_signing_fails_authentication(validator: SetValidator) -> None:
    jti, token = SIGNER.set()
    header, _, signature = token.split(".")
    forged = b64url(SIGNER.claims(jti=jti, sub_id=session_subject("someone-elses-task")))
    with pytest.raises(SetRejected) as caught:
        await validator.validate(f"{header}.{forged}.{signature}", jti=jti)
    assert caught.value.err == "authentication_failed"


async def test_an_unreachable_key_set_is_no_verdict_on_the_set() -> None:
    """The SET is neither refused nor accepted: it stays unacknowledged and comes again (module docstring)."""
    server = JwksServer()
    try:
        async with httpx2.AsyncClient(timeout=5) as client:
            keys = SetKeys(server.url + "/missing", client=client)
            validator = SetValidator(issuer=ISSUER, audience=frozenset({AUDIENCE}), keys=keys)
            jti, token = SIGNER.set()
            with pytest.raises(SetUnverifiable):
                await validator.validate(token, jti=jti)
    finally:
        server.close()


async def test_ssf_4_1_4_a_rotated_set_key_is_fetched_at_once_and_a_failed_fetch_keeps_the_keys() -> None:
    """A kid the cached key set lacks fetches it again (at most once a second), not 30 s later."""
    server, clock = JwksServer(), [1000.0]
    first, rotated = SetSigner(), SetSigner()
    server.documents["/jwks"] = first.jwks()
    try:
        async with httpx2.AsyncClient(timeout=5) as client:
            keys = SetKeys(server.url + "/jwks", client=client, clock=lambda: clock[0])
            validator = SetValidator(issuer=ISSUER, audience=frozenset({AUDIENCE}), keys=keys)
            jti, token = first.set()
            await validator.validate(token, jti=jti)
            server.documents["/jwks"] = first.jwks(rotated.key)
            clock[0] += 1
            jti, token = rotated.set()
            assert (await validator.validate(token, jti=jti)).jti == jti
            del server.documents["/jwks"]  # the key set unreachable: the keys held still verify
            clock[0] += 1
            stranger_jti, stranger = SetSigner().set()
            with pytest.raises(SetUnverifiable):
                await validator.validate(stranger, jti=stranger_jti)
            jti, token = first.set()
            assert (await validator.validate(token, jti=jti)).jti == jti
            server.documents["/jwks"] = first.jwks(rotated.key)
            with pytest.raises(SetUnverifiable):  # no fetch within a second of the last: no verdict either
                await validator.validate(stranger, jti=stranger_jti)
            clock[0] += 1
            with pytest.raises(SetRejected) as caught:  # fetched now, and the kid is not in it
                await validator.validate(stranger, jti=stranger_jti)
            assert caught.value.err == "invalid_key"
            assert server.hits["/jwks"] == 4
    finally:
        server.close()
