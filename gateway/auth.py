"""FastAPI dependencies for the authenticated endpoints: each reads the Bearer token and asks the one
caller-authentication path (`delegation.callers.Callers`)."""

from __future__ import annotations

import time

from fastapi import Request

from token_exchange.actors import VerifiedActor
from token_exchange.errors import InvalidClient

from .console.session import Sessions, checked_csrf
from .wiring import Deputy


def deputy(request: Request) -> Deputy:
    return request.app.state.deputy  # type: ignore[no-any-return]


def bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidClient("authenticate with your workload identity token as a Bearer token")
    return token.strip()


async def agent(request: Request) -> VerifiedActor:
    """The calling agent, from its workload identity token (audience: this gateway)."""
    return await deputy(request).callers.agent(bearer(request), now=int(time.time()))


async def resource_client(request: Request) -> VerifiedActor:
    """An agent listed in some resource's `clients`: may introspect and read the revocation feed."""
    return await deputy(request).callers.resource_client(bearer(request), now=int(time.time()))


async def admin(request: Request) -> str:
    """An admin: a workload in `[admin] spiffe_ids`, or a user token for `[admin] audience` whose `claim` holds `value`;
    that token sent as a Bearer token, or held by the console session the request's cookie names."""
    now = int(time.time())
    return await deputy(request).callers.admin(_admin_token(request, now), now=now)


def _admin_token(request: Request, now: int) -> str:
    """The Bearer token; without one, the console session's (a state change must carry its CSRF token)."""
    sessions: Sessions | None = getattr(request.app.state, "console_sessions", None)
    session = None if sessions is None or "authorization" in request.headers else sessions.of(request, now=now)
    return bearer(request) if session is None else checked_csrf(request, session).token
