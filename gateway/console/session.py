"""The console's server-side sessions: the browser holds only an opaque id in an HttpOnly, SameSite=Strict
cookie (Secure outside loopback dev) and a CSRF token it must echo on every state change. The admin's
access token stays here and is verified again on every request, so a revoked or expired one ends the
session."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response

from token_exchange.errors import AccessDenied

COOKIE = "deputy_console"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_SESSIONS = 10_000


@dataclass(frozen=True, slots=True)
class Session:
    admin: str
    token: str
    csrf: str
    expires_at: int


class Sessions:
    """Signed-in admins by session id, in this process (with several replicas: route a browser to one)."""

    def __init__(self, *, secure: bool, ttl: int) -> None:
        self.secure = secure
        self.ttl = ttl
        self._sessions: dict[str, Session] = {}

    def start(self, admin: str, token: str, *, expires_at: int, now: int) -> tuple[str, Session]:
        self._sessions = {k: s for k, s in self._sessions.items() if s.expires_at > now}
        if len(self._sessions) >= MAX_SESSIONS:
            raise AccessDenied("too many console sessions; try again later")
        session_id = secrets.token_urlsafe(32)
        session = Session(admin, token, secrets.token_urlsafe(32), min(expires_at, now + self.ttl))
        self._sessions[session_id] = session
        return session_id, session

    def of(self, request: Request, *, now: int) -> Session | None:
        """The request's live session, if its cookie names one."""
        session = self._sessions.get(request.cookies.get(COOKIE, ""))
        return session if session is not None and session.expires_at > now else None

    def end(self, request: Request) -> None:
        self._sessions.pop(request.cookies.get(COOKIE, ""), None)

    def set_cookie(self, response: Response, session_id: str) -> None:
        response.set_cookie(COOKIE, session_id, max_age=self.ttl, path="/", httponly=True, secure=self.secure,
                            samesite="strict")

    def clear_cookie(self, response: Response) -> None:
        response.delete_cookie(COOKIE, path="/", httponly=True, secure=self.secure, samesite="strict")


def checked_csrf(request: Request, session: Session) -> Session:
    """A state change must carry the session's CSRF token in a header, which another site cannot set."""
    if request.method not in SAFE_METHODS and not hmac.compare_digest(
            request.headers.get(CSRF_HEADER, "").encode(), session.csrf.encode()):
        raise AccessDenied(f"a console request that changes state needs the session's {CSRF_HEADER} header")
    return session
