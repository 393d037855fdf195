"""MCP servers (the `mcp` 2.x SDK) that accept Deputy's access tokens (MCP Authorization, RFC 9068 §4).

- `DeputyTokenVerifier` is the SDK's `TokenVerifier`: audience, revocation and task state are checked by
  the wrapped `AccessTokenVerifier`, since the SDK does not (it only compares `resource` when
  `AuthSettings(validate_token_resource=True)`, which should be set too).
- `ToolScopes` gives tools their own scopes, which the SDK lacks: a `tools/call` whose token lacks the
  tool's scope is answered 403 `insufficient_scope` with the tool's full `scope` (MCP Authorization
  section 11.1.1), before the call reaches the session. `require_tool_scope` is the same check inside a
  handler, where only a tool error is possible.
- `DeputyAuthBackend` replaces the SDK's Bearer-only backend (`accept_deputy_tokens`), so that
  `Authorization: DPoP` with its proof reaches Deputy's verifier (`verify_request`, RFC 9449 §7.1)
  instead of counting as no token.

Only this module imports `mcp` (the `deputy-client[mcp]` extra).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import pydantic_core
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver.exceptions import ToolError
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from token_exchange.scope import Scope as OAuthScope

from .resource.errors import BearerTokenError
from .resource.metadata import challenge, metadata_url
from .resource.verifier import AccessTokenVerifier, VerifiedAccess, required_scope_of

logger = logging.getLogger(__name__)
ANY_SCOPE = OAuthScope(frozenset())  # the endpoint admits any valid token; tools ask for their own scope
MAX_INSPECTED_BODY = 1 << 20  # a request body larger than this is refused (413): every tools/call is inspected


class DeputyTokenVerifier:
    """The `mcp` SDK's `TokenVerifier` over Deputy's `AccessTokenVerifier` (started and closed by its owner).

    `verify_token` never raises into the SDK: any invalid, expired, revoked or foreign token is `None`
    (401 `invalid_token`), and the revocation state unconfirmed (`FeedStale`) refuses every token.
    """

    def __init__(self, verifier: AccessTokenVerifier, *, clock: Callable[[], float] = time.time) -> None:
        self.verifier = verifier
        self._clock = clock

    async def verify_token(self, token: str) -> AccessToken | None:
        """RFC 9068 §4 and revocation; `resource` is the matched audience, `claims` all of the token's."""
        try:
            access = await self.verifier.verify(token, ANY_SCOPE, now=int(self._clock()))
        except BearerTokenError as exc:
            logger.info("access token refused: %s", exc)
            return None
        return access_token(token, access, resource=self.verifier.audience)

    async def verify_request(self, *, authorization: list[str], dpop: list[str], method: str, url: str
                             ) -> AccessToken | None:
        """A request's credentials, Bearer or DPoP-bound with its proof (RFC 9449 §7.1), as the verifier's
        `verify_request` judges them; None for any refusal."""
        try:
            access = await self.verifier.verify_request(authorization=authorization, dpop=dpop, method=method,
                                                        url=url, required_scope=ANY_SCOPE, now=int(self._clock()))
        except BearerTokenError as exc:
            logger.info("access token refused: %s", exc)
            return None
        return access_token(authorization[0].partition(" ")[2].strip(), access, resource=self.verifier.audience)


def access_token(token: str, access: VerifiedAccess, *, resource: str) -> AccessToken:
    """The SDK's view of a verified Deputy token: the user is `subject`, the agent `client_id`, the task `txn`."""
    return AccessToken(token=token, client_id=access.agent, scopes=access.scope.sorted(),
                       expires_at=access.claims["exp"], resource=resource, subject=access.subject,
                       claims=dict(access.claims))


class DeputyAuthBackend(AuthenticationBackend):
    """Reads `Authorization: Bearer` (any case, as the SDK does) and `Authorization: DPoP` with its `DPoP`
    proof; anything else is no credentials. Puts the SDK's `AuthenticatedUser` in the scope, so
    `RequireAuthMiddleware`, `get_access_token()` and the session's owner check work unchanged."""

    def __init__(self, tokens: DeputyTokenVerifier) -> None:
        self.tokens = tokens

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, AuthenticatedUser] | None:
        authorization = conn.headers.getlist("authorization")
        if not authorization:
            return None
        access = await self.tokens.verify_request(authorization=authorization, dpop=conn.headers.getlist("dpop"),
                                                  method=conn.scope["method"], url=str(conn.url))
        return None if access is None else (AuthCredentials(access.scopes), AuthenticatedUser(access))


def accept_deputy_tokens(app: Starlette, tokens: DeputyTokenVerifier, *, tool_scopes: Mapping[str, str] | None = None,
                         metadata: Mapping[str, Any] | None = None) -> Starlette:
    """Swap the SDK's `BearerAuthBackend` in `MCPServer(...).streamable_http_app()` for `DeputyAuthBackend`;
    with `tool_scopes`, add `ToolScopes` inside it; with `metadata` (`protected_resource_metadata`), serve
    it instead of the SDK's document, which lists only `required_scopes`. Call before the app starts."""
    if app.middleware_stack is not None:
        raise RuntimeError("accept_deputy_tokens must be called before the app starts")
    places = [i for i, m in enumerate(app.user_middleware) if m.cls == AuthenticationMiddleware]  # type: ignore[comparison-overlap]
    if len(places) != 1:
        raise ValueError("not an MCP app with a token_verifier: no single AuthenticationMiddleware to replace")
    app.user_middleware[places[0]] = Middleware(AuthenticationMiddleware, backend=DeputyAuthBackend(tokens))
    if tool_scopes:
        app.user_middleware.append(Middleware(ToolScopes, scopes=tool_scopes, resource=tokens.verifier.audience))
    if metadata is not None:
        _replace_metadata_route(app, dict(metadata))
    return app


def _replace_metadata_route(app: Starlette, document: dict[str, Any]) -> None:
    path = urlsplit(metadata_url(str(document["resource"]))).path
    places = [i for i, r in enumerate(app.router.routes) if isinstance(r, Route) and r.path == path]
    if len(places) != 1:
        raise ValueError(f"no SDK metadata route at {path}: set AuthSettings(resource_server_url=) to the resource")

    async def protected_resource_metadata(_: Request) -> JSONResponse:
        return JSONResponse(document)

    app.router.routes[places[0]] = Route(path, protected_resource_metadata, methods=["GET"])


def require_tool_scope(scope: str) -> AccessToken:
    """Inside a tool handler: the caller's token if it carries `scope`, else a `ToolError` (a tool result
    with `isError`). The HTTP 403 the spec prefers is `ToolScopes`' to send: by the time a handler runs,
    the SDK gives it no way to set the HTTP status."""
    required, token = required_scope_of(scope), get_access_token()
    if token is None or not required <= OAuthScope.of(token.scopes):
        raise ToolError(f"insufficient_scope: this tool needs scope {required}")
    return token


class ToolScopes:
    """ASGI middleware: a JSON-RPC `tools/call` of a tool in `scopes` whose token lacks the tool's scope is
    answered 403 with `WWW-Authenticate: Bearer error="insufficient_scope", scope="<all it needs>",
    resource_metadata=...` (MCP Authorization section 11.1.1), and a JSON-RPC error body, which the SDK's
    client surfaces to the caller. Requests without a token pass on to the SDK's 401."""

    def __init__(self, app: ASGIApp, *, scopes: Mapping[str, str], resource: str) -> None:
        self.app = app
        self.scopes = {tool: required_scope_of(text) for tool, text in scopes.items()}
        self.resource = resource

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user = scope.get("user")
        if scope["type"] != "http" or scope["method"] != "POST" or not isinstance(user, AuthenticatedUser):
            await self.app(scope, receive, send)
            return
        messages, body = await _read_body(receive)
        if body is None:  # fail closed: a tool call the scope check cannot read does not reach the tools
            error = {"code": -32600, "message": f"request body over {MAX_INSPECTED_BODY} bytes"}
            await _send_json(send, 413, {"jsonrpc": "2.0", "id": None, "error": error}, {})
            return
        refusal = self._refusal(body, OAuthScope.of(user.scopes))
        if refusal is None:
            await self.app(scope, _replay(messages, receive), send)
        else:
            await _send_json(send, 403, refusal[1], {"www-authenticate": refusal[0]})

    def _refusal(self, body: bytes | None, granted: OAuthScope) -> tuple[str, dict[str, Any]] | None:
        call = _tool_call(body)
        needed = self.scopes.get(call[1]) if call else None
        if call is None or needed is None or needed <= granted:
            return None
        description = f"tool {call[1]} needs scope {needed}"
        value = challenge(self.resource, error="insufficient_scope", description=description, scope=str(needed))
        error = {"code": -32600, "message": f"insufficient_scope: {description}",
                 "data": {"error": "insufficient_scope", "scope": str(needed)}}
        return value, {"jsonrpc": "2.0", "id": call[0], "error": error}


def _tool_call(body: bytes | None) -> tuple[Any, str] | None:
    """`(id, tool name)` of a JSON-RPC `tools/call` request; None for anything else (the SDK judges it).
    Parsed by the SDK's own parser: any body the SDK reads as a tools/call is one here too (json.loads
    differs: it raised RecursionError on deep nesting, and reads a UTF-8 BOM or lone surrogates)."""
    try:
        message = pydantic_core.from_json(body) if body else None
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("method") != "tools/call":
        return None
    params = message.get("params")
    name = params.get("name") if isinstance(params, dict) else None
    return (message.get("id"), name) if isinstance(name, str) else None


async def _read_body(receive: Receive) -> tuple[list[Message], bytes | None]:
    """The request's messages read so far, and its body if it fits `MAX_INSPECTED_BODY` (else None)."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        size += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body") or size > MAX_INSPECTED_BODY:
            break
    if size > MAX_INSPECTED_BODY or messages[-1].get("more_body"):
        return messages, None
    return messages, b"".join(m.get("body", b"") for m in messages)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


async def _send_json(send: Send, status: int, document: dict[str, Any], headers: dict[str, str]) -> None:
    body = json.dumps(document).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           *((k.encode(), v.encode()) for k, v in headers.items())]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
