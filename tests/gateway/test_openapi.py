"""Issue 7 item 16: an OpenAPI 3.1 document of the public endpoints at /openapi.json, generated from the
routes, and true to the running gateway: every documented operation exists with its method, and real
answers validate against the documented bodies (extra members refused)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from pydantic import BaseModel

from gateway import openapi
from tests.delegation.test_task_lifecycle import ADMIN, SUB, WATCHER, Env, _ok, running_env

REQUIRED = {("/token", "post"), ("/revoke", "post"), ("/introspect", "post"), ("/tasks/{task_id}/complete", "post"),
            ("/revocations", "get"), ("/revocations/stream", "get"), ("/admin/tasks", "get"),
            ("/admin/tasks/{task_id}", "get"), ("/admin/tasks/{task_id}/revoke", "post"), ("/admin/revoke", "post"),
            ("/admin/audit", "get"), ("/admin/blocks", "post"), ("/admin/blocks", "get"),
            ("/admin/blocks/{block_id}", "delete"), ("/admin/tasks/{task_id}/complete", "post")}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with running_env(tmp_path_factory.mktemp("openapi")) as running:
        yield running


@pytest.fixture(scope="module")
def document(env: Env) -> dict[str, Any]:
    response = env.client.get("/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    return dict(response.json())


def operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, ops in document["paths"].items() for method in ops}


def test_openapi_3_1_document_covers_the_public_endpoints(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    assert operations(document) >= REQUIRED
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, method in REQUIRED:
        operation = document["paths"][path][method]
        assert {"400", "401", "503"} <= set(operation["responses"]), (path, method)
        assert {"200", "201"} & set(operation["responses"]), (path, method)
        assert "422" not in operation["responses"]  # malformed parameters are 400 invalid_request
        assert ("security" in operation) == (path != "/token"), (path, method)  # agents use actor_token there
    token_form = document["paths"]["/token"]["post"]["requestBody"]["content"]["application/x-www-form-urlencoded"]
    assert {"grant_type", "subject_token", "actor_token", "scope"} <= set(token_form["schema"]["required"])


def test_openapi_every_documented_operation_is_served_with_its_method(env: Env, document: dict[str, Any]) -> None:
    for path, method in sorted(operations(document)):
        url = path.replace("{task_id}", "no-such-task")
        if path == "/revocations/stream":
            continue  # needs credentials to answer at all; its 401 is checked below
        answered = env.client.request(method.upper(), url)  # no credentials: refused, but by that route
        assert answered.status_code != 405 and "no such endpoint" not in answered.text, (path, method)
        if "delete" not in document["paths"][path]:
            assert env.client.request("DELETE", url).status_code == 405, path  # and no method it does not document
    assert env.client.get("/revocations/stream").status_code == 401


def check(document: dict[str, Any], path: str, method: str, model: type[BaseModel], response: httpx2.Response,
          status: int = 200) -> None:
    schema = document["paths"][path][method]["responses"][str(status)]["content"]["application/json"]["schema"]
    assert str(schema["$ref"]).rpartition("/")[2] == model.__name__
    assert response.status_code == status, response.text
    model.model_validate(response.json())  # extra="forbid": nothing undocumented either


def test_openapi_real_answers_validate_against_the_documented_bodies(env: Env, document: dict[str, Any]) -> None:
    task = _ok(env.open_task())
    access = env.within(task["access_token"])
    check(document, "/token", "post", openapi.TokenBody, access)
    token = access.json()["access_token"]
    child = _ok(env.delegate(task["access_token"], SUB))
    watcher, admin = env.as_agent(WATCHER), env.as_agent(ADMIN)
    check(document, "/introspect", "post", openapi.IntrospectionBody,
          env.client.post("/introspect", data={"token": token}, headers=watcher))
    check(document, "/admin/tasks", "get", openapi.TaskList, env.client.get("/admin/tasks", headers=admin))
    check(document, "/admin/tasks/{task_id}", "get", openapi.TaskDetailBody,
          env.client.get(f"/admin/tasks/{task['task_id']}", headers=admin))
    check(document, "/tasks/{task_id}/complete", "post", openapi.TaskEndedBody,
          env.client.post(f"/tasks/{child['task_id']}/complete", headers=env.as_agent(SUB)))
    check(document, "/revoke", "post", openapi.EmptyBody,
          env.client.post("/revoke", data={"token": token}, headers=env.as_agent("spiffe://example.org/agents/mail")))
    check(document, "/admin/tasks/{task_id}/revoke", "post", openapi.TaskEndedBody,
          env.client.post(f"/admin/tasks/{task['task_id']}/revoke", headers=admin))
    check(document, "/introspect", "post", openapi.IntrospectionBody,
          env.client.post("/introspect", data={"token": token}, headers=watcher))
    check(document, "/revocations", "get", openapi.FeedPage, env.client.get("/revocations", headers=watcher))
    check(document, "/admin/audit", "get", openapi.AuditPage, env.client.get("/admin/audit", headers=admin))
    check(document, "/admin/revoke", "post", openapi.RevokedBody,
          env.client.post("/admin/revoke", params={"user": "nobody"}, headers=admin))
    blocked = env.client.post("/admin/blocks", json={"user": "nobody", "for": "1h", "reason": "drill"}, headers=admin)
    check(document, "/admin/blocks", "post", openapi.BlockAdded, blocked, status=201)
    check(document, "/admin/blocks", "get", openapi.BlockList, env.client.get("/admin/blocks", headers=admin))
    check(document, "/admin/blocks/{block_id}", "delete", openapi.BlockOne,
          env.client.request("DELETE", f"/admin/blocks/{blocked.json()['block']['id']}", headers=admin))
    request = document["paths"]["/admin/blocks"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"for", "reason"} <= set(request["required"])
    refused = env.client.post("/token", data={"grant_type": "password"})
    assert refused.status_code == 400
    openapi.OAuthErrorBody.model_validate(refused.json())


def test_openapi_token_documents_the_attestation_and_dpop_header_fields(document: dict[str, Any]) -> None:
    """draft-ietf-oauth-attestation-based-client-auth-10 §13.8 and RFC 9449 §4.1: the header fields /token reads."""
    parameters = document["paths"]["/token"]["post"]["parameters"]
    assert {(p["name"], p["in"], p["required"]) for p in parameters} == {
        ("OAuth-Client-Attestation", "header", False), ("OAuth-Client-Attestation-PoP", "header", False),
        ("DPoP", "header", False)}
