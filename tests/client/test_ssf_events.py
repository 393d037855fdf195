"""What each validated SET does to the revocation state (deputy_client.resource.ssf_events, CAEP 1.0 §3.1, §3.3;
SSF 1.0 §3.3, §3.6, §8.1.3.1), and the subject identifiers a receiver accepts (RFC 9493 §3)."""

from __future__ import annotations

from typing import Any

import pytest

from deputy_client.resource.revocations import Cutoff, RevocationState
from deputy_client.resource.sets import ReceivedSet, SetRejected
from deputy_client.resource.ssf_events import Ignored, Revoke, StatusChanged, Verified, effect_of
from deputy_client.resource.subjects import SubjectError, check_subject
from tests.client.ssf_support import (
    CREDENTIAL_CHANGE,
    IDP,
    ISSUER,
    SESSION_REVOKED,
    STREAM_UPDATED,
    VERIFICATION,
    session_subject,
)

AT = 1_700_000_000
STREAM = "stream-1"


def received(event_type: str, subject: dict[str, Any], **event: Any) -> ReceivedSet:
    return ReceivedSet(jti="j", iat=AT + 5, txn="t", event_type=event_type, event=event, subject=subject)


def revoke(kind: str, **event: Any) -> dict[str, Any]:
    return {"credential_type": kind, "change_type": "revoke", "event_timestamp": AT, **event}


EFFECTS: list[tuple[str, ReceivedSet, object]] = [
    ("session_of_a_task", received(SESSION_REVOKED, session_subject("task-9"), event_timestamp=AT),
     Revoke(task_ids=frozenset({"task-9"}))),
    ("a_token_of_deputy", received(SESSION_REVOKED, {"format": "jwt_id", "iss": ISSUER, "jti": "tok"}),
     Revoke(jtis=frozenset({"tok"}))),
    ("a_token_of_another_issuer", received(SESSION_REVOKED, {"format": "jwt_id", "iss": IDP, "jti": "tok"}),
     Ignored("a token of another issuer")),
    ("a_session_named_otherwise", received(SESSION_REVOKED, {"format": "complex", "session": {
        "format": "uri", "uri": "urn:x"}}), Ignored("a session not named by an opaque task id")),
    ("every_session_of_a_user", received(SESSION_REVOKED, {"format": "iss_sub", "iss": IDP, "sub": "bob"},
                                         event_timestamp=AT), Revoke(cutoffs={Cutoff("user", "bob"): AT})),
    ("a_complex_user_without_session_no_timestamp", received(SESSION_REVOKED, {"format": "complex", "user": {
        "format": "opaque", "id": "bob"}}), Revoke(cutoffs={Cutoff("user", "bob"): AT + 5})),
    ("spiffe_agent", received(CREDENTIAL_CHANGE, {"format": "uri", "uri": "spiffe://example.org/agents/a"},
                              **revoke("spiffe-jwt-svid")),
     Revoke(cutoffs={Cutoff("agent", "spiffe://example.org/agents/a"): AT})),
    ("trust_domain", received(CREDENTIAL_CHANGE, {"format": "uri", "uri": "spiffe://example.org"},
                              **revoke("spiffe-jwt-svid")),
     Revoke(cutoffs={Cutoff("trust_domain", "example.org"): AT})),
    ("workload_agent", received(CREDENTIAL_CHANGE, {"format": "iss_sub", "iss": "https://k8s", "sub": "ns:sa"},
                                **revoke("workload-token")),
     Revoke(cutoffs={Cutoff("agent", "ns:sa", "https://k8s"): AT})),
    ("workload_issuer", received(CREDENTIAL_CHANGE, {"format": "uri", "uri": "https://k8s"},
                                 **revoke("workload-token")),
     Revoke(cutoffs={Cutoff("agent_issuer", "https://k8s"): AT})),
    ("user_at_an_issuer", received(CREDENTIAL_CHANGE, {"format": "iss_sub", "iss": IDP, "sub": "bob"},
                                   **revoke("user-token")), Revoke(cutoffs={Cutoff("user", "bob"): AT})),
    ("user_at_any_issuer", received(CREDENTIAL_CHANGE, {"format": "opaque", "id": "bob"}, **revoke("user-token")),
     Revoke(cutoffs={Cutoff("user", "bob"): AT})),
    ("a_credential_type_not_deputys_names_both", received(
        CREDENTIAL_CHANGE, {"format": "iss_sub", "iss": IDP, "sub": "bob"}, **revoke("password")),
     Revoke(cutoffs={Cutoff("agent", "bob", IDP): AT, Cutoff("user", "bob"): AT})),
    ("delete_revokes_too", received(CREDENTIAL_CHANGE, {"format": "opaque", "id": "bob"},
                                    **revoke("user-token", change_type="delete")),
     Revoke(cutoffs={Cutoff("user", "bob"): AT})),
    ("create_revokes_nothing", received(CREDENTIAL_CHANGE, {"format": "opaque", "id": "bob"},
                                        **revoke("user-token", change_type="create")),
     Ignored("credential create revokes nothing")),
    ("a_phone_names_no_deputy_party", received(SESSION_REVOKED, {"format": "phone_number",
                                                                 "phone_number": "+12065550100"}),
     Ignored("a subject Deputy's tokens do not name")),
    ("verification", received(VERIFICATION, {"format": "opaque", "id": STREAM}, state="s1"), Verified("s1")),
    ("verification_without_state", received(VERIFICATION, {"format": "opaque", "id": STREAM}), Verified(None)),
    ("stream_updated", received(STREAM_UPDATED, {"format": "opaque", "id": STREAM}, status="paused", reason="r"),
     StatusChanged("paused", "r")),
    ("an_unknown_event_type", received("https://example.com/e", session_subject("task-9")),
     Ignored("event type not acted on")),
]


@pytest.mark.parametrize(("event", "effect"), [e[1:] for e in EFFECTS], ids=[e[0] for e in EFFECTS])
def test_caep_3_what_a_set_revokes(event: ReceivedSet, effect: object) -> None:
    assert effect_of(event, issuer=ISSUER, stream_id=STREAM) == effect


@pytest.mark.parametrize("event_type", [VERIFICATION, STREAM_UPDATED])
def test_ssf_8_1_4_1_a_stream_event_about_another_stream_is_refused(event_type: str) -> None:
    with pytest.raises(SetRejected) as caught:
        effect_of(received(event_type, {"format": "opaque", "id": "stream-2"}, status="enabled"),
                  issuer=ISSUER, stream_id=STREAM)
    assert caught.value.err == "invalid_request"


def test_ssf_3_6_a_critical_member_not_processed_discards_the_event() -> None:
    subject = {**session_subject("task-9"), "device": {"format": "opaque", "id": "laptop"}}
    event = received(SESSION_REVOKED, subject)
    assert effect_of(event, issuer=ISSUER, stream_id=STREAM) == Revoke(task_ids=frozenset({"task-9"}))
    assert isinstance(effect_of(event, issuer=ISSUER, stream_id=STREAM, critical=frozenset({"device"})), Ignored)
    assert effect_of(event, issuer=ISSUER, stream_id=STREAM, critical=frozenset({"session", "tenant"})) == Revoke(
        task_ids=frozenset({"task-9"}))


def test_cutoffs_refuse_a_partys_tokens_issued_at_or_before_the_revocation() -> None:
    state = RevocationState()
    spiffe: dict[str, Any] = {"agent": "spiffe://example.org/agents/a", "agent_issuer": None, "subject": "alice"}
    workload: dict[str, Any] = {"agent": "ns:sa", "agent_issuer": "https://k8s", "subject": "carol"}
    assert not state.barred(**spiffe, issued_at=AT)
    state.revoke(cutoffs={Cutoff("trust_domain", "example.org"): AT})
    assert state.barred(**spiffe, issued_at=AT) and not state.barred(**spiffe, issued_at=AT + 1)
    assert not state.barred(agent="spiffe://example.org.evil/a", agent_issuer=None, subject="x", issued_at=AT)
    state.revoke(cutoffs={Cutoff("agent", "ns:sa", "https://k8s"): AT, Cutoff("user", "bob"): AT + 10})
    assert state.barred(**workload, issued_at=AT)
    assert not state.barred(agent="ns:sa", agent_issuer="https://other", subject="carol", issued_at=AT)
    assert state.barred(agent="x", agent_issuer=None, subject="bob", issued_at=AT + 10)
    state.revoke(cutoffs={Cutoff("agent_issuer", "https://k8s"): AT + 20, Cutoff("user", "bob"): AT})
    assert state.barred(**workload, issued_at=AT + 20)
    assert state.barred(agent="x", agent_issuer=None, subject="bob", issued_at=AT + 10)  # the later cutoff stays


VALID_SUBJECTS: list[dict[str, Any]] = [
    {"format": "account", "uri": "acct:alice@example.com"},
    {"format": "email", "email": "alice@example.com"},
    {"format": "iss_sub", "iss": IDP, "sub": "alice"},
    {"format": "opaque", "id": "11112222333344445555"},
    {"format": "phone_number", "phone_number": "+12065550100"},
    {"format": "did", "url": "did:example:123456"},
    {"format": "uri", "uri": "spiffe://example.org/agents/a"},
    {"format": "aliases", "identifiers": [{"format": "email", "email": "a@example.com"},
                                          {"format": "opaque", "id": "a"}]},
    {"format": "jwt_id", "iss": ISSUER, "jti": "B70BA622"},
    {"format": "saml_assertion_id", "issuer": "https://idp", "assertion_id": "_8e8dc5f69a98cc4c1ff3427e5ce34606"},
    {"format": "ip-addresses", "ip-addresses": ["10.29.37.75", "2001:db8::1"]},
    session_subject("task-1"),
    {"format": "complex", "tenant": {"format": "opaque", "id": "t1"}, "user": {"format": "email", "email": "a@b.c"}},
]
INVALID_SUBJECTS: list[tuple[str, Any]] = [
    ("not_an_object", "alice"),
    ("no_format", {"email": "a@example.com"}),
    ("an_extra_member", {"format": "email", "email": "a@example.com", "name": "A"}),
    ("null_member", {"format": "opaque", "id": None}),
    ("account_not_acct", {"format": "account", "uri": "mailto:a@example.com"}),
    ("phone_not_e164", {"format": "phone_number", "phone_number": "206-555-0100"}),
    ("did_not_did", {"format": "did", "url": "https://example.com"}),
    ("uri_relative", {"format": "uri", "uri": "/agents/a"}),
    ("email_without_at", {"format": "email", "email": "alice"}),
    ("aliases_empty", {"format": "aliases", "identifiers": []}),
    ("ip_not_an_address", {"format": "ip-addresses", "ip-addresses": ["10.0.0.300"]}),
    ("ip_an_integer", {"format": "ip-addresses", "ip-addresses": [167772161]}),
    ("complex_empty", {"format": "complex"}),
    ("complex_nested", {"format": "complex",
                        "user": {"format": "complex", "session": {"format": "opaque", "id": "s"}}}),
]


@pytest.mark.parametrize("subject", VALID_SUBJECTS, ids=[str(s["format"]) for s in VALID_SUBJECTS])
def test_rfc9493_3_each_format_is_accepted(subject: dict[str, Any]) -> None:
    assert check_subject(subject) == subject


@pytest.mark.parametrize("subject", [s[1] for s in INVALID_SUBJECTS], ids=[s[0] for s in INVALID_SUBJECTS])
def test_rfc9493_3_malformed_subjects_are_refused(subject: Any) -> None:
    with pytest.raises(SubjectError):
        check_subject(subject)
