"""What SSF receivers are told, by RFC 8936 poll over real HTTP: the SETs of a completed task tree, of a token
revoked on its own and of an admin's revocation (CAEP 1.0 §3.1, §3.3; the Deputy mapping in
docs/resource-servers.md), each stream about its own resources only, acknowledgement and redelivery,
`maxEvents`, `moreAvailable`, long polls, and bad poll requests (§2.5.1)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from gateway import openapi
from tests.conftest import IDP, MAIL_AGENT, REMOTE_IDP, Deployment
from tests.gateway.ssf_env import (
    ADMIN,
    CREDENTIAL_CHANGE,
    DOCS,
    DOOMED,
    PHOTOS,
    PUSH,
    RS_BOTH,
    RS_DOCS,
    RS_PHOTOS,
    SESSION_REVOKED,
    SUB,
    TXN,
    Receiver,
    as_agent,
    claims_of,
    complete,
    delegate,
    event_of,
    exchange,
    one_shot,
    open_task,
    queued,
    revoke,
    ssf_deployment,
    within,
)
from tests.support import ACCESS_TOKEN

POLL_TIMEOUT = 2


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with ssf_deployment(tmp_path_factory.mktemp("ssf-poll"), ssf=f"poll_timeout = {POLL_TIMEOUT}") as deployment:
        yield deployment


@pytest.fixture
def docs(env: Deployment) -> tuple[Receiver, str]:
    """A docs resource server's new poll stream, its backlog acknowledged."""
    receiver = Receiver(env, RS_DOCS)
    stream_id = receiver.create()["stream_id"]
    receiver.drop_backlog(stream_id)
    return receiver, stream_id


def session(task_id: str, sub: str = "alice", iss: str = IDP) -> dict[str, Any]:
    return {"format": "complex", "session": {"format": "opaque", "id": task_id},
            "user": {"format": "iss_sub", "iss": iss, "sub": sub}}


def test_caep_3_1_a_completed_task_tree_is_one_session_revoked_per_task_with_the_completed_task_as_txn(
        env: Deployment, docs: tuple[Receiver, str]) -> None:
    receiver, stream_id = docs
    root = open_task(env, DOCS)
    token = within(env, root["access_token"], DOCS)
    child = delegate(env, root["access_token"], SUB, "docs.read")
    child_token = within(env, child["access_token"], DOCS, agent="/agents/summarizer")
    assert claims_of(token)["txn"] == root["task_id"] and claims_of(child_token)["txn"] == child["task_id"]
    complete(env, root["task_id"])
    sets = receiver.drain(stream_id, DOCS)
    assert [event_of(c)[0] for c in sets] == [SESSION_REVOKED, SESSION_REVOKED]
    assert {c["txn"] for c in sets} == {root["task_id"]}  # SSF §4.1.9: the cause, shared
    subjects = [c["sub_id"] for c in sets]
    assert sorted(subjects, key=str) == sorted([session(root["task_id"]), session(child["task_id"])], key=str)
    payload = event_of(sets[0])[1]
    assert payload["initiating_entity"] == "user" and isinstance(payload["event_timestamp"], int)
    assert payload["reason_admin"]["en"] and set(payload) == {"event_timestamp", "initiating_entity", "reason_admin"}
    assert len({c["jti"] for c in sets}) == 2 and not {c["jti"] for c in sets} & {claims_of(token)["jti"]}


def test_ssf_3_5_1_a_token_revoked_on_its_own_is_a_jwt_id_session_revoked_with_its_task_as_txn(
        env: Deployment, docs: tuple[Receiver, str]) -> None:
    receiver, stream_id = docs
    token = one_shot(env, DOCS)
    revoke(env, token)
    [claims] = receiver.drain(stream_id, DOCS)
    assert event_of(claims)[0] == SESSION_REVOKED
    assert claims["sub_id"] == {"format": "jwt_id", "iss": env.issuer, "jti": claims_of(token)["jti"]}
    assert claims["txn"] == claims_of(token)["txn"]  # the one-shot token's own (implicit) task
    assert claims["jti"] != claims_of(token)["jti"]  # RFC 8417 §2.2: a fresh jti, never the revoked token's


def test_caep_3_3_an_admin_revoking_an_agent_is_credential_change_then_its_sessions(
        env: Deployment, docs: tuple[Receiver, str]) -> None:
    receiver, stream_id = docs
    task = open_task(env, DOCS, agent="/agents/doomed")
    revoked = env.client.post("/admin/revoke", params={"agent": DOOMED}, headers=as_agent(env, ADMIN))
    assert revoked.status_code == 200 and revoked.json()["revoked_tasks"] == [task["task_id"]]
    change, ended = receiver.drain(stream_id, DOCS)
    assert event_of(change) == (CREDENTIAL_CHANGE, {
        "credential_type": "spiffe-jwt-svid", "change_type": "revoke", "initiating_entity": "admin",
        "event_timestamp": event_of(change)[1]["event_timestamp"], "reason_admin": {"en": f"revoked by admin {ADMIN}"}})
    assert change["sub_id"] == {"format": "uri", "uri": DOOMED}
    assert event_of(ended)[0] == SESSION_REVOKED and ended["sub_id"] == session(task["task_id"])
    assert event_of(ended)[1]["initiating_entity"] == "admin" and ended["txn"] == task["task_id"]


def test_caep_3_3_an_admin_revoking_a_user_at_an_issuer_is_a_user_token_credential_change(
        env: Deployment, docs: tuple[Receiver, str]) -> None:
    receiver, stream_id = docs
    bob = env.remote_idp.token("bob", audience=env.issuer, scope="docs.read")
    task = exchange(env, subject_token=bob, subject_token_type=ACCESS_TOKEN, requested_token_type=TXN,
                    audience=DOCS, scope="docs.read")
    revoked = env.client.post("/admin/revoke", params={"user": "bob", "issuer": REMOTE_IDP},
                              headers=as_agent(env, ADMIN))
    assert revoked.status_code == 200, revoked.text
    change, ended = receiver.drain(stream_id, DOCS)
    assert event_of(change)[1]["credential_type"] == "user-token"
    assert change["sub_id"] == {"format": "iss_sub", "iss": REMOTE_IDP, "sub": "bob"}
    assert ended["sub_id"] == session(task["task_id"], "bob", REMOTE_IDP)


def test_ssf_9_2_a_stream_is_told_only_about_its_own_resources(env: Deployment) -> None:
    photos, both = Receiver(env, RS_PHOTOS), Receiver(env, RS_BOTH)
    photos_id, both_id = photos.create()["stream_id"], both.create()["stream_id"]
    photos.drop_backlog(photos_id)
    both.drop_backlog(both_id)
    docs_token = one_shot(env, DOCS)
    docs_task = open_task(env, DOCS)
    revoke(env, docs_token)
    complete(env, docs_task["task_id"])
    assert photos.drain(photos_id, PHOTOS) == []
    told = both.drain(both_id, [DOCS, PHOTOS])  # §4.1.8: the stream's aud, both its resources
    assert [c["sub_id"].get("jti") or c["sub_id"]["session"]["id"] for c in told] == [
        claims_of(docs_token)["jti"], docs_task["task_id"]]


def test_ssf_8_1_1_a_stream_delivers_only_the_events_it_asked_for(env: Deployment) -> None:
    receiver = Receiver(env, RS_DOCS)
    stream_id = receiver.create(events_requested=[CREDENTIAL_CHANGE])["stream_id"]
    receiver.drop_backlog(stream_id)
    revoke(env, one_shot(env, DOCS))
    assert receiver.drain(stream_id, DOCS) == []


def test_a_new_streams_backlog_is_every_revocation_still_in_the_feed(env: Deployment) -> None:
    token = one_shot(env, PHOTOS)
    revoke(env, token)
    receiver = Receiver(env, RS_PHOTOS)
    stream_id = receiver.create()["stream_id"]
    told = receiver.drain(stream_id, PHOTOS)
    assert claims_of(token)["jti"] in {c["sub_id"].get("jti") for c in told}


def test_rfc8936_2_4_unacknowledged_sets_are_given_again_and_acknowledged_ones_never(
        env: Deployment, docs: tuple[Receiver, str]) -> None:
    receiver, stream_id = docs
    revoke(env, one_shot(env, DOCS))
    revoke(env, one_shot(env, DOCS))
    first = receiver.poll(stream_id, returnImmediately=True).json()
    assert len(first["sets"]) == 2 and first["moreAvailable"] is False
    openapi.PollBody.model_validate(first)
    assert receiver.poll(stream_id, returnImmediately=True).json()["sets"] == first["sets"]  # given again
    one, other = first["sets"]
    after_one = receiver.poll(stream_id, returnImmediately=True, ack=[one]).json()
    assert list(after_one["sets"]) == [other]
    assert receiver.poll(stream_id, returnImmediately=True, ack=[other]).json() == {"sets": {}, "moreAvailable": False}
    assert queued(env, stream_id) == 0


def test_rfc8936_2_2_max_events_bounds_the_answer_and_more_available_says_what_is_left(
        env: Deployment, docs: tuple[Receiver, str]) -> None:
    receiver, stream_id = docs
    for _ in range(3):
        revoke(env, one_shot(env, DOCS))
    two = receiver.poll(stream_id, returnImmediately=True, maxEvents=2).json()
    assert (len(two["sets"]), two["moreAvailable"]) == (2, True)
    ack_only = receiver.poll(stream_id, returnImmediately=True, maxEvents=0, ack=list(two["sets"])).json()
    assert ack_only == {"sets": {}, "moreAvailable": True}  # §2.4.2: acknowledge only
    rest = receiver.poll(stream_id, returnImmediately=True, maxEvents=2).json()
    assert (len(rest["sets"]), rest["moreAvailable"]) == (1, False) and not set(rest["sets"]) & set(two["sets"])


def test_rfc8936_2_5_return_immediately_answers_at_once_when_nothing_waits(docs: tuple[Receiver, str]) -> None:
    receiver, stream_id = docs
    started = time.monotonic()
    assert receiver.poll(stream_id, returnImmediately=True).json() == {"sets": {}, "moreAvailable": False}
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("body", [{}, {"maxEvents": 0}])
def test_rfc8936_2_5_without_return_immediately_the_poll_is_held_until_the_timeout(
        docs: tuple[Receiver, str], body: dict[str, Any]) -> None:
    receiver, stream_id = docs
    started = time.monotonic()
    answer = receiver.poll(stream_id, **body)
    waited = time.monotonic() - started
    assert answer.status_code == 200 and answer.json() == {"sets": {}, "moreAvailable": False}
    assert POLL_TIMEOUT - 0.2 <= waited < POLL_TIMEOUT + 1.5, waited


def test_rfc8936_2_5_a_long_poll_answers_as_soon_as_a_revocation_commits(
        env: Deployment, docs: tuple[Receiver, str]) -> None:
    receiver, stream_id = docs
    token = one_shot(env, DOCS)
    answer: dict[str, Any] = {}

    def long_poll() -> None:
        with httpx2.Client(base_url=env.url, timeout=10) as client:
            response = client.post(f"/ssf/poll/{stream_id}", json={}, headers=receiver.headers)
            answer.update(response=response, at=time.monotonic())

    waiting = threading.Thread(target=long_poll)
    waiting.start()
    time.sleep(0.3)  # the poll is held
    revoked_at = time.monotonic()
    revoke(env, token)
    waiting.join(timeout=10)
    assert answer["response"].status_code == 200 and len(answer["response"].json()["sets"]) == 1
    assert answer["at"] - revoked_at < 1.0, answer["at"] - revoked_at  # well before the 2 s poll timeout


def test_rfc8936_2_4_3_a_set_reported_in_set_errs_is_dropped_and_logged(
        env: Deployment, docs: tuple[Receiver, str]) -> None:
    receiver, stream_id = docs
    revoke(env, one_shot(env, DOCS))
    [jti] = receiver.poll(stream_id, returnImmediately=True).json()["sets"]
    answer = receiver.poll(stream_id, returnImmediately=True,
                           setErrs={jti: {"err": "invalid_key", "description": "kid not found"}})
    assert answer.status_code == 200 and answer.json()["sets"] == {}
    assert "ssf.set_refused" in env.log() and "invalid_key" in env.log()


def test_rfc8936_2_4_acknowledging_an_unknown_jti_is_harmless(docs: tuple[Receiver, str]) -> None:
    receiver, stream_id = docs
    answer = receiver.poll(stream_id, returnImmediately=True, ack=["no-such-set"])
    assert answer.status_code == 200 and answer.json() == {"sets": {}, "moreAvailable": False}


@pytest.mark.parametrize("body", [
    {"maxEvents": -1}, {"maxEvents": "5"}, {"maxEvents": 2.5}, {"returnImmediately": "true"}, {"ack": "jti"},
    {"ack": [1]}, {"setErrs": {"j": "bad"}}, {"setErrs": []},
])
def test_rfc8936_2_5_1_a_malformed_poll_is_400(docs: tuple[Receiver, str], body: dict[str, Any]) -> None:
    receiver, stream_id = docs
    answer = receiver.poll(stream_id, **body)
    assert (answer.status_code, answer.json()["error"]) == (400, "invalid_request"), answer.text
    assert next(iter(body)) in answer.json()["error_description"]


@pytest.mark.parametrize("body", [b"", b"[]", b"{", b'{"ack": [], "ack": []}', b'{"maxEvents": 1e400}',
                                  b'{"a":' * 50_000, b"\xff"])
def test_rfc8936_2_5_1_a_poll_body_that_is_no_json_object_is_400(docs: tuple[Receiver, str], body: bytes) -> None:
    receiver, stream_id = docs
    answer = receiver.request("POST", f"/ssf/poll/{stream_id}", content=body,
                              headers={"Content-Type": "application/json"})
    assert (answer.status_code, answer.json()["error"]) == (400, "invalid_request"), answer.text


def test_a_push_stream_is_not_polled(env: Deployment) -> None:
    receiver = Receiver(env, RS_DOCS)
    stream_id = receiver.create(delivery={"method": PUSH, "endpoint_url": "https://rs.example.com/e"})["stream_id"]
    answer = receiver.poll(stream_id, returnImmediately=True)
    assert (answer.status_code, answer.json()["error"]) == (400, "invalid_request")


@pytest.mark.parametrize("stream_id", ["no-such-stream", "%00", "x" * 4000, "%F0%9F%92%A5", "..%2Fstreams"])
def test_a_poll_of_no_stream_is_404(env: Deployment, stream_id: str) -> None:
    answer = Receiver(env, RS_DOCS).poll(stream_id, returnImmediately=True)
    assert (answer.status_code, answer.json()["error"]) == (404, "not_found")


def test_ssf_8_1_2_1_a_paused_stream_holds_its_events_until_enabled(env: Deployment,
                                                                    docs: tuple[Receiver, str]) -> None:
    receiver, stream_id = docs
    receiver.request("POST", "/ssf/status", json={"stream_id": stream_id, "status": "paused"})
    token = one_shot(env, DOCS)
    revoke(env, token)
    assert receiver.drain(stream_id, DOCS) == []
    receiver.request("POST", "/ssf/status", json={"stream_id": stream_id, "status": "enabled"})
    assert [c["sub_id"]["jti"] for c in receiver.drain(stream_id, DOCS)] == [claims_of(token)["jti"]]


def test_ssf_8_1_2_1_a_disabled_stream_neither_sends_nor_holds(env: Deployment, docs: tuple[Receiver, str]) -> None:
    receiver, stream_id = docs
    revoke(env, one_shot(env, DOCS))
    assert len(receiver.poll(stream_id, returnImmediately=True).json()["sets"]) == 1  # queued, not acknowledged
    receiver.request("POST", "/ssf/status", json={"stream_id": stream_id, "status": "disabled"})
    assert queued(env, stream_id) == 0
    revoke(env, one_shot(env, DOCS))
    assert receiver.drain(stream_id, DOCS) == []
    receiver.request("POST", "/ssf/status", json={"stream_id": stream_id, "status": "enabled"})
    assert receiver.drain(stream_id, DOCS) == []  # what happened while disabled was never held
    later = one_shot(env, DOCS)
    revoke(env, later)
    assert [c["sub_id"]["jti"] for c in receiver.drain(stream_id, DOCS)] == [claims_of(later)["jti"]]


def test_the_native_feed_still_tells_the_same_revocations(env: Deployment, docs: tuple[Receiver, str]) -> None:
    receiver, stream_id = docs
    token = one_shot(env, DOCS)
    since = env.client.get("/revocations", params={"since": 0, "limit": 500},
                           headers=receiver.headers).json()["next"]
    revoke(env, token)
    native = env.client.get("/revocations", params={"since": since}, headers=receiver.headers).json()["events"]
    assert [e["jtis"] for e in native] == [[claims_of(token)["jti"]]]
    assert [c["sub_id"]["jti"] for c in receiver.drain(stream_id, DOCS)] == [claims_of(token)["jti"]]


def test_mail_agent_is_untouched_by_the_admin_revocations_here(env: Deployment) -> None:
    """The admin revocations above name DOOMED and bob only: the other tests' agent still works."""
    assert env.client.post("/tasks/no-such-task/complete", headers=as_agent(env, MAIL_AGENT)).status_code == 404
