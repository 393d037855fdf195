"""The OpenAPI 3.1 description of the public endpoints, served at `/openapi.json`.

FastAPI generates the document from the routes; the routes read their forms themselves (strictly, see
`http_forms.py`) and answer with JSON they build, so the models here describe those bodies for the
document. `tests/gateway/test_openapi.py` checks the running gateway's answers against these models,
so the description cannot drift from the behaviour.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OAuthErrorBody(Body):
    """RFC 6749 §5.2: every refusal, with `Cache-Control: no-store`."""

    error: str = Field(examples=["invalid_request"])
    error_description: str = Field(description="Which parameter or token, and why (RFC 6749 section 5.2 charset).")


class TokenForm(Body):
    """RFC 8693 §2.1, form-encoded (RFC 6749 Appendix B); the transaction-token draft's context parameters."""

    grant_type: str = Field(examples=["urn:ietf:params:oauth:grant-type:token-exchange"])
    subject_token: str = Field(description="The user's token, or a task token (txn_token) within a task.")
    subject_token_type: str
    actor_token: str = Field(description="The agent's workload identity token (a JWT-SVID).")
    actor_token_type: str = Field(examples=["urn:ietf:params:oauth:token-type:jwt"])
    resource: list[str] = Field(default=[], description="RFC 8707 resource indicators (repeatable).")
    audience: list[str] = Field(default=[], description="Logical target names (repeatable).")
    scope: str = Field(description="Space-separated scopes (RFC 6749 section 3.3); required.")
    requested_token_type: str | None = None
    purpose: str | None = None
    task_ttl: int | None = None
    request_context: str | None = Field(default=None, description="A JSON object; becomes the task token's rctx.")
    request_details: str | None = Field(default=None, description="A JSON object; becomes the task token's tctx.")
    client_id: str | None = None


class TokenBody(Body):
    """RFC 8693 §2.2.1."""

    access_token: str
    issued_token_type: str
    token_type: str = Field(description="Bearer for access tokens, N_A for task tokens.")
    expires_in: int
    scope: str
    task_id: str


class TokenForm7009(Body):
    """RFC 7009 §2.1 and RFC 7662 §2.1: the token, and an optional hint."""

    token: str
    token_type_hint: str | None = None


class EmptyBody(Body):
    """RFC 7009 §2.2: 200 with an empty object, also for an unknown or invalid token."""


class IntrospectionBody(BaseModel):
    """RFC 7662 §2.2: `{"active": false}` alone, or the active token's claims for its resource."""

    model_config = ConfigDict(extra="forbid")
    active: bool
    token_type: str | None = None
    scope: str | None = None
    client_id: str | None = None
    sub: str | None = None
    aud: str | list[str] | None = None
    iss: str | None = None
    exp: int | None = None
    iat: int | None = None
    jti: str | None = None
    act: dict[str, Any] | None = None
    txn: str | None = None


class TaskEndedBody(Body):
    task_id: str
    state: str
    ended_tasks: list[str]
    revoked_tokens: int


class RevocationEvent(Body):
    seq: int = Field(description="The cursor: ask with since=seq for what follows.")
    at: int
    reason: str
    task_ids: list[str]
    jtis: list[str]


class FeedPage(Body):
    events: list[RevocationEvent]
    next: int


class UserRef(Body):
    iss: str
    sub: str


class TaskBody(Body):
    id: str
    parent_id: str | None
    root_id: str
    chain: list[str]
    agent: str
    user: UserRef
    scope: str
    audiences: list[str]
    purpose: str | None
    created_at: int
    deadline: int
    implicit: bool
    state: str
    ended_at: int | None


class TaskList(Body):
    tasks: list[TaskBody]


class TokenRecordBody(Body):
    jti: str
    user_issuer: str
    user_subject: str
    agent: str
    agent_domain: str
    audience: str
    scope: str
    issued_at: int
    expires_at: int
    task_id: str | None
    revoked_at: int | None


class TaskDetailBody(TaskBody):
    children: list[str]
    tokens: list[TokenRecordBody]


class RevokedBody(Body):
    revoked_tasks: list[str]
    revoked_tokens: int


class AuditEventBody(Body):
    id: int
    decision_id: str
    at: int
    action: str
    outcome: str
    error: str | None
    agent: str | None
    user_issuer: str | None
    user_subject: str | None
    audience: str | None
    requested_scope: str | None
    granted_scope: str | None
    reasons: list[str]
    policy_revision: str | None
    jti: str | None
    task_id: str | None


class AuditPage(Body):
    events: list[AuditEventBody]


ERRORS = {status: {"model": OAuthErrorBody, "description": text} for status, text in (
    (400, "A bad request (RFC 6749 section 5.2)."),
    (401, "The caller did not authenticate (RFC 6750 section 3, WWW-Authenticate)."),
    (403, "The caller may not do this (access_denied)."),
    (503, "The store or policy engine is unavailable; nothing was done (temporarily_unavailable)."),
)}
"""The refusals every endpoint may answer, in one shape."""


def form(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route whose body is `model` form-encoded (the route reads it itself)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": schema}}}}
