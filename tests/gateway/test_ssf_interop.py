"""Issue 9, Done-when "An SSF interoperability test": a receiver written from the specifications alone
(tests/ssf_interop_receiver.py: httpx2 and joserfc, nothing of Deputy's) against a real gateway on loopback.

It discovers the transmitter, creates a poll stream, completes the verification handshake, receives the
SETs of a completed task tree, of a token revoked on its own and of an admin revocation, verifies each with
joserfc against `jwks_uri`, acknowledges them, and sees them gone from the next poll.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import httpx2
import jwt
import pytest

from tests.conftest import HELPER_AGENT, IDP, MAIL_AGENT, POLICY_DATA, Deployment, deployed
from tests.ssf_interop_receiver import VERIFICATION, DecodedSet, InteropReceiver
from tests.support import ACCESS_TOKEN, GRANT, JWT

TXN = "urn:ietf:params:oauth:token-type:txn_token"
CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
SESSION_REVOKED, CREDENTIAL_CHANGE = CAEP + "session-revoked", CAEP + "credential-change"
DOCS = "https://docs.example.com"
RECEIVER = "spiffe://example.org/rs/docs"
OPS = "spiffe://example.org/ops/admin"
RESOURCES = f"""
[[resources]]
audience = "{DOCS}"
scopes = ["docs.read"]
max_ttl = 300
clients = ["{RECEIVER}"]

[admin]
spiffe_ids = ["{OPS}"]
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    data = json.loads(json.dumps(POLICY_DATA))
    namespace = next(iter(data.values()))
    namespace["grants"][MAIL_AGENT][DOCS] = ["docs.read"]
    namespace["grants"][HELPER_AGENT][DOCS] = ["docs.read"]
    namespace["delegations"][IDP]["carol"] = [MAIL_AGENT]
    namespace["subagents"] = {MAIL_AGENT: [HELPER_AGENT]}
    with deployed(tmp_path_factory.mktemp("ssf-interop"), extra=RESOURCES,
                  policy_files={"data.json": json.dumps(data)}) as deployment:
        yield deployment


@pytest.fixture
def receiver(env: Deployment) -> Iterator[InteropReceiver]:
    with httpx2.Client(timeout=10) as http:
        interop = InteropReceiver(env.issuer, bearer=lambda: env.svid(sub=RECEIVER), http=http)
        interop.discover()
        interop.load_keys()
        interop.create_stream()
        interop.handshake(secrets.token_urlsafe(12))
        yield interop
        interop.delete_stream()


def token(env: Deployment, **form: str) -> dict[str, Any]:
    response = env.client.post("/token", data={"grant_type": GRANT, "actor_token_type": JWT, **form})
    assert response.status_code == 200, response.text
    return dict(response.json())


def open_task(env: Deployment, user: str = "alice") -> dict[str, Any]:
    return token(env, subject_token=env.user_token(user, scope="docs.read"), subject_token_type=ACCESS_TOKEN,
                 actor_token=env.svid(), requested_token_type=TXN, audience=DOCS, scope="docs.read")


def within(env: Deployment, task_token: str, agent: str = "/agents/mail") -> str:
    return str(token(env, subject_token=task_token, subject_token_type=TXN, actor_token=env.svid(agent),
                     resource=DOCS, scope="docs.read")["access_token"])


def claims(jwt_text: str) -> dict[str, Any]:
    return dict(jwt.decode(jwt_text, options={"verify_signature": False}))


def session_of(received: DecodedSet) -> str | None:
    session = received.claims["sub_id"].get("session")
    return session["id"] if received.event_type == SESSION_REVOKED and session else None


def test_ssf_8_1_4_a_receiver_from_the_specs_creates_a_poll_stream_and_completes_the_handshake(
        env: Deployment) -> None:
    with httpx2.Client(timeout=10) as http:
        interop = InteropReceiver(env.issuer, bearer=lambda: env.svid(sub=RECEIVER), http=http)
        interop.discover()
        interop.load_keys()
        config = interop.create_stream()
        assert config["aud"] == DOCS  # SSF 8.1.1: the audience of the receiver's one resource
        assert interop.status()["status"] == "enabled"
        state = secrets.token_urlsafe(12)
        verification = interop.handshake(state)
        assert verification.event_type == VERIFICATION and verification.event["state"] == state
        assert verification.claims["sub_id"] == {"format": "opaque", "id": config["stream_id"]}  # SSF 8.1.4.1
        assert interop.delete_stream() == 204  # SSF 8.1.1.5


def test_caep_3_1_a_completed_task_tree_is_one_session_revoked_per_task_with_the_cause_as_txn(
        env: Deployment, receiver: InteropReceiver) -> None:
    parent = open_task(env)
    child = token(env, subject_token=parent["access_token"], subject_token_type=TXN,
                  actor_token=env.svid("/agents/helper"), requested_token_type=TXN, scope="docs.read")
    within(env, child["access_token"], "/agents/helper")
    done = env.client.post(f"/tasks/{parent['task_id']}/complete",
                           headers={"Authorization": f"Bearer {env.svid()}"})
    assert done.status_code == 200, done.text
    ids = {parent["task_id"], child["task_id"]}
    got: dict[str, DecodedSet] = {}

    def both(received: DecodedSet) -> bool:
        if session_of(received) in ids:
            got[str(session_of(received))] = received
        return set(got) == ids

    acked = receiver.collect(both)
    for task_id, received in got.items():
        assert received.claims["txn"] == parent["task_id"]  # the cause: the task whose ending started it
        assert received.claims["sub_id"]["user"] == {"format": "iss_sub", "iss": IDP, "sub": "alice"}
        event = received.event
        assert event["initiating_entity"] in {"admin", "user", "policy", "system"}
        assert type(event["event_timestamp"]) in (int, float) and event["reason_admin"]["en"], event
        assert task_id == received.claims["sub_id"]["session"]["id"]
    sets, _ = receiver.poll()  # RFC 8936 2.4: acknowledged SETs are not given again
    assert not set(sets) & {s.claims["jti"] for s in acked}


def test_ssf_3_5_1_a_token_revoked_on_its_own_is_a_session_revoked_naming_its_jwt_id(
        env: Deployment, receiver: InteropReceiver) -> None:
    task = open_task(env)
    access = within(env, task["access_token"])
    revoked = env.client.post("/revoke", data={"token": access}, headers={"Authorization": f"Bearer {env.svid()}"})
    assert revoked.status_code == 200, revoked.text
    wanted = {"format": "jwt_id", "iss": env.issuer, "jti": claims(access)["jti"]}
    found = next(s for s in receiver.collect(lambda s: s.claims["sub_id"] == wanted) if s.claims["sub_id"] == wanted)
    assert found.event_type == SESSION_REVOKED and found.claims["txn"] == task["task_id"]
    assert found.claims["jti"] != claims(access)["jti"]  # RFC 8417 2.2: the SET's own jti


def test_caep_3_3_an_admin_revocation_of_a_user_is_a_credential_change(
        env: Deployment, receiver: InteropReceiver) -> None:
    task = open_task(env, user="carol")
    within(env, task["access_token"])
    response = env.client.post("/admin/revoke", params={"user": "carol", "issuer": IDP},
                               headers={"Authorization": f"Bearer {env.svid(sub=OPS)}"})
    assert response.status_code == 200, response.text
    wanted = {"format": "iss_sub", "iss": IDP, "sub": "carol"}
    def is_change(s: DecodedSet) -> bool:
        return s.event_type == CREDENTIAL_CHANGE and s.claims["sub_id"] == wanted

    received = receiver.collect(is_change)
    found = next(s for s in received if is_change(s))
    change = found.event
    assert (change["credential_type"], change["change_type"], change["initiating_entity"]) == (
        "user-token", "revoke", "admin")
    assert change["reason_admin"] and type(change["event_timestamp"]) in (int, float)
    ended = found.claims["txn"]
    sessions = {session_of(s) for s in received}
    if task["task_id"] not in sessions:  # the task's session-revoked may come after the credential-change
        sessions |= {session_of(s) for s in receiver.collect(lambda s: session_of(s) == task["task_id"])}
    assert task["task_id"] in sessions and isinstance(ended, str)
