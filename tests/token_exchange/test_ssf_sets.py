"""SSF 1.0 and CAEP 1.0 building blocks, pure: subject identifiers (RFC 9493 §3, SSF §3), SET claims (RFC 8417
§2.2, SSF §4.1), event payloads (CAEP §2, §3) and the transmitter metadata (SSF §7)."""

from __future__ import annotations

import pytest

from tests.support import compact
from token_exchange import ssf
from token_exchange.ssf import (
    CREDENTIAL_CHANGE,
    SESSION_REVOKED,
    complex_subject,
    event_type,
    iss_sub,
    jwt_id,
    metadata,
    opaque,
    set_claims,
    uri,
    well_known_path,
)

ISSUER = "https://deputy.example.com"


def test_rfc9493_3_each_format_has_exactly_its_members() -> None:
    assert opaque("t1") == {"format": "opaque", "id": "t1"}
    assert iss_sub("https://idp", "alice") == {"format": "iss_sub", "iss": "https://idp", "sub": "alice"}
    assert uri("spiffe://example.org/a") == {"format": "uri", "uri": "spiffe://example.org/a"}
    assert jwt_id(ISSUER, "j1") == {"format": "jwt_id", "iss": ISSUER, "jti": "j1"}  # SSF §3.5.1


@pytest.mark.parametrize("build", [lambda: opaque(""), lambda: iss_sub("https://idp", ""), lambda: uri(""),
                                   lambda: jwt_id(ISSUER, ""), lambda: complex_subject()])
def test_rfc9493_3_a_required_member_is_never_empty(build: object) -> None:
    with pytest.raises(ValueError):
        build()  # type: ignore[operator]


def test_ssf_3_3_a_complex_subject_names_each_aspect_of_one_principal() -> None:
    subject = complex_subject(session=opaque("t1"), user=iss_sub("https://idp", "alice"))
    assert subject == {"format": "complex", "session": {"format": "opaque", "id": "t1"},
                       "user": {"format": "iss_sub", "iss": "https://idp", "sub": "alice"}}


def test_ssf_4_1_a_set_has_one_event_its_subject_in_sub_id_and_never_sub_or_exp() -> None:
    payload = ssf.session_revoked(at=100, initiator="user", why="complete by agent")
    claims = set_claims(audience=["https://b", "https://a"], txn="t1", subject=opaque("t1"), event=SESSION_REVOKED,
                        payload=payload, jti="j1", iat=101)
    assert claims == {"jti": "j1", "iat": 101, "aud": ["https://a", "https://b"], "txn": "t1",
                      "sub_id": {"format": "opaque", "id": "t1"}, "events": {SESSION_REVOKED: payload}}
    assert "sub" not in claims and "exp" not in claims


def test_ssf_4_1_8_a_single_audience_is_a_string() -> None:
    claims = set_claims(audience=["https://a"], txn="t", subject=opaque("s"), event=SESSION_REVOKED, payload={},
                        jti="j", iat=1)
    assert claims["aud"] == "https://a"


def test_caep_3_1_session_revoked_carries_time_initiator_and_a_non_empty_reason() -> None:
    assert ssf.session_revoked(at=5, initiator="admin", why="revoked by admin") == {
        "event_timestamp": 5, "initiating_entity": "admin", "reason_admin": {"en": "revoked by admin"}}
    assert ssf.session_revoked(at=5, initiator="robot", why=" ")["initiating_entity"] == "system"  # CAEP §2
    assert ssf.session_revoked(at=5, initiator="policy", why=" ")["reason_admin"] == {"en": "access ended"}


def test_caep_3_3_credential_change_is_a_revoke_by_an_admin() -> None:
    assert ssf.credential_change(credential_type="spiffe-jwt-svid", at=7, why="revoked by admin root") == {
        "credential_type": "spiffe-jwt-svid", "change_type": "revoke", "event_timestamp": 7,
        "initiating_entity": "admin", "reason_admin": {"en": "revoked by admin root"}}


def test_ssf_8_1_4_1_and_8_1_5_control_events() -> None:
    assert ssf.verification("abc") == {"state": "abc"} and ssf.verification(None) == {}
    assert ssf.stream_updated("disabled", "why") == {"status": "disabled", "reason": "why"}
    assert ssf.stream_updated("enabled", None) == {"status": "enabled"}


def test_the_event_type_of_a_queued_set_is_read_from_its_payload() -> None:
    token = compact({"alg": "RS256"}, {"events": {CREDENTIAL_CHANGE: {}}})
    assert event_type(token) == CREDENTIAL_CHANGE
    assert event_type("not-a-jwt") is None and event_type(compact({}, {"events": []})) is None


@pytest.mark.parametrize(("issuer", "path"), [
    ("https://deputy.example.com", "/.well-known/ssf-configuration"),
    ("https://deputy.example.com/", "/.well-known/ssf-configuration"),
    ("https://example.com/deputy", "/.well-known/ssf-configuration/deputy"),
    ("https://example.com/deputy/", "/.well-known/ssf-configuration/deputy"),
])
def test_ssf_7_2_the_well_known_path_is_inserted_before_the_issuer_path(issuer: str, path: str) -> None:
    assert well_known_path(issuer) == path


def test_ssf_7_1_and_interop_2_3_the_metadata_members() -> None:
    document = metadata("https://example.com/deputy")
    assert document == {
        "issuer": "https://example.com/deputy",
        "spec_version": "1_0",
        "jwks_uri": "https://example.com/deputy/ssf/jwks.json",
        "delivery_methods_supported": ["urn:ietf:rfc:8935", "urn:ietf:rfc:8936"],
        "configuration_endpoint": "https://example.com/deputy/ssf/streams",
        "status_endpoint": "https://example.com/deputy/ssf/status",
        "verification_endpoint": "https://example.com/deputy/ssf/verify",
        "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6749"}],
        "default_subjects": "ALL",
    }
    assert not any(value == [] for value in document.values())  # §7.1: empty arrays are omitted
