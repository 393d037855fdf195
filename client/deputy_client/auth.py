"""`httpx2.Auth` for a task's resource calls: the cached per-task token on every request, as `Bearer`, or for a
DPoP-bound token as `Authorization: DPoP` with a fresh proof carrying `ath` (RFC 9449 §7.1). A 401 asking for
a nonce (`WWW-Authenticate: DPoP error="use_dpop_nonce"` and `DPoP-Nonce`, §9) is retried once with it.

The warm path (a fresh cached Bearer token) is a dict lookup and a header: no lock, no crypto, no I/O.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, TypeVar

import httpx2

from token_exchange.dpop import HEADER, NONCE_HEADER

from .grants import AccessToken

if TYPE_CHECKING:
    from .tasks import CacheKey, Task

T = TypeVar("T")
Runner = Callable[[Coroutine[Any, Any, T]], T]


class TaskAuth(httpx2.Auth):
    def __init__(self, task: Task, key: CacheKey, runner: Runner[AccessToken] | None = None) -> None:
        self._task, self._key, self._runner = task, key, runner
        self._nonces: dict[str, str] = {}  # origin -> the last DPoP-Nonce it gave (§8.2)

    async def async_auth_flow(self, request: httpx2.Request) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        token = self._task.cached(self._key) or await self._task.access(self._key)
        flow = self._flow(request, token)
        outgoing = next(flow)
        while True:
            response = yield outgoing
            try:
                outgoing = flow.send(response)
            except StopIteration:
                return

    def sync_auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        """For `deputy_client.sync`: a cold cache is filled on the client's own event loop (`runner`)."""
        if self._runner is None:
            raise RuntimeError("this auth belongs to an async task: use it with httpx2.AsyncClient")
        token = self._task.cached(self._key) or self._runner(self._task.access(self._key))
        yield from self._flow(request, token)

    def _flow(self, request: httpx2.Request, token: AccessToken) -> Generator[httpx2.Request, httpx2.Response, None]:
        request.headers["Authorization"] = token.authorization
        if not token.dpop:
            self._refused(token, (yield request))
            return
        origin = f"{request.url.scheme}://{request.url.netloc.decode()}"
        response = yield self._prove(request, token, self._nonces.get(origin))
        if nonce := response.headers.get(NONCE_HEADER):
            self._nonces[origin] = nonce
            challenge = response.headers.get("www-authenticate", "")
            if response.status_code == 401 and "use_dpop_nonce" in challenge:
                response = yield self._prove(request, token, nonce)
        self._refused(token, response)

    def _refused(self, token: AccessToken, response: httpx2.Response) -> None:
        """RFC 6750 §3.1 `invalid_token` (revoked or expired, say): drop it from the cache; the response goes
        to the caller as it is, and its next call mints again (and hears from the gateway if the task ended)."""
        if response.status_code == 401 and 'error="invalid_token"' in response.headers.get("www-authenticate", ""):
            self._task.forget(self._key, token)

    def _prove(self, request: httpx2.Request, token: AccessToken, nonce: str | None) -> httpx2.Request:
        request.headers[HEADER] = self._task.gateway.proof(request.method, str(request.url), token.access_token, nonce)
        return request
