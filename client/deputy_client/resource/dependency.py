"""RFC 6750 and RFC 9449 §7 for FastAPI resource servers: a dependency that admits a request only with a
valid Deputy access token carrying the scope it needs, sent as a Bearer token or as a DPoP-bound token
with its proof; and the route serving RFC 9728 metadata."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, HTTPException, Request

from .errors import BearerTokenError, www_authenticate
from .metadata import metadata_url
from .verifier import AccessTokenVerifier, VerifiedAccess, required_scope_of


def require_scope(verifier: AccessTokenVerifier, scope: str, *, public_origin: str | None = None
                  ) -> Callable[[Request], Awaitable[VerifiedAccess]]:
    """`Depends(require_scope(verifier, "mail.read"))` gives the route the `VerifiedAccess`, or answers
    400 `invalid_request`, 401 `invalid_token` / `invalid_dpop_proof`, 403 `insufficient_scope`, with a
    `WWW-Authenticate` challenge for both schemes (RFC 6750 §3, RFC 9449 §7.1).

    A DPoP proof's `htu` is checked against the URL the request arrived at; behind a proxy that changes
    it, give `public_origin` (e.g. "https://mail.example.com"): the URL is then that origin plus the path."""
    required = required_scope_of(scope)  # ValueError for an empty or malformed scope, at start-up
    algs = " ".join(sorted(verifier.dpop_algorithms))

    async def dependency(request: Request) -> VerifiedAccess:
        url = str(request.url) if public_origin is None else public_origin.rstrip("/") + request.url.path
        try:
            return await verifier.verify_request(
                authorization=request.headers.getlist("authorization"), dpop=request.headers.getlist("dpop"),
                method=request.method, url=url, required_scope=required)
        except BearerTokenError as exc:
            detail = {"error": exc.error, "error_description": exc.description} if exc.error else exc.description
            raise HTTPException(exc.status, detail=detail,
                                headers={"WWW-Authenticate": www_authenticate(exc, algs=algs)}) from exc

    return dependency


def serve_metadata(app: FastAPI | APIRouter, document: Mapping[str, Any]) -> None:
    """Serve `document` (from `protected_resource_metadata`) at its §3.1 well-known path, on GET."""
    body = dict(document)
    path = urlsplit(metadata_url(str(body["resource"]))).path

    async def protected_resource_metadata() -> dict[str, Any]:
        return body

    app.add_api_route(path, protected_resource_metadata, methods=["GET"], include_in_schema=False)
