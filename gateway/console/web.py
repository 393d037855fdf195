"""What every console response carries: a strict Content-Security-Policy (no inline script, no eval, no
framing), and the packaged static assets, served from the installed package (no CDN, no build step)."""

from __future__ import annotations

import html
from importlib import resources

from fastapi.responses import HTMLResponse, Response

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
ASSETS = {"index.html": "text/html; charset=utf-8", "console.js": "text/javascript; charset=utf-8",
          "console.css": "text/css; charset=utf-8"}


def asset(name: str) -> Response:
    """One packaged file of gateway/console/static; any other name is no asset."""
    media = ASSETS.get(name)
    if media is None:
        return page("Not found", "<p>No such console file.</p>", status=404)
    body = resources.files(__package__).joinpath("static", name).read_bytes()
    return Response(body, media_type=media, headers=HEADERS)


def page(title: str, body: str, *, status: int = 200, refresh: str | None = None) -> HTMLResponse:
    """A small server-rendered page (sign-in results, the demo login); `body` is trusted markup, any value
    in it escaped by the caller with `html.escape`."""
    meta = f'<meta http-equiv="refresh" content="0;url={html.escape(refresh)}">' if refresh else ""
    document = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}<title>{html.escape(title)}'
                '</title><link rel="stylesheet" href="/console/static/console.css"></head>'
                f'<body class="plain"><main><h1>{html.escape(title)}</h1>{body}</main></body></html>')
    return HTMLResponse(document, status_code=status, headers=HEADERS)
