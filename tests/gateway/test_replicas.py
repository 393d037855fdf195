"""Two gateway replicas on one PostgreSQL (issue 9, Done-when "a two-replica test"): a task opened on A is
used on B, delegated on A and completed on B; then every token is refused on both, both native feeds and
both SSF streams carry the ending, and a key rotated through A's config is served by B's JWKS."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from tests.conftest import ACCESS_TOKEN, GRANT, JWT, MAIL_AGENT, Setup
from tests.postgres import Server
from tests.replicas import ADMIN, DOCS, HELPER, RS_DOCS, Replica, deputy, replica_setup, replicas, until

TXN = "urn:ietf:params:oauth:token-type:txn_token"
SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, postgresql_server: Server
               ) -> Iterator[tuple[Setup, list[Replica]]]:
    directory = tmp_path_factory.mktemp("replicas")
    setup = replica_setup(directory, postgresql_server.create(migrated=False))
    try:
        with replicas(setup, 2) as both:
            yield setup, both
    finally:
        setup.jwks_server.close()
    for replica in both:
        assert "Traceback" not in replica.log.read_text(errors="replace"), replica.log.read_text()


def bearer(setup: Setup, spiffe_id: str) -> dict[str, str]:
    path = spiffe_id.removeprefix("spiffe://example.org")
    return {"Authorization": f"Bearer {setup.domain.svid(path, audience=setup.issuer)}"}


def exchange(setup: Setup, replica: Replica, agent: str = MAIL_AGENT, **form: str) -> dict[str, Any]:
    path = agent.removeprefix("spiffe://example.org")
    response = replica.client.post("/token", data={
        "grant_type": GRANT, "actor_token": setup.domain.svid(path, audience=setup.issuer),
        "actor_token_type": JWT, **form})
    assert response.status_code == 200, (replica.name, response.text)
    return dict(response.json())


def create_stream(setup: Setup, replica: Replica) -> dict[str, Any]:
    response = replica.client.post("/ssf/streams", json={"description": f"test via {replica.name}"},
                                   headers=bearer(setup, RS_DOCS))
    assert response.status_code == 201, response.text
    return dict(response.json())


def sessions_revoked(setup: Setup, replica: Replica, stream: dict[str, Any]) -> set[str]:
    """The task ids of the session-revoked SETs waiting on `stream`, read through `replica`."""
    response = replica.client.post(f"/ssf/poll/{stream['stream_id']}", json={"returnImmediately": True},
                                   headers=bearer(setup, RS_DOCS))
    assert response.status_code == 200, response.text
    ids = set()
    for token in response.json()["sets"].values():
        claims = jwt.decode(token, options={"verify_signature": False})
        if SESSION_REVOKED in claims["events"] and claims["sub_id"]["format"] == "complex":
            ids.add(claims["sub_id"]["session"]["id"])
    return ids


def test_issue9_a_task_opened_on_a_used_on_b_delegated_on_a_completed_on_b_is_dead_on_both(
        deployment: tuple[Setup, list[Replica]]) -> None:
    setup, (a, b) = deployment
    streams = [(a, create_stream(setup, a)), (b, create_stream(setup, b))]
    feeds_from = {r.name: _feed_head(setup, r) for r in (a, b)}
    user = setup.idp.token("alice", audience=setup.issuer, scope="docs.read")
    opened = exchange(setup, a, subject_token=user, subject_token_type=ACCESS_TOKEN, requested_token_type=TXN,
                      audience=DOCS, scope="docs.read")
    minted = exchange(setup, b, subject_token=opened["access_token"], subject_token_type=TXN, resource=DOCS,
                      scope="docs.read")
    child = exchange(setup, a, HELPER, subject_token=opened["access_token"], subject_token_type=TXN,
                     requested_token_type=TXN, audience=DOCS, scope="docs.read")
    child_minted = exchange(setup, b, HELPER, subject_token=child["access_token"], subject_token_type=TXN,
                            resource=DOCS, scope="docs.read")
    task_ids = {opened["task_id"], child["task_id"]}
    completed = b.client.post(f"/tasks/{opened['task_id']}/complete", headers=bearer(setup, MAIL_AGENT))
    assert completed.status_code == 200, completed.text
    assert set(completed.json()["ended_tasks"]) == task_ids
    for replica in (a, b):
        for token in (minted["access_token"], child_minted["access_token"]):
            answer = replica.client.post("/introspect", data={"token": token}, headers=bearer(setup, RS_DOCS))
            assert answer.json() == {"active": False}, replica.name
        for task_token, agent in ((opened["access_token"], MAIL_AGENT), (child["access_token"], HELPER)):
            refused = replica.client.post("/token", data={
                "grant_type": GRANT, "subject_token": task_token, "subject_token_type": TXN,
                "actor_token": setup.domain.svid(agent.removeprefix("spiffe://example.org"), audience=setup.issuer),
                "actor_token_type": JWT, "resource": DOCS, "scope": "docs.read"})
            assert refused.status_code == 400 and "ended" in refused.json()["error_description"], refused.text
        told = replica.client.get("/revocations", params={"since": feeds_from[replica.name]},
                                  headers=bearer(setup, RS_DOCS)).json()["events"]
        assert {i for e in told for i in e["task_ids"]} == task_ids, replica.name
    for created_on, stream in streams:
        for replica in (a, b):  # a stream is served by every replica, whichever created it
            assert sessions_revoked(setup, replica, stream) == task_ids, (created_on.name, replica.name)


def test_issue9_a_key_rotated_through_a_is_served_by_b_within_seconds(
        deployment: tuple[Setup, list[Replica]]) -> None:
    setup, (a, b) = deployment
    before = {k["kid"] for k in b.client.get("/.well-known/jwks.json").json()["keys"]}
    rotated = deputy("keys", "rotate", "--config", str(setup.config))
    assert rotated.returncode == 0, rotated.stderr
    after = until(lambda: {k["kid"] for k in b.client.get("/.well-known/jwks.json").json()["keys"]} - before,
                  timeout=10, what="B's JWKS to publish the rotated key")
    assert len(after) == 1
    until(lambda: {k["kid"] for k in a.client.get("/.well-known/jwks.json").json()["keys"]} >= after, timeout=10,
          what="A's JWKS to publish it too")
    user = setup.idp.token("alice", audience=setup.issuer, scope="docs.read")
    minted = until(lambda: _kid(exchange(setup, b, subject_token=user, subject_token_type=ACCESS_TOKEN,
                                         resource=DOCS, scope="docs.read")["access_token"]) in after,
                   timeout=10, what="B to sign with the rotated key")
    assert minted


def test_issue11_3_a_block_added_on_a_refuses_the_agent_on_both_until_lifted_on_b(
        deployment: tuple[Setup, list[Replica]]) -> None:
    setup, (a, b) = deployment
    user = setup.idp.token("alice", audience=setup.issuer, scope="docs.read")
    form = {"subject_token": user, "subject_token_type": ACCESS_TOKEN, "resource": DOCS, "scope": "docs.read"}
    added = a.client.post("/admin/blocks", json={"agent": MAIL_AGENT, "for": "1h", "reason": "replicas"},
                          headers=bearer(setup, ADMIN))
    assert added.status_code == 201, added.text
    path = MAIL_AGENT.removeprefix("spiffe://example.org")
    time.sleep(1.1)  # fresh SVIDs, issued after the block's revocation cutoff: refused by the block itself
    for replica in (a, b):
        refused = replica.client.post("/token", data={"grant_type": GRANT, "actor_token": setup.domain.svid(
            path, audience=setup.issuer), "actor_token_type": JWT, **form})
        assert refused.json()["error"] == "unauthorized_client", (replica.name, refused.text)
    lifted = b.client.request("DELETE", f"/admin/blocks/{added.json()['block']['id']}", headers=bearer(setup, ADMIN))
    assert lifted.status_code == 200, lifted.text
    assert exchange(setup, a, **form)["access_token"]


def _kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def _feed_head(setup: Setup, replica: Replica) -> int:
    cursor = 0
    while True:
        page = replica.client.get("/revocations", params={"since": cursor}, headers=bearer(setup, RS_DOCS)).json()
        if not page["events"]:
            return int(page["next"])
        cursor = page["next"]

