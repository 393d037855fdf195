"""The console's sign-in and session over plain HTTP (issue 11, section 4 "Web security"): PKCE S256 at
the demo IdP (RFC 7636 §4.6), state bound to the browser, cookie flags, CSRF on every state change,
the Content-Security-Policy, and a logout that ends the session server-side."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from starlette.responses import Response

from gateway.console.session import COOKIE, Sessions
from gateway.console.web import CSP
from tests.console.conftest import ADMIN, Dev

CALLBACK = re.compile(r"/console/callback\?")


def authorize(dev: Dev, browser: httpx2.Client, user: str = "admin") -> tuple[dict[str, str], str]:
    """Start a sign-in in `browser` and pick `user` at the demo login: the authorization request's
    parameters, and the callback URL the IdP redirects to."""
    start = browser.get("/console/login")
    assert start.status_code == 303
    query = {k: v[0] for k, v in parse_qs(urlsplit(start.headers["location"]).query).items()}
    assert (query["code_challenge_method"], query["client_id"]) == ("S256", "deputy-console")
    assert "client_secret" not in query
    approved = browser.post("/console/demo-idp/authorize", data={**query, "user": user})
    assert approved.status_code == 303 and CALLBACK.search(approved.headers["location"]), approved.text
    return query, approved.headers["location"]


@contextmanager
def signed_in(dev: Dev) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=dev.url, timeout=10) as browser:
        _, callback = authorize(dev, browser)
        done = browser.get(callback)
        assert done.status_code == 200, done.text
        yield browser


def csrf(browser: httpx2.Client) -> str:
    session = browser.get("/console/session")
    assert session.status_code == 200 and session.json()["admin"] == ADMIN
    return str(session.json()["csrf"])


def test_console_callback_sets_an_httponly_samesite_strict_session_cookie(dev: Dev) -> None:
    with httpx2.Client(base_url=dev.url, timeout=10) as browser:
        _, callback = authorize(dev, browser)
        done = browser.get(callback)
        cookie = next(c for c in done.headers.get_list("set-cookie") if c.startswith(f"{COOKIE}="))
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert '<meta http-equiv="refresh" content="0;url=/console/">' in done.text


def test_console_sessions_cookie_is_secure_outside_loopback_dev() -> None:
    response = Response()
    Sessions(secure=True, ttl=60).set_cookie(response, "id")
    cookie = response.headers["set-cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie


def test_rfc7636_4_6_a_code_is_refused_with_another_verifier_and_then_cannot_be_replayed(dev: Dev) -> None:
    with httpx2.Client(base_url=dev.url, timeout=10) as browser:
        query, callback = authorize(dev, browser)
        code = parse_qs(urlsplit(callback).query)["code"][0]
        wrong = base64.urlsafe_b64encode(hashlib.sha256(b"x").digest()).rstrip(b"=").decode()
        refused = browser.post("/console/demo-idp/token", data={
            "grant_type": "authorization_code", "code": code, "code_verifier": wrong,
            "client_id": query["client_id"], "redirect_uri": query["redirect_uri"]})
        assert (refused.status_code, refused.json()["error"]) == (400, "invalid_grant")
        assert "section 4.6" in refused.json()["error_description"]
        replayed = browser.get(callback)  # the console's own redemption: the code was used up
        assert replayed.status_code == 403 and "invalid_grant" in replayed.text
        assert COOKIE not in browser.cookies


def test_rfc8707_the_console_asks_for_a_token_for_the_admin_audience_only(dev: Dev) -> None:
    with httpx2.Client(base_url=dev.url, timeout=10) as browser:
        query, _ = authorize(dev, browser)
        assert query["resource"] == f"{dev.url}/admin"  # `[admin] audience`, by default <issuer>/admin
        refused = browser.get("/console/demo-idp/authorize", params={**query, "resource": dev.url})
        assert (refused.status_code, refused.json()["error"]) == (400, "invalid_target"), refused.text


def test_console_authorization_request_without_pkce_is_refused_by_the_demo_idp(dev: Dev) -> None:
    with httpx2.Client(base_url=dev.url, timeout=10) as browser:
        query, _ = authorize(dev, browser)
        del query["code_challenge"]
        refused = browser.get("/console/demo-idp/authorize", params=query)
        assert refused.status_code == 400 and "PKCE" in refused.json()["error_description"]


def test_console_sign_ins_started_keep_no_state_in_the_gateway_so_none_can_crowd_out_an_admins(dev: Dev) -> None:
    """Anyone may start sign-ins: their state and PKCE verifier (RFC 7636 §4.1) are the browser's, in the
    HttpOnly login cookie; a table of them in the gateway, once full, refused every admin's sign-in."""
    with httpx2.Client(base_url=dev.url, timeout=10) as browser:
        start = browser.get("/console/login")
        cookie = next(c for c in start.headers.get_list("set-cookie") if c.startswith("deputy_console_login="))
        state, _, verifier = cookie.split(";")[0].split("=", 1)[1].partition(".")
        query = parse_qs(urlsplit(start.headers["location"]).query)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        assert (query["state"][0], query["code_challenge"][0]) == (state, challenge)
        assert "HttpOnly" in cookie and "Path=/console/callback" in cookie
    with signed_in(dev) as browser:
        assert csrf(browser)


def test_console_callback_from_a_sign_in_started_in_another_browser_is_refused(dev: Dev) -> None:
    with httpx2.Client(base_url=dev.url, timeout=10) as victim, httpx2.Client(base_url=dev.url, timeout=10) as other:
        _, callback = authorize(dev, other)
        refused = victim.get(callback)  # login CSRF: the attacker's code in the victim's browser
        assert refused.status_code == 403 and "not started in this browser" in refused.text
        assert COOKIE not in victim.cookies


@pytest.mark.parametrize("header", [None, "wrong"])
def test_console_state_change_without_the_sessions_csrf_token_is_refused(dev: Dev, header: str | None) -> None:
    with signed_in(dev) as browser:
        csrf(browser)
        headers = {} if header is None else {"X-CSRF-Token": header}
        refused = browser.post("/admin/tasks/no-such-task/revoke", headers=headers, json={"reason": "x"})
        assert (refused.status_code, refused.json()["error"]) == (403, "access_denied")
        assert "X-CSRF-Token" in refused.json()["error_description"]


def test_console_state_change_with_the_csrf_token_reaches_the_admin_api(dev: Dev) -> None:
    with signed_in(dev) as browser:
        accepted = browser.post("/admin/tasks/no-such-task/revoke", headers={"X-CSRF-Token": csrf(browser)},
                                json={"reason": "x"})
        assert (accepted.status_code, accepted.json()["error"]) == (404, "not_found")  # past authentication
        assert browser.get("/admin/tasks").status_code == 200  # reading needs no CSRF token


def test_console_logout_ends_the_session_on_the_server(dev: Dev) -> None:
    with signed_in(dev) as browser:
        token, session_id = csrf(browser), browser.cookies[COOKIE]
        assert browser.post("/console/logout").status_code == 403  # logging out is a state change too
        assert browser.post("/console/logout", headers={"X-CSRF-Token": token}).status_code == 200
        with httpx2.Client(base_url=dev.url, timeout=10, cookies={COOKIE: session_id}) as stolen:
            assert stolen.get("/console/session").status_code == 401
            assert stolen.get("/admin/tasks").status_code == 401


@pytest.mark.parametrize("path", ["/console/", "/console/static/console.js", "demo login"])
def test_console_pages_carry_a_strict_content_security_policy(dev: Dev, path: str) -> None:
    with signed_in(dev) as browser:
        if path == "demo login":
            login = urlsplit(browser.get("/console/login").headers["location"])
            path = f"{login.path}?{login.query}"
        response = browser.get(path)
        assert response.status_code == 200
        assert response.headers["content-security-policy"] == CSP
        assert "'unsafe-inline'" not in CSP and "'unsafe-eval'" not in CSP and "frame-ancestors 'none'" in CSP
        assert response.headers["x-frame-options"] == "DENY"


def test_console_page_has_no_inline_script(dev: Dev) -> None:
    with signed_in(dev) as browser:
        page = browser.get("/console/").text
        assert re.findall(r"<script[^>]*>", page) == ['<script src="/console/static/console.js" defer>']
        assert re.search(r"\son[a-z]+\s*=", page) is None  # no inline event handlers (onclick=...)


def test_console_serves_only_its_packaged_files(dev: Dev) -> None:
    with signed_in(dev) as browser:
        assert browser.get("/console/static/..%2Fsession.py").status_code == 404
        assert browser.get("/console/static/deputy.toml").status_code == 404
