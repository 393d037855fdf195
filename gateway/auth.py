"""Who is calling: an agent by its JWT-SVID as Bearer, an admin by SVID or by a user token with the admin
group. A task token never authenticates anyone (transaction tokens §13.12): it fails SVID verification."""

from __future__ import annotations

import time

from fastapi import Request

from token_exchange.errors import InvalidClient, OAuthError
from token_exchange.jws import TokenError

from .wiring import Deputy


class Forbidden(OAuthError):
    """Authenticated, but not allowed here."""

    error = "access_denied"
    status = 403


def deputy(request: Request) -> Deputy:
    return request.app.state.deputy  # type: ignore[no-any-return]


def bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidClient("authenticate with your JWT-SVID as a Bearer token")
    return token.strip()


async def agent(request: Request) -> str:
    """The calling agent's SPIFFE ID, from its JWT-SVID (audience: this gateway)."""
    try:
        actor = await deputy(request).actors.verify(bearer(request), now=int(time.time()))
    except TokenError as exc:
        raise InvalidClient(f"JWT-SVID rejected: {exc}") from exc
    return str(actor.spiffe_id)


async def resource_client(request: Request) -> str:
    """An agent listed in some resource's `clients`: may introspect and read the revocation feed."""
    caller = await agent(request)
    if not deputy(request).exchange.resources.is_client(caller):
        raise Forbidden("this SPIFFE ID is not a client of any resource")
    return caller


async def admin(request: Request) -> str:
    """An admin: a JWT-SVID in `[admin] spiffe_ids`, or a user token whose `[admin] claim` holds `value`."""
    d, token, now = deputy(request), bearer(request), int(time.time())
    settings = d.settings.admin
    try:
        actor = await d.actors.verify(token, now=now)
    except TokenError:
        pass
    else:
        if str(actor.spiffe_id) in settings.spiffe_ids:
            return str(actor.spiffe_id)
        raise Forbidden("this SPIFFE ID is not an admin")
    try:
        user = await d.users.verify(token, now=now)
    except TokenError as exc:
        raise InvalidClient(f"admin token rejected: {exc}") from exc
    held = user.claims.get(settings.claim)
    values = held if isinstance(held, list) else [held]
    if settings.value is None or settings.value not in values:
        raise Forbidden("this user is not in the admin group")
    return f"{user.issuer}#{user.subject}"
