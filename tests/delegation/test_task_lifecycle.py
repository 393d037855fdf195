"""The whole life of a task over HTTP: open, mint within, delegate, widen (refused), complete, and every
derived token refused by exchange and inactive at introspection (transaction tokens draft, RFC 8693,
RFC 7009, RFC 7662)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from gateway.dev import DemoIdentities, DemoResource
from tests.conftest import store_config
from tests.support import ACCESS_TOKEN, GRANT, JWT, free_port, gateway_process

TXN = "urn:ietf:params:oauth:token-type:txn_token"
MAIL, DOCS = "https://mail.example.com", "https://docs.example.com"
AGENT, SUB, OTHER = (f"spiffe://example.org/agents/{n}" for n in ("mail", "summarizer", "other"))
DEEP1, DEEP2 = "spiffe://example.org/agents/deep1", "spiffe://example.org/agents/deep2"
WATCHER = "spiffe://example.org/rs/mail"
ADMIN = "spiffe://example.org/ops/admin"
IDP = "https://idp.example.com"


@dataclass
class Env:
    client: httpx2.Client
    issuer: str
    ids: DemoIdentities
    config: Path

    def svid(self, spiffe_id: str) -> str:
        return self.ids.svid(spiffe_id)

    def user(self, sub: str = "alice", **claims: Any) -> str:
        return self.ids.user_token(sub, scope="mail.read mail.send docs.read", **claims)

    def post(self, **form: Any) -> httpx2.Response:
        return self.client.post("/token", data={"grant_type": GRANT, **form})

    def open_task(self, agent: str = AGENT, scope: str = "mail.read mail.send", audiences: tuple[str, ...] = (MAIL,),
                  user: str | None = None, actor_token: str | None = None, **extra: Any) -> httpx2.Response:
        return self.post(subject_token=user or self.user(), subject_token_type=ACCESS_TOKEN,
                         actor_token=actor_token or self.svid(agent),
                         actor_token_type=JWT, requested_token_type=TXN, scope=scope, audience=list(audiences),
                         **extra)

    def within(self, task_token: str, agent: str = AGENT, scope: str = "mail.read", resource: str = MAIL,
               requested: str = ACCESS_TOKEN) -> httpx2.Response:
        return self.post(subject_token=task_token, subject_token_type=TXN, actor_token=self.svid(agent),
                         actor_token_type=JWT, scope=scope, resource=resource, requested_token_type=requested)

    def delegate(self, task_token: str, agent: str, scope: str = "mail.read", **extra: Any) -> httpx2.Response:
        return self.post(subject_token=task_token, subject_token_type=TXN, actor_token=self.svid(agent),
                         actor_token_type=JWT, scope=scope, requested_token_type=TXN, **extra)

    def introspect(self, token: str) -> dict[str, Any]:
        response = self.client.post("/introspect", data={"token": token},
                                    headers={"Authorization": f"Bearer {self.svid(WATCHER)}"})
        assert response.status_code == 200, response.text
        return response.json()

    def as_agent(self, agent: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.svid(agent)}"}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with running_env(tmp_path_factory.mktemp("tasks")) as running:
        yield running


@contextmanager
def running_env(directory: Path, store_url: str | None = None) -> Iterator[Env]:
    """A gateway with two resources, agents that may delegate to each other, a resource client and admins;
    on SQLite, or on the PostgreSQL database `store_url`."""
    ids = DemoIdentities(directory / "deployment")
    grants = {MAIL: ["mail.read", "mail.send"], DOCS: ["docs.read"]}
    data = {"access": {
        "grants": {AGENT: grants, SUB: {MAIL: ["mail.read"], DOCS: ["docs.read"]}, OTHER: grants,
                   DEEP1: {MAIL: ["mail.read"]}, DEEP2: {MAIL: ["mail.read"]}},
        "delegations": {IDP: {"alice": [AGENT, OTHER], "erin": [AGENT]}},
        "subagents": {AGENT: [SUB], SUB: [DEEP1], DEEP1: [DEEP2]},
        "max_delegation_depth": 2,
    }}
    resources = (DemoResource(MAIL, ("mail.read", "mail.send"), (WATCHER,)), DemoResource(DOCS, ("docs.read",)))
    config = ids.create(listen=f"127.0.0.1:{free_port()}", idp=IDP, trust_domain="example.org", data=data,
                        resources=resources, admins=(ADMIN,), admin_group="deputy-admins")
    config.write_text(config.read_text() + store_config(directory, store_url))
    with gateway_process(config) as url, httpx2.Client(base_url=url, timeout=10) as client:
        yield Env(client, ids.issuer, ids, config)


def _ok(response: httpx2.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def _refused(response: httpx2.Response, error: str) -> str:
    assert (response.status_code, response.json()["error"]) == (400, error), response.text
    return str(response.json()["error_description"])


def test_txn_tokens_11_4_open_task_returns_task_token_with_n_a_type(env: Env) -> None:
    body = _ok(env.open_task(purpose="triage inbox"))
    assert body["issued_token_type"] == TXN and body["token_type"] == "N_A" and body["task_id"]
    assert "refresh_token" not in body
    import jwt

    header = jwt.get_unverified_header(body["access_token"])
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert header["typ"] == "txntoken+jwt"
    assert claims["txn"] == body["task_id"] and claims["sub"] == "alice" and claims["aud"] == env.issuer
    # Issue 6: the purpose moved from the private `purp` claim to the draft's `tctx` (transaction tokens §9.2.3).
    assert claims["act"] == {"sub": AGENT} and claims["tctx"] == {"purpose": "triage inbox"}


def test_task_tokens_within_never_wider_than_the_task(env: Env) -> None:
    task = _ok(env.open_task(scope="mail.read"))
    token = _ok(env.within(task["access_token"], scope="mail.read"))
    import jwt

    claims = jwt.decode(token["access_token"], options={"verify_signature": False})
    assert claims["txn"] == task["task_id"] and claims["aud"] == MAIL and claims["act"] == {"sub": AGENT}
    _refused(env.within(task["access_token"], scope="mail.send"), "invalid_scope")
    _refused(env.within(task["access_token"], resource=DOCS, scope="docs.read"), "invalid_target")
    assert "another agent" in _refused(env.within(task["access_token"], agent=OTHER), "invalid_request")


def test_txn_tokens_13_12_task_token_never_authenticates(env: Env) -> None:
    task = _ok(env.open_task())
    response = env.client.post(f"/tasks/{task['task_id']}/complete",
                               headers={"Authorization": f"Bearer {task['access_token']}"})
    assert response.status_code == 401
    _refused(env.post(subject_token=env.user(), subject_token_type=ACCESS_TOKEN, actor_token=task["access_token"],
                      actor_token_type=JWT, scope="mail.read", resource=MAIL), "invalid_request")


def test_rfc8693_4_1_delegation_nests_act_and_only_narrows(env: Env) -> None:
    parent = _ok(env.open_task(audiences=(MAIL,)))
    child = _ok(env.delegate(parent["access_token"], SUB, scope="mail.read"))
    import jwt

    claims = jwt.decode(child["access_token"], options={"verify_signature": False})
    assert claims["act"] == {"sub": SUB, "act": {"sub": AGENT}}
    assert claims["exp"] <= jwt.decode(parent["access_token"], options={"verify_signature": False})["exp"]
    _refused(env.delegate(parent["access_token"], SUB, scope="docs.read"), "invalid_scope")
    _refused(env.delegate(parent["access_token"], SUB, audience=DOCS), "invalid_target")
    _refused(env.delegate(parent["access_token"], OTHER), "unauthorized_client")
    assert "outlive" in _refused(env.delegate(parent["access_token"], SUB, task_ttl="86400"), "invalid_request")
    shorter = _ok(env.delegate(parent["access_token"], SUB, task_ttl="60"))
    assert shorter["expires_in"] <= 60
    # the sub-agent mints within its own task only
    _ok(env.within(child["access_token"], agent=SUB))
    _refused(env.within(child["access_token"], agent=AGENT), "invalid_request")


def test_delegation_depth_is_bounded_by_policy_data(env: Env) -> None:
    root = _ok(env.open_task())
    one = _ok(env.delegate(root["access_token"], SUB))
    two = _ok(env.delegate(one["access_token"], DEEP1))
    assert "depth" in _refused(env.delegate(two["access_token"], DEEP2), "invalid_request")


def test_completing_a_task_revokes_descendants_and_tokens(env: Env) -> None:
    root = _ok(env.open_task())
    child = _ok(env.delegate(root["access_token"], SUB))
    root_token = _ok(env.within(root["access_token"]))["access_token"]
    child_token = _ok(env.within(child["access_token"], agent=SUB))["access_token"]
    assert env.introspect(root_token)["active"] is True
    assert env.introspect(child_token)["active"] is True
    assert env.client.post(f"/tasks/{root['task_id']}/complete", headers=env.as_agent(SUB)).status_code == 404
    done = env.client.post(f"/tasks/{root['task_id']}/complete", headers=env.as_agent(AGENT))
    assert done.status_code == 200 and set(done.json()["ended_tasks"]) == {root["task_id"], child["task_id"]}
    assert env.introspect(root_token) == {"active": False}
    assert env.introspect(child_token) == {"active": False}
    assert "ended" in _refused(env.within(root["access_token"]), "invalid_request")
    assert "ended" in _refused(env.within(child["access_token"], agent=SUB), "invalid_request")
    assert "ended" in _refused(env.delegate(root["access_token"], SUB), "invalid_request")


def test_rfc7009_2_1_revoking_task_token_ends_task_and_other_agents_cannot(env: Env) -> None:
    task = _ok(env.open_task())
    token = _ok(env.within(task["access_token"]))["access_token"]
    refused = env.client.post("/revoke", data={"token": task["access_token"]}, headers=env.as_agent(OTHER))
    assert (refused.status_code, refused.json()["error"]) == (400, "unauthorized_client")
    assert env.introspect(token)["active"] is True
    assert env.client.post("/revoke", data={"token": task["access_token"]},
                           headers=env.as_agent(AGENT)).status_code == 200
    assert env.introspect(token) == {"active": False}
    assert env.client.post("/revoke", data={"token": "garbage"}, headers=env.as_agent(AGENT)).status_code == 200


def test_rfc7662_2_2_caller_learns_nothing_of_other_audiences(env: Env) -> None:
    token = _ok(env.within(_ok(env.open_task())["access_token"]))["access_token"]
    response = env.client.post("/introspect", data={"token": token}, headers=env.as_agent(AGENT))
    assert response.status_code == 403
    assert env.introspect("not-a-token") == {"active": False}


def test_revocation_feed_names_ended_tasks_and_jtis(env: Env) -> None:
    headers = env.as_agent(WATCHER)
    start = env.client.get("/revocations", headers=headers).json()["next"]
    task = _ok(env.open_task())
    token = _ok(env.within(task["access_token"]))["access_token"]
    env.client.post(f"/tasks/{task['task_id']}/complete", headers=env.as_agent(AGENT))
    events = env.client.get("/revocations", params={"since": start}, headers=headers).json()["events"]
    import jwt

    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert any(task["task_id"] in e["task_ids"] and jti in e["jtis"] for e in events)
    assert env.client.get("/revocations", headers=env.as_agent(AGENT)).status_code == 403


def test_admin_revokes_everything_of_an_agent(env: Env) -> None:
    task = _ok(env.open_task(agent=OTHER))
    token = _ok(env.within(task["access_token"], agent=OTHER))["access_token"]
    denied = env.client.post("/admin/revoke", params={"agent": OTHER}, headers=env.as_agent(AGENT))
    assert denied.status_code == 403
    done = env.client.post("/admin/revoke", params={"agent": OTHER}, headers=env.as_agent(ADMIN))
    assert done.status_code == 200 and task["task_id"] in done.json()["revoked_tasks"]
    assert env.introspect(token) == {"active": False}
    listed = env.client.get("/admin/tasks", params={"agent": OTHER}, headers=env.as_agent(ADMIN)).json()
    assert {t["state"] for t in listed["tasks"]} == {"revoked"}
    audit = env.client.get("/admin/audit", params={"task": task["task_id"]}, headers=env.as_agent(ADMIN)).json()
    assert {e["action"] for e in audit["events"]} >= {"open_task", "exchange"}
    # The agent's credentials issued until the revocation stop working too; a fresh SVID works again.
    old_svid = env.ids.svid(OTHER, iat=int(time.time()) - 5)
    assert "revoked this agent" in _refused(env.open_task(agent=OTHER, actor_token=old_svid), "invalid_request")
    fresh_svid = env.ids.svid(OTHER, iat=int(time.time()) + 2)  # within the clock-skew leeway
    _ok(env.open_task(agent=OTHER, actor_token=fresh_svid))


def test_one_shot_exchange_returns_implicit_task_id(env: Env) -> None:
    body = _ok(env.post(subject_token=env.user(), subject_token_type=ACCESS_TOKEN, actor_token=env.svid(AGENT),
                        actor_token_type=JWT, scope="mail.read", resource=MAIL))
    assert body["task_id"] and body["token_type"] == "Bearer"


def _deputy(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    """The admin CLI, against this gateway's admin API as the admin workload."""
    variables = {**os.environ, "DEPUTY_ADDR": str(env.client.base_url).rstrip("/"), "DEPUTY_TOKEN": env.svid(ADMIN)}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=60,
                          env=variables)


def test_cli_lists_shows_and_completes_tasks_with_readable_tables(env: Env) -> None:
    task = _ok(env.open_task(purpose="cli check"))
    token = _ok(env.within(task["access_token"]))["access_token"]
    listing = _deputy(env, "tasks", "list", "--agent", AGENT, "--state", "open")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines()[0].split()[:3] == ["TASK", "STATE", "AGENT"]
    assert task["task_id"][:12] in listing.stdout
    shown = _deputy(env, "tasks", "show", task["task_id"])
    assert shown.returncode == 0 and "cli check" in shown.stdout and "JTI" in shown.stdout
    done = _deputy(env, "tasks", "complete", task["task_id"])
    assert done.returncode == 0 and "completed" in done.stdout
    assert env.introspect(token) == {"active": False}
    missing = _deputy(env, "tasks", "show", "no-such-task")
    assert missing.returncode == 1 and "not_found" in missing.stderr and "Traceback" not in missing.stderr


def test_cli_revokes_a_user_and_shows_the_audit_trail(env: Env) -> None:
    erin = env.user("erin", iat=int(time.time()) - 5)
    token = _ok(env.within(_ok(env.open_task(user=erin))["access_token"]))["access_token"]
    revoked = _deputy(env, "revoke", "--user", "erin", "--issuer", IDP)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert env.introspect(token) == {"active": False}
    assert "revoked this user" in _refused(env.open_task(user=erin), "invalid_request")
    _ok(env.open_task(user=env.user("erin", iat=int(time.time()) + 2)))  # a new login works again
    audit = _deputy(env, "audit", "--user", "erin", "--json", "--limit", "500")
    actions = {json.loads(line)["action"] for line in audit.stdout.splitlines()}
    assert {"open_task", "exchange"} <= actions
    bad = _deputy(env, "revoke", "--agent", "SPIFFE://Example.org/x")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_admins_are_a_user_group_or_listed_spiffe_ids_never_a_task_token(env: Env) -> None:
    task = _ok(env.open_task())
    admin_user = env.ids.user_token("carol", aud=f"{env.ids.issuer}/admin", groups=["staff", "deputy-admins"])
    plain_user = env.ids.user_token("dave", aud=f"{env.ids.issuer}/admin", groups=["staff"])
    assert env.client.get("/admin/tasks", headers={"Authorization": f"Bearer {admin_user}"}).status_code == 200
    assert env.client.get("/admin/tasks", headers={"Authorization": f"Bearer {plain_user}"}).status_code == 403
    response = env.client.get("/admin/tasks", headers={"Authorization": f"Bearer {task['access_token']}"})
    assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
    assert env.client.get("/admin/tasks").status_code == 401
    shown = env.client.get(f"/admin/tasks/{task['task_id']}", headers={"Authorization": f"Bearer {admin_user}"})
    assert shown.json()["chain"] == [AGENT] and shown.json()["state"] == "open"


def test_txn_tokens_6_an_expired_user_token_opens_no_task(env: Env) -> None:
    expired = env.ids.user_token("alice", scope="mail.read", ttl=-10)  # within the clock-skew leeway
    response = env.post(subject_token=expired, subject_token_type=ACCESS_TOKEN, actor_token=env.svid(AGENT),
                        actor_token_type=JWT, requested_token_type=TXN, scope="mail.read", audience=MAIL)
    assert "expired" in _refused(response, "invalid_request")


@pytest.mark.parametrize("path", ["/revocations?since=1000000000000000000000000000000",
                                  "/revocations?limit=0", "/revocations?since=-1"])
def test_feed_cursor_out_of_range_is_a_clean_400(env: Env, path: str) -> None:
    response = env.client.get(path, headers=env.as_agent(WATCHER))
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")


def test_admin_audit_time_out_of_range_is_a_clean_400_and_children_are_listed(env: Env) -> None:
    response = env.client.get("/admin/audit", params={"since": 10**30}, headers=env.as_agent(ADMIN))
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")
    parent = _ok(env.open_task())
    child = _ok(env.delegate(parent["access_token"], SUB))
    shown = env.client.get(f"/admin/tasks/{parent['task_id']}", headers=env.as_agent(ADMIN)).json()
    assert shown["children"] == [child["task_id"]]
