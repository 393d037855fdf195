"""What anyone may read: the RFC 8414 metadata, the signing keys (RFC 7517), liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from delegation.records import StoreError
from token_exchange.rfc8414 import well_known_path

from .auth import deputy
from .wiring import Deputy


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
        """Liveness: the process serves HTTP."""
        return {"status": "ok"}

    @routes.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: the store answers, the policy engine can decide and the revocation state is in sync;
        503 naming each problem."""
        problems = await readiness_problems(deputy(request))
        body = {"status": "unavailable", "problems": problems} if problems else {"status": "ready"}
        return JSONResponse(body, status_code=503 if problems else 200, headers={"Cache-Control": "no-store"})

    return routes


async def readiness_problems(parts: Deputy) -> list[str]:
    problems = []
    try:
        await parts.store.task("readyz-probe")
    except StoreError as exc:
        problems.append(f"store: {exc}")
    if problem := await parts.policy.problem():
        problems.append(problem)
    if problem := parts.store.revocation_sync_problem():
        problems.append(f"revocations: {problem}")
    return problems
