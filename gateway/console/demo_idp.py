"""DEMO ONLY: the demo identity provider's OpenID Connect side for `serve --dev`, served by the dev gateway
itself under `/console/demo-idp` (https://idp.demo.test is not reachable): discovery, a login page where
one picks a demo user, authorization codes bound to a PKCE S256 challenge (RFC 7636 §4.6), and a token
endpoint answering with tokens signed by the demo IdP's key. Never for production."""

from __future__ import annotations

import hashlib
import hmac
import html
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from token_exchange.dpop import b64url
from token_exchange.errors import InvalidGrant, InvalidRequest, InvalidTarget, UnsupportedGrantType

from ..dev import ADMIN_GROUP, LABEL, DemoIdentities
from ..http_forms import read_form
from ..settings import ConsoleSettings
from .web import HEADERS, page

PREFIX = "/console/demo-idp"
USERS = {"admin": [ADMIN_GROUP], "alice": []}  # demo user -> groups: `admin` is in the admin group
CODE_TTL = 60
TOKEN_TTL = 3600


@dataclass(frozen=True, slots=True)
class _Code:
    user: str
    challenge: str
    deadline: int


def router(console: ConsoleSettings, gateway: str, admin_audience: str) -> APIRouter:
    routes = APIRouter(prefix=PREFIX, include_in_schema=False)
    idp = _DemoIdp(console, gateway, admin_audience)
    routes.add_api_route("/.well-known/openid-configuration", idp.discovery, methods=["GET"])
    routes.add_api_route("/authorize", idp.login_page, methods=["GET"])
    routes.add_api_route("/authorize", idp.approve, methods=["POST"])
    routes.add_api_route("/token", idp.token, methods=["POST"])
    return routes


class _DemoIdp:
    def __init__(self, console: ConsoleSettings, gateway: str, admin_audience: str) -> None:
        assert console.demo_idp is not None
        self.console = console
        self.gateway, self.admin_audience = gateway, admin_audience
        self.identities = DemoIdentities(console.demo_idp)
        self.codes: dict[str, _Code] = {}

    async def discovery(self) -> JSONResponse:
        base = f"{self.gateway}{PREFIX}"
        return JSONResponse({
            "issuer": self.console.issuer, "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token", "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"], "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"]})

    async def login_page(self, request: Request) -> Response:
        params = _checked(dict(request.query_params), self.console, self.admin_audience)
        hidden = "".join(f'<input type="hidden" name="{k}" value="{html.escape(v)}">' for k, v in params.items())
        buttons = "".join(f'<button name="user" value="{u}">Sign in as {u}{" (admin)" if g else ""}</button>'
                          for u, g in USERS.items())
        return page(f"{LABEL}: demo identity provider", f'<p class="demo">{LABEL}: a throwaway login of '
                    '<code>deputy serve --dev</code>. No password: pick a demo user.</p>'
                    f'<form method="post" action="{PREFIX}/authorize">{hidden}{buttons}</form>')

    async def approve(self, request: Request) -> Response:
        form = dict(await read_form(request))
        user = form.pop("user", "")
        params = _checked(form, self.console, self.admin_audience)
        if user not in USERS:
            raise InvalidRequest("pick one of the demo users")
        code = secrets.token_urlsafe(32)
        self.codes[code] = _Code(user, params["code_challenge"], int(time.time()) + CODE_TTL)
        target = f"{self.console.redirect_uri}?{urlencode({'code': code, 'state': params.get('state', '')})}"
        return RedirectResponse(target, status_code=303, headers=HEADERS)

    async def token(self, request: Request) -> JSONResponse:
        form = dict(await read_form(request))
        if form.get("grant_type") != "authorization_code":
            raise UnsupportedGrantType("the demo identity provider issues tokens for authorization codes only")
        granted = self.codes.pop(form.get("code", ""), None)  # single use
        if granted is None or granted.deadline <= time.time() or form.get("client_id") != self.console.client_id \
                or form.get("redirect_uri") != self.console.redirect_uri:
            raise InvalidGrant("unknown, used or expired authorization code, or another client or redirect_uri")
        verifier = form.get("code_verifier", "")
        if not hmac.compare_digest(b64url(hashlib.sha256(verifier.encode()).digest()), granted.challenge):
            raise InvalidGrant("code_verifier does not match the code_challenge (RFC 7636 section 4.6)")
        groups = USERS[granted.user]
        access = self.identities.user_token(granted.user, ttl=TOKEN_TTL, aud=self.admin_audience, groups=groups)
        id_token = self.identities.user_token(granted.user, ttl=TOKEN_TTL, aud=self.console.client_id, groups=groups)
        return JSONResponse({"access_token": access, "token_type": "Bearer", "expires_in": TOKEN_TTL,
                             "id_token": id_token, "scope": self.console.scope}, headers={"Cache-Control": "no-store"})


def _checked(params: dict[str, str], console: ConsoleSettings, admin_audience: str) -> dict[str, str]:
    """An authorization request of the console's own client, with a PKCE S256 challenge, for the admin API
    (RFC 8707 `resource`: the only audience the demo IdP issues the console's access token for)."""
    if params.get("client_id") != console.client_id or params.get("redirect_uri") != console.redirect_uri:
        raise InvalidRequest("unknown client_id or redirect_uri for the demo identity provider")
    if params.get("resource") != admin_audience:
        raise InvalidTarget(f"the console's token is for the admin API only: resource must be {admin_audience} "
                            "(RFC 8707 section 2)")
    if params.get("response_type") != "code":
        raise InvalidRequest("response_type must be code")
    if params.get("code_challenge_method") != "S256" or len(params.get("code_challenge", "")) != 43:
        raise InvalidRequest("a PKCE code_challenge with code_challenge_method S256 is required (RFC 7636)")
    keep = ("client_id", "redirect_uri", "response_type", "code_challenge", "code_challenge_method", "state",
            "scope", "resource")
    return {k: params[k] for k in keep if k in params}
