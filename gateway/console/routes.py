"""/console: the page and its assets, sign-in (`/console/login` → the identity provider →
`/console/callback`), the session the page reads (`/console/session`) and `/console/logout`. The page
calls /admin itself, same-origin, with the session cookie and CSRF token (gateway/auth.py)."""

from __future__ import annotations

import hmac
import html
import time
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from token_exchange.errors import AccessDenied, OAuthError
from token_exchange.oidc_discovery import is_loopback

from ..auth import deputy
from ..settings import Settings
from . import demo_idp
from .oidc import LOGIN_TTL, SignIn
from .session import Sessions, checked_csrf
from .web import HEADERS, asset, page

LOGIN_COOKIE = "deputy_console_login"


def install(app: FastAPI, settings: Settings) -> None:
    """Serve the console (when `[console]` is configured) and, DEMO ONLY, the demo identity provider."""
    console = settings.console
    if console is None:
        return
    secure = not is_loopback(urlsplit(settings.issuer).hostname or "")
    sessions = app.state.console_sessions = Sessions(secure=secure, ttl=console.session_ttl)
    app.include_router(_router(SignIn(console, settings.admin.audience), sessions))
    if console.demo_idp is not None:
        app.include_router(demo_idp.router(console, settings.issuer, settings.admin.audience))


def _router(sign_in: SignIn, sessions: Sessions) -> APIRouter:
    router = APIRouter(prefix="/console", include_in_schema=False)
    pages = _Pages(sign_in, sessions)
    for path, method, endpoint in (("", "GET", pages.index), ("/", "GET", pages.index),
                                   ("/static/{name}", "GET", pages.static), ("/login", "GET", pages.login),
                                   ("/callback", "GET", pages.callback), ("/session", "GET", pages.session),
                                   ("/logout", "POST", pages.logout)):
        router.add_api_route(path, endpoint, methods=[method])
    return router


class _Pages:
    def __init__(self, sign_in: SignIn, sessions: Sessions) -> None:
        self.sign_in = sign_in
        self.sessions = sessions

    async def index(self, request: Request) -> Response:
        if self.sessions.of(request, now=int(time.time())) is None:
            return RedirectResponse("/console/login", status_code=303, headers=HEADERS)
        return asset("index.html")

    async def static(self, name: str) -> Response:
        return asset(name)

    async def login(self) -> Response:
        try:
            state, verifier, url = await self.sign_in.begin()
        except OAuthError as exc:
            return _refused(exc)
        response = RedirectResponse(url, status_code=303, headers=HEADERS)
        # Lax, not Strict: it must come back with the identity provider's (cross-site) redirect.
        response.set_cookie(LOGIN_COOKIE, f"{state}.{verifier}", max_age=LOGIN_TTL, path="/console/callback",
                            httponly=True, secure=self.sessions.secure, samesite="lax")
        return response

    async def callback(self, request: Request, state: str = "", code: str = "", error: str = "") -> Response:
        if error:
            return _refused(AccessDenied(f"the identity provider said: {error[:100]}"))
        began, _, verifier = request.cookies.get(LOGIN_COOKIE, "").partition(".")
        if not state or not verifier or not hmac.compare_digest(began.encode(), state.encode()):
            return _refused(AccessDenied("this sign-in was not started in this browser"))
        now = int(time.time())
        try:
            signed_in = await self.sign_in.finish(code, verifier)
            admin = await deputy(request).callers.admin(signed_in.access_token, now=now)
            session_id, _ = self.sessions.start(admin, signed_in.access_token, expires_at=signed_in.expires_at,
                                                now=now)
        except OAuthError as exc:
            return _refused(exc)
        # A page, not a redirect: the Strict cookie is then sent with the same-site navigation it starts.
        response = page("Signed in", f"<p>Signed in as {html.escape(admin)}. "
                        '<a href="/console/">Open the console</a></p>', refresh="/console/")
        self.sessions.set_cookie(response, session_id)
        response.delete_cookie(LOGIN_COOKIE, path="/console/callback")
        return response

    async def session(self, request: Request) -> JSONResponse:
        current = self.sessions.of(request, now=int(time.time()))
        if current is None:
            return JSONResponse({"error": "invalid_client", "error_description": "not signed in"},
                                status_code=401, headers=HEADERS)
        return JSONResponse({"admin": current.admin, "csrf": current.csrf, "expires_at": current.expires_at},
                            headers=HEADERS)

    async def logout(self, request: Request) -> JSONResponse:
        """End the session here (CSRF-checked: a state change), and clear its cookie."""
        current = self.sessions.of(request, now=int(time.time()))
        if current is not None:
            checked_csrf(request, current)
            self.sessions.end(request)
        response = JSONResponse({"signed_out": True}, headers=HEADERS)
        self.sessions.clear_cookie(response)
        return response


def _refused(exc: OAuthError) -> Response:
    return page("Sign-in refused", f"<p>{html.escape(exc.description)}</p>"
                '<p><a href="/console/login">Sign in again</a></p>', status=exc.status if exc.status >= 400 else 403)
