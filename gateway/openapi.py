"""The OpenAPI 3.1 description of the public endpoints, served at `/openapi.json`.

FastAPI generates the document from the routes; the routes read their forms themselves (strictly, see
`http_forms.py`) and answer with JSON they build, so the models here describe those bodies for the
document. `tests/gateway/test_openapi.py` checks the running gateway's answers against these models,
so the description cannot drift from the behaviour.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field, RootModel


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
    actor_token: str = Field(
        description="The agent's workload identity token: a JWT-SVID, or a token of a configured workload issuer "
                    "(a Kubernetes service-account token, an OIDC workload token).")
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
    token_type: str = Field(description="Bearer for access tokens, DPoP for DPoP-bound ones, N_A for task tokens.")
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
    cnf: dict[str, str] | None = Field(default=None, description="RFC 9449 section 6.2: a DPoP-bound token's jkt.")


class TaskEndedBody(Body):
    task_id: str
    state: str
    ended_tasks: list[str]
    revoked_tokens: int
    matched: bool | None = Field(default=None, description="(admin) False: the task had already ended, nothing "
                                                           "was revoked.")
    warnings: list[str] = []


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
    agent_domain: str = Field(description="The agent's SPIFFE trust domain, or its workload issuer.")
    user: UserRef
    scope: str
    audiences: list[str]
    purpose: str | None
    created_at: int
    deadline: int
    implicit: bool
    state: str
    ended_at: int | None
    created_at_iso: str = Field(description="created_at as ISO 8601 UTC (2026-01-31T12:00:00Z); likewise below.")
    deadline_iso: str
    ended_at_iso: str | None


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
    issued_at_iso: str
    expires_at_iso: str
    revoked_at_iso: str | None


class TaskDetailBody(TaskBody):
    children: list[str]
    tokens: list[TokenRecordBody]


class RevokedCounts(Body):
    tasks: int
    tokens: int


class RevokedBody(Body):
    revoked_tasks: list[str]
    revoked_tokens: int
    revoked: RevokedCounts
    matched: bool = Field(description="False: the revocation matched nothing (no open task, no live token).")
    warnings: list[str] = Field(description="For instance: Deputy has never seen this agent or user.")


class ReasonBody(Body):
    reason: str | None = Field(default=None, description="Why: recorded in the audit event with the acting admin.")


class BlockRequest(Body):
    """Exactly one of agent, trust_domain, workload_issuer, user."""

    agent: str | None = Field(default=None, description="A SPIFFE ID, or a workload id at `issuer`.")
    trust_domain: str | None = None
    workload_issuer: str | None = Field(default=None, description="Every agent of this Kubernetes or OIDC issuer.")
    user: str | None = Field(default=None, description="A user's `sub`, at `issuer` (without it: at every issuer).")
    issuer: str | None = None
    for_: int | str = Field(alias="for", description="How long: seconds, or a span such as 90s, 15m, 2h, 7d.")
    reason: str = Field(description="Why: shown with the block and recorded in the audit trail.")


class BlockBody(Body):
    id: str
    kind: str = Field(description="agent, trust_domain, workload_issuer or user.")
    party: str
    issuer: str | None
    reason: str
    created_at: str = Field(description="ISO 8601 UTC, as every time of a block.")
    expires_at: str
    created_by: str = Field(description="The acting admin.")
    lifted_at: str | None
    lifted_by: str | None
    lift_reason: str | None


class BlockAdded(Body):
    block: BlockBody
    revoked: RevokedCounts
    warnings: list[str]


class BlockOne(Body):
    block: BlockBody


class BlockList(Body):
    blocks: list[BlockBody]


class AuditEventBody(Body):
    id: int
    decision_id: str
    at: int
    at_iso: str = Field(description="at as ISO 8601 UTC.")
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
    agent_domain: str | None
    policy_engine: str | None
    policy_latency_us: int | None
    policy_input: dict[str, Any] | None
    policy_result: dict[str, Any] | None


class AuditPage(Body):
    events: list[AuditEventBody]


class AuthorizationScheme(Body):
    spec_urn: str


class SsfConfigurationBody(Body):
    """SSF 1.0 §7.1: the transmitter metadata (CAEP interoperability profile §2.3)."""

    issuer: str
    spec_version: str
    jwks_uri: str = Field(description="The SET signing keys (RS256), not the access-token JWKS.")
    delivery_methods_supported: list[str]
    configuration_endpoint: str
    status_endpoint: str
    verification_endpoint: str
    authorization_schemes: list[AuthorizationScheme]
    default_subjects: str = Field(description="ALL: every subject of the receiver's resources is included.")


class SsfJwksBody(Body):
    keys: list[dict[str, Any]]


class DeliveryBody(Body):
    """SSF §6.1: push (urn:ietf:rfc:8935) to the receiver's endpoint_url, or poll (urn:ietf:rfc:8936) from
    Deputy's. In a request, authorization_header (push only) is sent with every push; it is never shown."""

    method: str
    endpoint_url: str | None = None
    authorization_header: str | None = None


class StreamRequestBody(BaseModel):
    """SSF §8.1.1: the receiver-supplied members (PATCH and PUT also `stream_id`); transmitter-supplied
    members may be sent, unchanged (`aud` is never updatable)."""

    model_config = ConfigDict(extra="allow")
    stream_id: str | None = None
    delivery: DeliveryBody | None = Field(default=None, description="Absent on create: poll.")
    events_requested: list[str] | None = None
    description: str | None = None


class StreamConfigBody(Body):
    """SSF §8.1.1: a stream's configuration."""

    stream_id: str
    iss: str
    aud: str | list[str] = Field(description="The audiences of the receiver's resources; never updatable.")
    delivery: DeliveryBody
    events_supported: list[str]
    events_requested: list[str] | None = None
    events_delivered: list[str]
    description: str | None = None
    min_verification_interval: int
    inactivity_timeout: int


class StreamRead(RootModel[StreamConfigBody | list[StreamConfigBody]]):
    """SSF §8.1.1.2: the stream asked for, or without `stream_id` the list of the caller's streams."""


class StreamStatusBody(Body):
    """SSF §8.1.2: enabled, paused (events held) or disabled (nothing held)."""

    stream_id: str
    status: str
    reason: str | None = None


class VerificationBody(Body):
    """SSF §8.1.4.2: a verification event echoing `state` is queued on the stream."""

    stream_id: str
    state: str | None = None


class SetErrorBody(Body):
    err: str
    description: str | None = None


class PollRequestBody(Body):
    """RFC 8936 §2.2, §2.4."""

    maxEvents: int | None = Field(default=None, ge=0, description="At most this many SETs; 0: acknowledge only.")
    returnImmediately: bool = Field(default=False, description="false: hold until a SET is waiting, at most "
                                                                "[ssf] poll_timeout seconds.")
    ack: list[str] = []
    setErrs: dict[str, SetErrorBody] = {}


class PollBody(Body):
    """RFC 8936 §2.3: SETs by jti, unacknowledged ones given again."""

    sets: dict[str, str]
    moreAvailable: bool


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


BEARER_SCHEME = {
    "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
    "description": "The caller's workload identity token (a JWT-SVID, or a Kubernetes or OIDC workload token; "
                   "audience: this gateway); for /admin also a user token for the admin audience ([admin] audience, "
                   "default <issuer>/admin) holding the admin group. A task token "
                   "never authenticates (transaction tokens section 13.12).",
}


TOKEN_HEADERS = [
    {"name": "OAuth-Client-Attestation", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "A client attestation JWT (typ oauth-client-attestation+jwt) from a configured attester: "
                    "the agent instance's posture (draft-ietf-oauth-attestation-based-client-auth-10 section 4)."},
    {"name": "OAuth-Client-Attestation-PoP", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "Its proof of possession (typ oauth-client-attestation-pop+jwt), signed with the attested "
                    "instance key, aud the gateway's issuer, a fresh iat and a jti used once (section 5.1)."},
    {"name": "DPoP", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "A DPoP proof (RFC 9449 section 4.2) for POST to the metadata's token_endpoint: the access "
                    "token is then bound to its key (cnf.jkt) and token_type is DPoP."},
]
"""The token endpoint's optional header fields (the attestation ones only read when `[[attesters]]` are
configured)."""


_NESTED: dict[str, Any] = {}
"""The schemas of models nested in JSON request bodies, added to the document's components by `install`."""


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route whose body is `model` as JSON (the route reads it itself)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    _NESTED.update(schema.pop("$defs", {}))
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def documented(body: type[BaseModel] | None, *, summary: str, form_body: type[BaseModel] | None = None,
               bearer: bool = True, stream: bool = False, headers: list[dict[str, Any]] | None = None,
               json: type[BaseModel] | None = None, status: int = 200) -> dict[str, Any]:
    """Keyword arguments for a route decorator: the `status` answer's body, the refusals, a form or JSON
    body, the security, header fields it reads."""
    extra: dict[str, Any] = form(form_body) if form_body is not None else json_body(json) if json is not None else {}
    if bearer:
        extra["security"] = [{"bearer": []}]
    if headers:
        extra["parameters"] = headers
    ok: dict[str, Any] = {"description": "Answered"}
    if stream:
        ok["content"] = {"text/event-stream": {"schema": {"type": "string", "description": (
            "Server-Sent Events: `event: revocation`, `id` the cursor, `data` a RevocationEvent as JSON.")}}}
    elif body is not None:
        ok["model"] = body
    return {"response_model": None, "summary": summary, "openapi_extra": extra, "status_code": status,
            "responses": {status: ok, **ERRORS}}


def install(app: FastAPI) -> None:
    """Serve the document at `/openapi.json` (no UI page), with the Bearer scheme the routes name."""

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title="Deputy", version=_version(), routes=app.routes, description=(
                "Delegated-access gateway for AI agents: RFC 8693 token exchange, tasks, revocation."))
            schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = BEARER_SCHEME
            schema["components"].setdefault("schemas", {}).update(_NESTED)
            _without_validation_errors(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]


def _without_validation_errors(schema: dict[str, Any]) -> None:
    """FastAPI documents a 422 for every route with parameters; Deputy answers a malformed parameter with
    400 `invalid_request` (documented with the other refusals), so the 422s and their schemas go."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    for name in ("HTTPValidationError", "ValidationError"):
        schema["components"].get("schemas", {}).pop(name, None)


def _version() -> str:
    try:
        return metadata.version("deputy-gateway")
    except metadata.PackageNotFoundError:
        return "0"
