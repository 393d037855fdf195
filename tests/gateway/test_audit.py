"""Every decision at /token is an audit record, also refusals that happen before the exchange proper."""

from __future__ import annotations

import pytest

from tests.conftest import Deployment


@pytest.mark.parametrize(("form", "headers", "error"), [
    ({"grant_type": "password"}, {}, "unsupported_grant_type"),
    ({"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange"}, {}, "invalid_request"),
    ({"grant_type": "x"}, {"Authorization": "Basic Zm9vOmJhcg=="}, "invalid_client"),
])
def test_refusals_before_the_exchange_are_audited(deployment: Deployment, form: dict[str, str],
                                                  headers: dict[str, str], error: str) -> None:
    before = len(deployment.audit())
    response = deployment.client.post("/token", data=form, headers=headers)
    assert response.json()["error"] == error
    records = deployment.audit()[before:]
    assert [(r["action"], r["outcome"], r["error"]) for r in records] == [("exchange", "refused", error)]
    assert records[0]["reasons"] and records[0]["policy_revision"]


def test_rfc6749_5_2_authorization_header_is_refused_before_the_body_is_read(deployment: Deployment) -> None:
    response = deployment.client.post("/token", content=b"{}", headers={
        "Authorization": "Basic Zm9vOmJhcg==", "Content-Type": "application/json"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")


def test_granted_exchange_audit_names_agent_user_scope_and_token(deployment: Deployment) -> None:
    response = deployment.exchange(scope="mail.read mail.delete")
    assert response.status_code == 200
    record = deployment.audit()[-1]
    assert (record["outcome"], record["agent"], record["user_subject"]) == (
        "granted", "spiffe://example.org/agents/mail", "alice")
    assert (record["requested_scope"], record["granted_scope"]) == ("mail.delete mail.read", "mail.read")
    assert record["jti"] and record["task_id"]
