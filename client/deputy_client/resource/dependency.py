"""RFC 6750 for FastAPI resource servers: a dependency that admits a request only with a valid Deputy
access token carrying the scope it needs; and the route serving RFC 9728 metadata."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, HTTPException, Request

from .errors import BearerTokenError, InsufficientScope
from .metadata import metadata_url
from .verifier import AccessTokenVerifier, VerifiedAccess, required_scope_of


def require_scope(verifier: AccessTokenVerifier, scope: str) -> Callable[[Request], Awaitable[VerifiedAccess]]:
    """`Depends(require_scope(verifier, "mail.read"))` gives the route the `VerifiedAccess`, or answers
    401 `invalid_token` / 403 `insufficient_scope` with `WWW-Authenticate` (RFC 6750 §3)."""
    required = required_scope_of(scope)  # ValueError for an empty or malformed scope, at start-up

    async def dependency(request: Request) -> VerifiedAccess:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            # RFC 6750 §3.1: a request without credentials gets no error code.
            raise HTTPException(401, detail="a Bearer access token is required", headers={"WWW-Authenticate": "Bearer"})
        try:
            return await verifier.verify(token.strip(), required)
        except BearerTokenError as exc:
            challenge = f'Bearer error="{exc.error}", error_description="{exc.description}"'
            if isinstance(exc, InsufficientScope):
                challenge += f', scope="{exc.required}"'
            raise HTTPException(exc.status, detail={"error": exc.error, "error_description": exc.description},
                                headers={"WWW-Authenticate": challenge}) from exc

    return dependency


def serve_metadata(app: FastAPI | APIRouter, document: Mapping[str, Any]) -> None:
    """Serve `document` (from `protected_resource_metadata`) at its §3.1 well-known path, on GET."""
    body = dict(document)
    path = urlsplit(metadata_url(str(body["resource"]))).path

    async def protected_resource_metadata() -> dict[str, Any]:
        return body

    app.add_api_route(path, protected_resource_metadata, methods=["GET"], include_in_schema=False)
