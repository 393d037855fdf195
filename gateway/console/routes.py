"""/console: the page and its assets, sign-in (`/console/login` → the identity provider →
`/console/callback`), the session the page reads (`/console/session`) and `/console/logout`. The page
calls /admin itself, same-origin, with the session cookie and CSRF token (gateway/auth.py)."""

from __future__ import annotations

import html
import time
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from token_exchange.errors import OAuthError
from token_exchange.oidc_discovery import is_loopback

from ..auth import deputy
from ..settings import Settings
from . import demo_idp
from .oidc import SignIn
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
    app.include_router(_router(SignIn(console, settings.issuer), sessions))
    if console.demo_idp is not None:
        app.include_router(demo_idp.router(console, settings.issuer))


def _router(sign_in: SignIn, sessions: Sessions) -> APIRouter:
    router = APIRouter(prefix="/console", include_in_schema=False)

    @router.get("")
    @router.get("/")
    async def index(request: Request) -> Response:
        if sessions.of(request, now=int(time.time())) is None:
            return RedirectResponse("/console/login", status_code=303, headers=HEADERS)
        return asset("index.html")

    @router.get("/static/{name}")
    async def static(name: str) -> Response:
        return asset(name)

    @router.get("/login")
    async def login() -> Response:
        try:
            state, url = await sign_in.begin(now=int(time.time()))
        except OAuthError as exc:
            return _refused(exc)
        response = RedirectResponse(url, status_code=303, headers=HEADERS)
        # Lax, not Strict: it must come back with the identity provider's (cross-site) redirect.
        response.set_cookie(LOGIN_COOKIE, state, max_age=600, path="/console/callback", httponly=True,
                            secure=sessions.secure, samesite="lax")
        return response

    @router.get("/callback")
    async def callback(request: Request, state: str = "", code: str = "", error: str = "") -> Response:
        if error:
            return page("Sign-in refused", f"<p>The identity provider said: {html.escape(error[:100])}</p>"
                        '<p><a href="/console/login">Sign in again</a></p>', status=403)
        if not state or request.cookies.get(LOGIN_COOKIE) != state:
            return page("Sign-in refused", "<p>This sign-in was not started in this browser.</p>"
                        '<p><a href="/console/login">Sign in again</a></p>', status=403)
        now = int(time.time())
        try:
            signed_in = await sign_in.finish(state, code, now=now)
            admin = await deputy(request).callers.admin(signed_in.access_token, now=now)
            session_id, _ = sessions.start(admin, signed_in.access_token, expires_at=signed_in.expires_at, now=now)
        except OAuthError as exc:
            return _refused(exc)
        # A page, not a redirect: the Strict cookie is then sent with the same-site navigation it starts.
        response = page("Signed in", f"<p>Signed in as {html.escape(admin)}. "
                        '<a href="/console/">Open the console</a></p>', refresh="/console/")
        sessions.set_cookie(response, session_id)
        response.delete_cookie(LOGIN_COOKIE, path="/console/callback")
        return response

    @router.get("/session")
    async def session(request: Request) -> JSONResponse:
        current = sessions.of(request, now=int(time.time()))
        if current is None:
            return JSONResponse({"error": "invalid_client", "error_description": "not signed in"},
                                status_code=401, headers=HEADERS)
        return JSONResponse({"admin": current.admin, "csrf": current.csrf, "expires_at": current.expires_at},
                            headers=HEADERS)

    @router.post("/logout")
    async def logout(request: Request) -> JSONResponse:
        current = sessions.of(request, now=int(time.time()))
        if current is not None:
            checked_csrf(request, current)
            sessions.end(request)
        response = JSONResponse({"signed_out": True}, headers=HEADERS)
        sessions.clear_cookie(response)
        return response

    return router


def _refused(exc: OAuthError) -> Response:
    return page("Sign-in refused", f"<p>{html.escape(exc.description)}</p>"
                '<p><a href="/console/login">Sign in again</a></p>', status=exc.status if exc.status >= 400 else 403)
