"""Which SETs a revocation-feed event becomes (CAEP 1.0 §3.1, §3.3; SSF 1.0 §3, §4.1.9), pure: the Deputy
mapping of docs/resource-servers.md."""

from __future__ import annotations

import pytest

from delegation.records import Party
from delegation.ssf.events import (
    SPIFFE_JWT_SVID,
    USER_TOKEN,
    WORKLOAD_TOKEN,
    credential,
    revocation_drafts,
    stream_updated_draft,
    verification_draft,
)
from delegation.tasks import ADMIN, USER, EndedTask, Revocation
from token_exchange.ssf import CREDENTIAL_CHANGE, SESSION_REVOKED, STREAM_UPDATED, VERIFICATION

ISSUER = "https://deputy.example.com"
IDP = "https://idp.example.com"


def tree_ended() -> Revocation:
    """A root task completed by its agent: the root and two descendants the cascade reached."""
    tasks = tuple(EndedTask(t, IDP, "alice", cause="root") for t in ("root", "child", "grandchild"))
    return Revocation(7, 1000, "complete by spiffe://example.org/agents/mail", ("root", "child", "grandchild"),
                      ("j1", "j2"), tasks, None, USER)


def test_caep_3_1_each_ended_task_is_one_session_revoked_set_with_the_cascade_cause_as_txn() -> None:
    drafts = revocation_drafts(tree_ended(), issuer=ISSUER, task_of_token={})
    assert [d.event for d in drafts] == [SESSION_REVOKED] * 3
    assert [d.subject for d in drafts] == [
        {"format": "complex", "session": {"format": "opaque", "id": t},
         "user": {"format": "iss_sub", "iss": IDP, "sub": "alice"}} for t in ("root", "child", "grandchild")]
    assert {d.txn for d in drafts} == {"root"}  # SSF §4.1.9: one txn for the SETs of one cause
    assert drafts[0].payload == {"event_timestamp": 1000, "initiating_entity": "user",
                                 "reason_admin": {"en": "complete by spiffe://example.org/agents/mail"}}


def test_tokens_under_ended_tasks_get_no_sets_of_their_own() -> None:
    drafts = revocation_drafts(tree_ended(), issuer=ISSUER, task_of_token={"j1": "root"})
    assert not any(d.subject["format"] == "jwt_id" for d in drafts)


def test_ssf_3_5_1_a_token_revoked_on_its_own_is_a_jwt_id_session_revoked_with_its_task_as_txn() -> None:
    revocation = Revocation(8, 1001, "revoked by spiffe://example.org/agents/mail", (), ("j9",))
    [draft] = revocation_drafts(revocation, issuer=ISSUER, task_of_token={"j9": "task-9"})
    assert draft.subject == {"format": "jwt_id", "iss": ISSUER, "jti": "j9"}
    assert (draft.event, draft.txn) == (SESSION_REVOKED, "task-9")


def test_a_token_whose_record_is_gone_still_gets_a_txn() -> None:
    [draft] = revocation_drafts(Revocation(8, 1001, "r", (), ("j9",)), issuer=ISSUER, task_of_token={})
    assert draft.txn == "revocation-8"


def test_caep_3_3_an_admin_revocation_is_credential_change_then_the_sessions_it_ended() -> None:
    party = Party("agent", "spiffe://example.org/agents/mail")
    tasks = (EndedTask("t1", IDP, "alice", "t1"),)
    revocation = Revocation(9, 1002, "revoked by admin root", ("t1",), ("j1",), tasks, party, ADMIN)
    change, session = revocation_drafts(revocation, issuer=ISSUER, task_of_token={})
    assert change.event == CREDENTIAL_CHANGE and change.subject == {"format": "uri", "uri": party.id}
    assert change.payload == {"credential_type": SPIFFE_JWT_SVID, "change_type": "revoke", "event_timestamp": 1002,
                              "initiating_entity": "admin", "reason_admin": {"en": "revoked by admin root"}}
    assert session.event == SESSION_REVOKED and session.payload["initiating_entity"] == "admin"


@pytest.mark.parametrize(("party", "kind", "subject"), [
    (Party("agent", "spiffe://example.org/a"), SPIFFE_JWT_SVID, {"format": "uri", "uri": "spiffe://example.org/a"}),
    (Party("domain", "example.org"), SPIFFE_JWT_SVID, {"format": "uri", "uri": "spiffe://example.org"}),
    (Party("agent", "system:serviceaccount:ns:sa", "https://k8s.example"), WORKLOAD_TOKEN,
     {"format": "iss_sub", "iss": "https://k8s.example", "sub": "system:serviceaccount:ns:sa"}),
    (Party("domain", "https://k8s.example"), WORKLOAD_TOKEN, {"format": "uri", "uri": "https://k8s.example"}),
    (Party("user", "alice", IDP), USER_TOKEN, {"format": "iss_sub", "iss": IDP, "sub": "alice"}),
    (Party("user", "alice"), USER_TOKEN, {"format": "opaque", "id": "alice"}),
])
def test_caep_3_3_deputy_credential_types_and_their_subjects(party: Party, kind: str, subject: dict[str, str]
                                                               ) -> None:
    assert credential(party) == (kind, subject)


def test_ssf_8_1_4_1_and_8_1_5_control_events_are_about_the_stream() -> None:
    check = verification_draft("s1", "xyz")
    assert (check.event, check.subject, check.payload) == (VERIFICATION, {"format": "opaque", "id": "s1"},
                                                           {"state": "xyz"})
    update = stream_updated_draft("s1", "disabled", "why")
    assert (update.event, update.payload) == (STREAM_UPDATED, {"status": "disabled", "reason": "why"})
    assert check.txn != update.txn
