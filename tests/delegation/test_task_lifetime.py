"""A task does not outlive the user's authority (issue 7, item 5; transaction tokens draft §6).

A task opened with a user token lives no longer than that token (`exp`), whatever `task_ttl` or the
policy's `ttl` say, unless the policy's decision sets `"outlive_subject": true`; then the audit record
says so. Access tokens within a task, and delegated children, are capped by the task's deadline. A
non-boolean `outlive_subject` is a malformed decision: it denies.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from delegation.flows.steps import OUTLIVED_SUBJECT
from delegation.policy import Decision
from tests.conftest import HELPER_AGENT, MAIL, Deployment, deployed
from tests.support import ACCESS_TOKEN, GRANT, JWT

TXN = "urn:ietf:params:oauth:token-type:txn_token"
USER_TTL = 40

# Opening a task: the lifetime fields of the decision come from data.lifetimes, by the task's purpose.
TEST_POLICY = """
package deputy

import rego.v1

default decision := {"allow": false, "reasons": ["test policy: no rule allows this"]}

decision := object.union({"allow": true, "scope": input.request.scope, "reasons": ["test policy: task opened"]},
                         data.lifetimes[input.task.purpose]) if input.action == "open_task"

decision := {"allow": true, "scope": input.request.scope, "reasons": ["test policy: within the task"]} if {
    input.action in {"exchange", "delegate"}
}
"""
LIFETIMES = {
    "capped": {},
    "said-false": {"outlive_subject": False},
    "outlive": {"outlive_subject": True},
    "outlive-but-short": {"outlive_subject": True, "ttl": 30},
    "string": {"outlive_subject": "yes"},
    "null": {"outlive_subject": None},
    "number": {"outlive_subject": 1},
    "list": {"outlive_subject": [True]},
}


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


@pytest.fixture(scope="module")
def lifetimes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    files = {"deputy/exchange.rego": TEST_POLICY, "data.json": json.dumps({"lifetimes": LIFETIMES})}
    with deployed(tmp_path_factory.mktemp("lifetimes"), policy_files=files) as running:
        yield running


def open_task(deployment: Deployment, user_token: str, *, purpose: str, task_ttl: int = 120) -> dict[str, Any]:
    response = deployment.client.post("/token", data={
        "grant_type": GRANT, "subject_token": user_token, "subject_token_type": ACCESS_TOKEN,
        "actor_token": deployment.svid(), "actor_token_type": JWT, "requested_token_type": TXN,
        "audience": MAIL, "scope": "mail.read", "purpose": purpose, "task_ttl": str(task_ttl)})
    return {"status": response.status_code, **response.json()}


def within(deployment: Deployment, task_token: str) -> dict[str, Any]:
    response = deployment.client.post("/token", data={
        "grant_type": GRANT, "subject_token": task_token, "subject_token_type": TXN,
        "actor_token": deployment.svid(), "actor_token_type": JWT, "resource": MAIL, "scope": "mail.read"})
    assert response.status_code == 200, response.text
    return dict(response.json())


def task_audit(deployment: Deployment, task_id: str) -> dict[str, Any]:
    return next(e for e in deployment.audit() if e["task_id"] == task_id and e["action"] == "open_task")


def test_txn_tokens_6_the_packaged_policy_opens_no_task_longer_than_the_user_token(deployment: Deployment) -> None:
    user_token = deployment.user_token(ttl=USER_TTL)
    task = open_task(deployment, user_token, purpose="inbox", task_ttl=900)
    assert task["status"] == 200, task
    assert task["expires_in"] <= USER_TTL
    assert claims_of(task["access_token"])["exp"] <= claims_of(user_token)["exp"]


@pytest.mark.parametrize("purpose", ["capped", "said-false"])
def test_txn_tokens_6_a_task_and_its_tokens_live_no_longer_than_the_user_token(lifetimes: Deployment,
                                                                                purpose: str) -> None:
    user_token = lifetimes.user_token(ttl=USER_TTL)
    user_exp = claims_of(user_token)["exp"]
    task = open_task(lifetimes, user_token, purpose=purpose)
    assert task["status"] == 200, task
    assert task["expires_in"] <= USER_TTL and claims_of(task["access_token"])["exp"] <= user_exp
    assert claims_of(within(lifetimes, task["access_token"])["access_token"])["exp"] <= user_exp
    child = delegate(lifetimes, task["access_token"])
    assert claims_of(child["access_token"])["exp"] <= user_exp
    assert OUTLIVED_SUBJECT not in json.loads(task_audit(lifetimes, task["task_id"])["reasons"])


def delegate(deployment: Deployment, task_token: str) -> dict[str, Any]:
    response = deployment.client.post("/token", data={
        "grant_type": GRANT, "subject_token": task_token, "subject_token_type": TXN,
        "actor_token": deployment.svid("/agents/helper"), "actor_token_type": JWT, "requested_token_type": TXN,
        "scope": "mail.read"})
    assert response.status_code == 200, response.text
    assert claims_of(response.json()["access_token"])["act"]["sub"] == HELPER_AGENT
    return dict(response.json())


def test_txn_tokens_6_a_policy_may_let_a_task_outlive_the_user_token_and_the_audit_says_so(
        lifetimes: Deployment) -> None:
    user_token = lifetimes.user_token(ttl=USER_TTL)
    user_exp = claims_of(user_token)["exp"]
    task = open_task(lifetimes, user_token, purpose="outlive", task_ttl=120)
    assert task["status"] == 200, task
    task_exp = claims_of(task["access_token"])["exp"]
    assert task["expires_in"] > USER_TTL and task_exp > user_exp
    access = claims_of(within(lifetimes, task["access_token"])["access_token"])
    assert user_exp < access["exp"] <= task_exp  # the explicit grant carries over, the task deadline still caps
    assert claims_of(delegate(lifetimes, task["access_token"])["access_token"])["exp"] <= task_exp
    reasons = json.loads(task_audit(lifetimes, task["task_id"])["reasons"])
    assert reasons == ["test policy: task opened", OUTLIVED_SUBJECT]


def test_txn_tokens_6_outlive_subject_says_nothing_when_the_task_ends_first(lifetimes: Deployment) -> None:
    task = open_task(lifetimes, lifetimes.user_token(ttl=USER_TTL), purpose="outlive-but-short")
    assert task["status"] == 200 and task["expires_in"] <= 30
    assert OUTLIVED_SUBJECT not in json.loads(task_audit(lifetimes, task["task_id"])["reasons"])


@pytest.mark.parametrize("purpose", ["string", "null", "number", "list"])
def test_a_non_boolean_outlive_subject_is_a_malformed_decision_and_denies(lifetimes: Deployment,
                                                                          purpose: str) -> None:
    issued = lifetimes.issued_count()
    with_tasks = len([e for e in lifetimes.audit() if e["action"] == "open_task" and e["outcome"] == "granted"])
    task = open_task(lifetimes, lifetimes.user_token(ttl=USER_TTL), purpose=purpose)
    assert (task["status"], task["error"]) == (400, "unauthorized_client"), task
    assert "outlive_subject is not a boolean" in task["error_description"]
    assert "access_token" not in task and lifetimes.issued_count() == issued
    assert len([e for e in lifetimes.audit() if e["action"] == "open_task" and e["outcome"] == "granted"]) == with_tasks


@pytest.mark.parametrize(("document", "outlives"), [
    ({"allow": True}, False),
    ({"allow": True, "outlive_subject": False}, False),
    ({"allow": True, "outlive_subject": True}, True),
])
def test_decision_reads_outlive_subject_as_a_boolean_defaulting_to_false(document: dict[str, Any],
                                                                         outlives: bool) -> None:
    decision = Decision.from_document(document)
    assert decision.allow and decision.outlive_subject is outlives


@pytest.mark.parametrize("value", ["true", 1, 0, None, [True], {"yes": True}, 1.0])
def test_decision_with_a_non_boolean_outlive_subject_denies_naming_it(value: Any) -> None:
    decision = Decision.from_document({"allow": True, "scope": ["mail.read"], "outlive_subject": value})
    assert decision == Decision.deny("policy result outlive_subject is not a boolean")
    assert decision.outlive_subject is False
