"""RFC 6750 and RFC 9449 §7 for FastAPI resource servers: a dependency that admits a request only with a
valid Deputy access token carrying the scope it needs, sent as a Bearer token or as a DPoP-bound token
with its proof."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import HTTPException, Request

from .errors import BearerTokenError, www_authenticate
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
