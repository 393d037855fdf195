"""Issue 11 section 3: admin blocks over real HTTP against a running gateway. A block refuses every exchange
by its party before the policy is asked, revokes all the party holds, expires by itself, and is listed,
lifted and audited with the reason and the acting admin; plus the admin API's task id prefixes, ISO 8601
times, and revocations that say when they matched nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import STORES, store_for
from tests.delegation.test_task_lifecycle import ADMIN, AGENT, IDP, OTHER, SUB, Env, _ok, running_env

Json = dict[str, Any]


@pytest.fixture(scope="module", params=STORES)
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with running_env(tmp_path_factory.mktemp("blocks"), store_for(request, request.param)) as running:
        yield running


def admin(env: Env) -> dict[str, str]:
    return env.as_agent(ADMIN)


def block(env: Env, **body: Any) -> Json:
    response = env.client.post("/admin/blocks", json=body, headers=admin(env))
    assert response.status_code == 201, response.text
    return dict(response.json())


def lift(env: Env, block_id: str, reason: str = "done") -> Json:
    return _ok(env.client.request("DELETE", f"/admin/blocks/{block_id}", json={"reason": reason},
                                  headers=admin(env)))


def audit(env: Env, action: str) -> list[Json]:
    events = _ok(env.client.get("/admin/audit", params={"since": "10m", "limit": 1000}, headers=admin(env)))
    return [e for e in events["events"] if e["action"] == action]


def test_issue11_3_a_blocked_agent_is_refused_before_the_policy_and_its_tasks_are_revoked(env: Env) -> None:
    task = _ok(env.open_task(agent=OTHER))
    added = block(env, agent=OTHER, **{"for": "1h"}, reason="leaked key")
    assert added["revoked"] == {"tasks": 1, "tokens": 0} and added["warnings"] == []
    shown = added["block"]
    assert (shown["kind"], shown["party"], shown["created_by"], shown["reason"]) == (
        "agent", OTHER, ADMIN, "leaked key")
    assert shown["expires_at"].endswith("Z") and shown["created_at"] < shown["expires_at"]
    assert _ok(env.client.get(f"/admin/tasks/{task['task_id']}", headers=admin(env)))["state"] == "revoked"
    refused = env.open_task(agent=OTHER)  # a fresh SVID, issued after the block: refused all the same
    assert (refused.status_code, refused.json()["error"]) == (400, "unauthorized_client")
    assert refused.json()["error_description"].startswith("actor_token rejected: an admin blocked this agent until ")
    denied = [e for e in audit(env, "open_task") if e["outcome"] == "refused" and e["agent"] == OTHER]
    assert denied and denied[0]["policy_engine"] is None and denied[0]["policy_input"] is None  # never asked
    assert _ok(env.open_task(agent=AGENT))["task_id"]  # other agents are not affected
    lifted = lift(env, shown["id"][:8], reason="key rotated")
    assert (lifted["block"]["lifted_by"], lifted["block"]["lift_reason"]) == (ADMIN, "key rotated")
    time.sleep(1.1)  # the block's revocation cut off credentials issued until its second (iat <= cutoff)
    assert _ok(env.open_task(agent=OTHER))["task_id"]  # a credential issued after that works again


def test_issue11_3_blocks_and_their_lifting_are_audited_with_the_reason_and_the_admin(env: Env) -> None:
    added = block(env, agent=SUB, **{"for": 600}, reason="drill")
    lift(env, added["block"]["id"], reason="drill over")
    blocked = [e for e in audit(env, "block") if SUB in e["reasons"][0]]
    unblocked = [e for e in audit(env, "unblock") if SUB in e["reasons"][0]]
    assert blocked[0]["agent"] == ADMIN and "reason: drill" in blocked[0]["reasons"]
    assert unblocked[0]["agent"] == ADMIN and "reason: drill over" in unblocked[0]["reasons"]
    assert blocked[0]["at_iso"].endswith("Z")


def test_issue11_3_a_block_expires_by_itself(env: Env) -> None:
    added = block(env, user="erin", issuer=IDP, **{"for": "2s"}, reason="short")
    listed = _ok(env.client.get("/admin/blocks", headers=admin(env)))["blocks"]
    assert added["block"]["id"] in [b["id"] for b in listed]
    refused = env.open_task(user=env.user("erin"))
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_grant")
    assert "an admin blocked this user" in refused.json()["error_description"]
    time.sleep(3)
    assert _ok(env.open_task(user=env.user("erin")))["task_id"]  # a user token issued after the block
    assert added["block"]["id"] not in [b["id"] for b in _ok(env.client.get("/admin/blocks", headers=admin(env)))[
        "blocks"]]
    every = _ok(env.client.get("/admin/blocks", params={"all": "true"}, headers=admin(env)))["blocks"]
    assert added["block"]["id"] in [b["id"] for b in every]
    gone = env.client.request("DELETE", f"/admin/blocks/{added['block']['id']}", headers=admin(env))
    assert (gone.status_code, gone.json()["error"]) == (404, "not_found")


def test_issue11_3_a_trust_domain_block_refuses_its_agents_and_warns_when_never_seen(env: Env) -> None:
    added = block(env, trust_domain="elsewhere.test", **{"for": "1h"}, reason="unknown domain")
    assert added["warnings"] == ["Deputy has never seen domain elsewhere.test (no task of it is kept): check the name"]
    lift(env, added["block"]["id"])
    domain = block(env, trust_domain="example.org", **{"for": "1h"}, reason="everything")
    time.sleep(1.1)  # past the revocation's cutoff second: fresh SVIDs
    try:
        refused = env.open_task(agent=AGENT)
        assert refused.json()["error"] == "unauthorized_client", refused.text
    finally:  # the admin is in example.org too: a block never locks an admin out
        lift(env, domain["block"]["id"])
    time.sleep(1.1)  # past the revocation's cutoff second


@pytest.mark.parametrize(("body", "message"), [
    ({"for": "1h", "reason": "x"}, "give exactly one of agent, trust_domain, workload_issuer or user"),
    ({"agent": AGENT, "reason": "x"}, "give how long the block lasts"),
    ({"agent": AGENT, "for": "1h"}, "give a reason for the block"),
    ({"agent": AGENT, "for": "soon", "reason": "x"}, "for must be seconds or a span"),
    ({"agent": AGENT, "for": -5, "reason": "x"}, "for must be a positive span"),
    ({"agent": AGENT, "for": 10**30, "reason": "x"}, "at most 36500d"),  # was a 500: past any date
    ({"agent": AGENT, "for": "999999999d", "reason": "x"}, "at most 36500d"),
    ({"agent": AGENT, "for": "\u0661\u0662h", "reason": "x"}, "for must be seconds or a span"),  # ASCII digits
    ({"user": "", "for": "1h", "reason": "x"}, "user must be 1 to"),
    ({"agent": "system:serviceaccount:a:b", "for": "1h", "reason": "x"}, "give its workload issuer too"),
    ({"agent": AGENT, "for": "1h", "reason": "x", "until": 5}, "unknown member until"),
])
def test_issue11_3_a_malformed_block_is_refused_with_invalid_request(env: Env, body: Json, message: str) -> None:
    response = env.client.post("/admin/blocks", json=body, headers=admin(env))
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request"), response.text
    assert message in response.json()["error_description"]


def test_issue11_3_only_admins_may_block(env: Env) -> None:
    response = env.client.post("/admin/blocks", json={"agent": SUB, "for": "1h", "reason": "x"},
                               headers=env.as_agent(AGENT))
    assert response.status_code == 403
    assert env.client.get("/admin/blocks").status_code == 401


def test_issue11_2_task_ids_are_accepted_as_unique_prefixes(env: Env) -> None:
    task = _ok(env.open_task(agent=AGENT))
    shown = _ok(env.client.get(f"/admin/tasks/{task['task_id'][:12]}", headers=admin(env)))
    assert shown["id"] == task["task_id"] and shown["created_at_iso"].endswith("Z")
    revoked = _ok(env.client.post(f"/admin/tasks/{task['task_id'][:12]}/revoke", json={"reason": "stuck"},
                                  headers=admin(env)))
    assert revoked["matched"] is True and revoked["task_id"] == task["task_id"]
    again = _ok(env.client.post(f"/admin/tasks/{task['task_id']}/revoke", headers=admin(env)))
    assert again["matched"] is False and "had already ended" in again["warnings"][0]
    assert env.client.get("/admin/tasks/zzzzzzzz", headers=admin(env)).status_code == 404
    reasons = [e["reasons"] for e in audit(env, "admin_revoke") if e["task_id"] == task["task_id"]]
    assert reasons == [[f"admin_revoke by {ADMIN}"], [f"admin_revoke by {ADMIN}", "reason: stuck"]]  # newest first


def test_issue11_1_an_admin_completes_a_task_by_prefix_with_a_reason(env: Env) -> None:
    task = _ok(env.open_task(agent=AGENT))
    done = _ok(env.client.post(f"/admin/tasks/{task['task_id'][:10]}/complete", json={"reason": "finished by hand"},
                               headers=admin(env)))
    assert (done["state"], done["matched"]) == ("completed", True)
    event = next(e for e in audit(env, "admin_complete") if e["task_id"] == task["task_id"])
    assert event["agent"] == ADMIN and event["reasons"] == [f"admin_complete by {ADMIN}", "reason: finished by hand"]


def test_issue11_1_a_revocation_that_matched_nothing_says_so_and_warns_of_a_party_never_seen(env: Env) -> None:
    nobody = "spiffe://example.org/agents/nobody"
    answer = _ok(env.client.post("/admin/revoke", params={"agent": nobody}, json={"reason": "typo?"},
                                 headers=admin(env)))
    assert answer["matched"] is False and answer["revoked"] == {"tasks": 0, "tokens": 0}
    assert answer["warnings"] == [f"Deputy has never seen agent {nobody} (no task of it is kept): check the name"]
    event = next(e for e in audit(env, "admin_revoke") if nobody in e["reasons"][0])
    assert event["agent"] == ADMIN and event["reasons"][1] == "reason: typo?"


def test_issue11_2_audit_since_takes_iso_8601_and_relative_spans(env: Env) -> None:
    for since in ("1h", "2020-01-01T00:00:00Z", "1577836800"):
        assert _ok(env.client.get("/admin/audit", params={"since": since}, headers=admin(env)))["events"]
    future = _ok(env.client.get("/admin/audit", params={"since": "2999-01-01T00:00:00Z"}, headers=admin(env)))
    assert future["events"] == []
    for nonsense in ("yesterday", "\u00b2", "999999999d"):  # a superscript digit and a huge span were 500s
        bad = env.client.get("/admin/audit", params={"since": nonsense}, headers=admin(env))
        assert (bad.status_code, bad.json()["error"]) == (400, "invalid_request"), bad.text
