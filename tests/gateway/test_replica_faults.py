"""Faults with replicas on PostgreSQL (issue 9, Done-when "fault tests"): PostgreSQL stopped and restarted
under a running gateway (503, then recovery without a restart, nothing issued unrecorded), and a replica
killed with `kill -9` in the middle of revocations (every revocation that answered 2xx is in force on the
surviving replica and in its SSF stream)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import jwt
import psycopg
import psycopg.conninfo
import pytest

from tests.conftest import ACCESS_TOKEN, GRANT, JWT, MAIL_AGENT, Setup
from tests.postgres import Cluster, Server
from tests.replicas import DOCS, RS_DOCS, Replica, replica_setup, replicas, until

TXN = "urn:ietf:params:oauth:token-type:txn_token"
SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
TASKS = 60


@pytest.fixture
def deployment(tmp_path: Path, postgresql_cluster: Cluster) -> Iterator[tuple[Setup, str]]:
    server = Server(postgresql_cluster.url)
    url = server.create()
    setup = replica_setup(tmp_path, url)
    try:
        yield setup, url
    finally:
        setup.jwks_server.close()


def form(setup: Setup, **fields: str) -> dict[str, str]:
    return {"grant_type": GRANT, "actor_token": setup.domain.svid("/agents/mail", audience=setup.issuer),
            "actor_token_type": JWT, **fields}


def one_shot(setup: Setup) -> dict[str, str]:
    user = setup.idp.token("alice", audience=setup.issuer, scope="docs.read")
    return form(setup, subject_token=user, subject_token_type=ACCESS_TOKEN, resource=DOCS, scope="docs.read")


def bearer(setup: Setup, spiffe_id: str) -> dict[str, str]:
    svid = setup.domain.svid(spiffe_id.removeprefix("spiffe://example.org"), audience=setup.issuer)
    return {"Authorization": f"Bearer {svid}"}


def recorded_jtis(url: str) -> set[str]:
    with psycopg.connect(url) as connection:
        issued = {r[0] for r in connection.execute("SELECT jti FROM issued_tokens")}
        audited = {r[0] for r in connection.execute("SELECT jti FROM audit_events WHERE jti IS NOT NULL")}
    return issued & audited


def test_issue9_with_postgresql_stopped_exchanges_fail_closed_and_recover_without_a_restart(
        deployment: tuple[Setup, str], postgresql_cluster: Cluster) -> None:
    setup, url = deployment
    answered: list[tuple[int, dict[str, Any]]] = []
    with replicas(setup, 1) as (a,):
        def exchange() -> int:
            response = a.client.post("/token", data=one_shot(setup))
            answered.append((response.status_code, response.json()))
            return response.status_code

        assert exchange() == 200
        postgresql_cluster.stop()
        began = time.monotonic()
        assert exchange() == 503
        assert time.monotonic() - began < 10  # fails fast, not after a hang
        assert answered[-1][1]["error"] == "temporarily_unavailable", answered[-1]
        statuses = {exchange() for _ in range(10)}
        assert statuses == {503}
        ready = a.ready()
        assert ready.status_code == 503 and any(p.startswith("store:") for p in ready.json()["problems"]), ready.text
        postgresql_cluster.start()
        until(lambda: exchange() == 200, timeout=30, what="an exchange to succeed once PostgreSQL is back")
        until(lambda: a.ready().status_code == 200, timeout=30, what="/readyz to recover")
        assert exchange() == 200
        log = a.log.read_text(errors="replace")
    issued = {jwt.decode(body["access_token"], options={"verify_signature": False})["jti"]
              for status, body in answered if status == 200}
    assert issued and issued <= recorded_jtis(url)  # nothing issued unrecorded, with its audit event
    assert all(status in (200, 503) for status, _ in answered)
    assert "Traceback" not in log, log


def test_issue9_a_replica_that_lost_its_notifications_mints_nothing_and_says_why_until_it_caught_up(
        deployment: tuple[Setup, str], postgresql_cluster: Cluster) -> None:
    setup, url = deployment
    dbname = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with replicas(setup, 1) as (a,), psycopg.connect(postgresql_cluster.url, autocommit=True) as admin:
        assert a.client.post("/token", data=one_shot(setup)).status_code == 200
        admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')  # its listener cannot come back
        try:
            ended = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
                                  " AND application_name LIKE '%% listener'", (dbname,)).fetchall()
            assert ended, "no listener connection to end"
            ready = until(lambda: (r := a.ready()).status_code == 503 and r, timeout=10, what="/readyz to say 503")
            assert any(p.startswith("revocations:") for p in ready.json()["problems"]), ready.text
            refused = a.client.post("/token", data=one_shot(setup))
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "temporarily_unavailable"
            assert "cannot confirm its revocation state" in refused.json()["error_description"]
        finally:
            admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
        until(lambda: a.ready().status_code == 200, timeout=30, what="/readyz once the listener is back")
        assert a.client.post("/token", data=one_shot(setup)).status_code == 200


def open_tasks(setup: Setup, replica: Replica, count: int) -> list[tuple[str, str]]:
    """`count` tasks, each with an access token minted in it: (task id, access token)."""
    tasks = []
    for _ in range(count):
        user = setup.idp.token("alice", audience=setup.issuer, scope="docs.read")
        opened = replica.client.post("/token", data=form(setup, subject_token=user, subject_token_type=ACCESS_TOKEN,
                                                         requested_token_type=TXN, audience=DOCS, scope="docs.read"))
        assert opened.status_code == 200, opened.text
        minted = replica.client.post("/token", data=form(setup, subject_token=opened.json()["access_token"],
                                                         subject_token_type=TXN, resource=DOCS, scope="docs.read"))
        assert minted.status_code == 200, minted.text
        tasks.append((opened.json()["task_id"], minted.json()["access_token"]))
    return tasks


def complete_all(setup: Setup, a: Replica, tasks: list[tuple[str, str]]) -> set[str]:
    """Complete each task through `a` until `a` stops answering; the ids whose completion answered 2xx."""
    completed = set()
    with httpx2.Client(base_url=a.url, timeout=5) as client:
        for task_id, _ in tasks:
            try:
                response = client.post(f"/tasks/{task_id}/complete", headers=bearer(setup, MAIL_AGENT))
            except httpx2.HTTPError:
                break
            if 200 <= response.status_code < 300:
                completed.add(task_id)
    return completed


def session_ids(setup: Setup, replica: Replica, stream_id: str) -> set[str]:
    ids: set[str] = set()
    while True:
        polled = replica.client.post(f"/ssf/poll/{stream_id}", json={"returnImmediately": True, "maxEvents": 100},
                                     headers=bearer(setup, RS_DOCS)).json()
        for token in polled["sets"].values():
            claims = jwt.decode(token, options={"verify_signature": False})
            if SESSION_REVOKED in claims["events"] and claims["sub_id"]["format"] == "complex":
                ids.add(claims["sub_id"]["session"]["id"])
        if not polled["sets"]:
            return ids
        replica.client.post(f"/ssf/poll/{stream_id}", json={"ack": list(polled["sets"]), "maxEvents": 0,
                                                          "returnImmediately": True}, headers=bearer(setup, RS_DOCS))


def test_issue9_a_replica_killed_mid_revocations_leaves_every_answered_one_in_force_on_the_other(
        deployment: tuple[Setup, str]) -> None:
    setup, _ = deployment
    with replicas(setup, 2) as (a, b):
        stream = b.client.post("/ssf/streams", json={}, headers=bearer(setup, RS_DOCS))
        assert stream.status_code == 201, stream.text
        tasks = open_tasks(setup, b, TASKS)
        completed: set[str] = set()
        worker = threading.Thread(target=lambda: completed.update(complete_all(setup, a, tasks)))
        worker.start()
        until(lambda: _ended_count(setup, b) >= TASKS // 4, timeout=30,
              what="a quarter of the tasks to be completed")
        a.kill()
        worker.join(timeout=30)
        assert TASKS // 4 <= len(completed) < TASKS, len(completed)
        for task_id, token in tasks:
            if task_id in completed:
                answer = b.client.post("/introspect", data={"token": token}, headers=bearer(setup, RS_DOCS))
                assert answer.json() == {"active": False}, task_id
        assert completed <= session_ids(setup, b, stream.json()["stream_id"])


def _ended_count(setup: Setup, replica: Replica) -> int:
    told = replica.client.get("/revocations", params={"since": 0}, headers=bearer(setup, RS_DOCS)).json()["events"]
    return len({i for e in told for i in e["task_ids"]})
