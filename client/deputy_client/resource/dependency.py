"""RFC 6750 for FastAPI resource servers: a dependency that admits a request only with a valid Deputy
access token carrying the scope it needs, and the RFC 9728 metadata route that points at Deputy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, HTTPException, Request

from .errors import BearerTokenError, InsufficientScope
from .metadata import challenge, metadata_url
from .verifier import AccessTokenVerifier, VerifiedAccess, required_scope_of


def require_scope(verifier: AccessTokenVerifier, scope: str, *, advertise_metadata: bool = False
                  ) -> Callable[[Request], Awaitable[VerifiedAccess]]:
    """`Depends(require_scope(verifier, "mail.read"))` gives the route the `VerifiedAccess`, or answers
    401 `invalid_token` / 403 `insufficient_scope` with `WWW-Authenticate` (RFC 6750 §3). With
    `advertise_metadata`, every challenge carries `resource_metadata` (RFC 9728 §5.1) for the verifier's
    audience: serve the document with `serve_metadata`."""
    required = required_scope_of(scope)  # ValueError for an empty or malformed scope, at start-up

    def refuse(status: int, detail: Any, **params: str) -> HTTPException:
        value = challenge(verifier.audience, **params) if advertise_metadata else _bare_challenge(**params)
        return HTTPException(status, detail=detail, headers={"WWW-Authenticate": value})

    async def dependency(request: Request) -> VerifiedAccess:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise refuse(401, "a Bearer access token is required")  # RFC 6750 §3.1: no error code
        try:
            return await verifier.verify(token.strip(), required)
        except BearerTokenError as exc:
            scope_param = {"scope": str(exc.required)} if isinstance(exc, InsufficientScope) else {}
            raise refuse(exc.status, {"error": exc.error, "error_description": exc.description},
                         error=exc.error, description=exc.description, **scope_param) from exc

    return dependency


def _bare_challenge(**params: str) -> str:
    names = {"description": "error_description"}
    return " ".join(["Bearer", ", ".join(f'{names.get(k, k)}="{v}"' for k, v in params.items())]).strip()


def serve_metadata(app: FastAPI | APIRouter, document: Mapping[str, Any]) -> None:
    """Serve `document` (from `protected_resource_metadata`) at its §3.1 well-known path, on GET."""
    body = dict(document)
    path = urlsplit(metadata_url(str(body["resource"]))).path

    async def protected_resource_metadata() -> dict[str, Any]:
        return body

    app.add_api_route(path, protected_resource_metadata, methods=["GET"], include_in_schema=False)
