"""What anyone may read: the RFC 8414 metadata, the signing keys (RFC 7517), and liveness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from token_exchange.rfc8414 import well_known_path

from .auth import deputy


def router(issuer: str) -> APIRouter:
    routes = APIRouter()

    @routes.get(well_known_path(issuer))
    async def authorization_server_metadata(request: Request) -> JSONResponse:
        """RFC 8414 §3."""
        return JSONResponse(deputy(request).metadata)

    @routes.get("/.well-known/jwks.json")
    async def jwks(request: Request) -> JSONResponse:
        """The public signing keys: current and previous (RFC 7517)."""
        return JSONResponse(deputy(request).keys.public_jwks(), headers={"Cache-Control": "max-age=60"})

    @routes.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return routes
