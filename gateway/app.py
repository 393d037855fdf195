"""The HTTP service: routes are a few lines each; errors are rendered in one place."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from delegation.observe import Observer
from delegation.records import StoreError
from token_exchange.dpop import HEADER as DPOP_HEADER
from token_exchange.dpop import NONCE_HEADER as DPOP_NONCE_HEADER
from token_exchange.errors import InvalidClient, OAuthError, TemporarilyUnavailable, error_description
from token_exchange.rfc6749 import TokenRequest

from . import admin_routes, discovery_routes, openapi, ssf_routes, task_routes
from .audit_export import audit_export, retire_audit
from .auth import deputy
from .console import routes as console_routes
from .http_forms import read_form
from .wiring import Deputy, Prepared, running

log = logging.getLogger(__name__)
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
GC_THRESHOLDS = (50_000, 50, 100)  # CPython's defaults are (700, 10, 10)


def build_app(prepared: Prepared, observer: Observer | None = None) -> TokenFastPath:
    """The public app; `observer` counts what it does (the metrics, served elsewhere: never here)."""
    app = FastAPI(
        title="Deputy", lifespan=_lifespan(prepared, observer), docs_url=None, redoc_url=None,
        openapi_url="/openapi.json", redirect_slashes=False,  # `/token/` is no endpoint: 404, not a redirect
        telemetry={"tracing": False, "metrics": False, "logs": False},  # Deputy's record is its audit trail
    )
    app.add_exception_handler(OAuthError, _oauth_error)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.include_router(task_routes.router)
    app.include_router(admin_routes.router)
    console_routes.install(app, prepared.settings)
    app.include_router(discovery_routes.router(prepared.settings.issuer))
    app.include_router(ssf_routes.router(prepared.settings.issuer))
    # POST /token is served by TokenFastPath; the route is FastAPI's too, for other methods' 405 and the
    # OpenAPI document.
    app.add_api_route("/token", token, methods=["POST"], **openapi.documented(
        openapi.TokenBody, form_body=openapi.TokenForm, bearer=False, headers=openapi.TOKEN_HEADERS,
        summary="RFC 8693 token exchange: one-shot access tokens, tasks, tokens within a task, delegation"))
    app.router.routes.insert(0, app.router.routes.pop())
    openapi.install(app)
    return TokenFastPath(app)


def _lifespan(prepared: Prepared, observer: Observer | None) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running(prepared, observer) as parts:
            app.state.deputy = parts
            gc.freeze()  # start-up objects (compiled policy, keys, modules) leave the collector's scans
            # Measured: with the default thresholds, full collections stall a worker for tens of ms and
            # make most of the p99 at 500 exchanges/s; rarer, larger young collections keep it under 25 ms.
            gc.set_threshold(*GC_THRESHOLDS)
            background = [asyncio.create_task(_sweep(parts)), asyncio.create_task(parts.keys.follow()),
                          asyncio.create_task(parts.ssf.delivery.run())]
            try:
                yield
            finally:
                for task in background:
                    task.cancel()

    return lifespan


class TokenFastPath:
    """The ASGI app served: `POST /token`, the hot path, goes straight to its handler; everything else,
    lifespan included, to FastAPI. Skipping FastAPI's middleware and router for the one route that must
    be fast saves 56-74 µs of a ≈1.6 ms exchange here (bench/README.md); errors are rendered by the same
    handlers either way."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/token" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app
        request = Request(scope, receive)
        try:
            response = await token(request)
        except OAuthError as exc:
            response = await _oauth_error(request, exc)
        except Exception as exc:
            response = await _server_error(request, exc)
        await response(scope, receive, send)


async def token(request: Request) -> JSONResponse:
    """RFC 8693 token exchange. A plain Starlette route: the hot path skips FastAPI's dependency machinery.

    Every parameter comes from the body only (RFC 6749 §2.3.1); a client that tried the Authorization
    header gets 401 before its body is read (RFC 6749 §5.2).
    """
    endpoint, now = deputy(request).token_endpoint, int(time.time())
    try:
        if authorization := request.headers.get("authorization"):
            raise _invalid_client(authorization.partition(" ")[0][:20])
        pairs = await read_form(request)
    except OAuthError as exc:
        await endpoint.refuse(exc, now=now)
        raise
    headers = tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in request.scope["headers"])
    received = TokenRequest(tuple(pairs), headers, request.method, str(request.url))
    response = await endpoint.handle(received, now=now)
    nonces = deputy(request).dpop.nonces
    if nonces is not None and DPOP_HEADER in request.headers:  # RFC 9449 §8.2: the next nonce, on a 200 too
        return JSONResponse(response.body(), headers={**NO_STORE, DPOP_NONCE_HEADER: nonces.issue(now)})
    return JSONResponse(response.body(), headers=NO_STORE)


async def _sweep(parts: Deputy) -> None:
    """One worker of all (the one that leads the sweeps), every `[tasks] sweep_every` seconds, expires tasks
    past their deadline, purges rows past `[tasks] retention` and retires audit events past `[audit]
    retention`, in short transactions; it reports the tasks it expired and the tasks still open."""
    export, store, observer = audit_export(parts.settings.audit), parts.store, parts.observer
    while True:
        try:
            if store.lead_sweeps():
                now = int(time.time())
                expired, _ = await store.expire_and_purge(now=now, retention=parts.settings.tasks.retention)
                observer.revoked("expired", expired)
                observer.tasks_open(await store.count_open_tasks())
                await retire_audit(store, export, now=now, retention=parts.settings.audit.retention)
        except (StoreError, OSError) as exc:  # the store or the export is unavailable: try again next time
            log.error("tasks.sweep_failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            if isinstance(exc, StoreError):
                observer.store_failed("sweep")
        except Exception:
            log.exception("tasks.sweep_failed")
        await asyncio.sleep(parts.settings.tasks.sweep_every)


def _invalid_client(scheme: str) -> OAuthError:
    """RFC 6749 §5.2: a client that tried the Authorization header gets 401 with that scheme's challenge."""
    return InvalidClient(
        "client authentication is not accepted here: agents authenticate with actor_token",
        scheme=scheme if scheme.isalpha() else "Bearer",
    )


async def _oauth_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OAuthError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own refusals (no such route, wrong method, ...) as OAuth-style JSON, never HTML."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        body = {"error": "not_found", "error_description": "no such endpoint"}
    elif exc.status_code == 405:
        body = {"error": "invalid_request", "error_description": f"method {request.method[:16]} is not allowed here"}
    else:
        body = {"error": "invalid_request", "error_description": f"request refused (HTTP {exc.status_code})"}
    body["error_description"] = error_description(body["error_description"])
    return JSONResponse(body, status_code=exc.status_code, headers={**NO_STORE, **(exc.headers or {})})


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    """A store failure outside the exchange (which maps its own): nothing happened, try again later. It is
    counted under the endpoint's name (its route's), never its path, which may hold a task id."""
    log.error("store_error", extra={"path": request.url.path, "error": str(exc)})
    deputy(request).observer.store_failed(getattr(request.scope.get("route"), "name", None) or "unrouted")
    return await _oauth_error(request, TemporarilyUnavailable("the gateway could not reach its store; try again"))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": "invalid_request", "error_description": "a query or path parameter is malformed"},
                        status_code=400, headers=NO_STORE)


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("server_error", extra={"path": request.url.path})
    return JSONResponse(
        {"error": "server_error", "error_description": "internal error"}, status_code=500, headers=NO_STORE
    )
