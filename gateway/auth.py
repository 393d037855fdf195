"""FastAPI dependencies for the authenticated endpoints: each reads the Bearer token and asks the one
caller-authentication path (`delegation.callers.Callers`)."""

from __future__ import annotations

import time

from fastapi import Request

from token_exchange.actors import VerifiedActor
from token_exchange.errors import InvalidClient

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
    """An admin: a workload in `[admin] spiffe_ids`, or a user token whose `[admin] claim` holds `value`."""
    return await deputy(request).callers.admin(bearer(request), now=int(time.time()))
