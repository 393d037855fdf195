"""A loopback HTTP proxy in front of a real gateway, standing where the network is: it forwards everything,
records what the SSF receiver sends on its polls (`ack`, `setErrs`), and on demand adds SETs to poll
answers, keys to the SET key set, or rewrites a verification request's `state`.

The gateway's `issuer` is the proxy's address, so every URL the metadata names leads through it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection"}


@dataclass
class Controls:
    """What the proxy does to the traffic; tests change it while the proxy runs."""

    inject: list[tuple[str, str]] = field(default_factory=list)  # (jti, SET) for the next poll answer
    always: list[tuple[str, str]] = field(default_factory=list)  # (jti, SET) in every poll answer
    keys_down: bool = False  # answer 502 for the SET key set only
    extra_keys: list[dict[str, Any]] = field(default_factory=list)  # added to /ssf/jwks.json
    rewrite_state: str | None = None  # replaces the state of verification requests
    down: bool = False  # answer 502 to everything, as a dead network would
    polls: list[dict[str, Any]] = field(default_factory=list)  # every poll request body, in order
    created: list[str] = field(default_factory=list)  # stream ids of streams created through the proxy
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reported(self) -> dict[str, dict[str, str]]:
        """Every `setErrs` member sent so far."""
        with self.lock:
            return {jti: error for body in self.polls for jti, error in body.get("setErrs", {}).items()}

    def acked(self) -> list[str]:
        with self.lock:
            return [jti for body in self.polls for jti in body.get("ack", [])]


class TransmitterProxy:
    """Runs in a thread of its own (its own event loop), so tests on any loop can use it."""

    def __init__(self, upstream: str, port: int) -> None:
        self.upstream = upstream
        self.url = f"http://127.0.0.1:{port}"
        self.controls = Controls()
        self._client: httpx2.AsyncClient | None = None

        @asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            async with httpx2.AsyncClient(base_url=upstream, timeout=httpx2.Timeout(5.0, read=60.0)) as client:
                self._client = client
                yield

        app = Starlette(routes=[Route("/{path:path}", self._forward, methods=["GET", "POST", "PATCH", "PUT",
                                                                               "DELETE"])], lifespan=lifespan)
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                     lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> None:
        self._thread.start()
        while not self._server.started:
            threading.Event().wait(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    async def _forward(self, request: Request) -> Response:
        assert self._client is not None
        if self.controls.down or (self.controls.keys_down and request.url.path == "/ssf/jwks.json"):
            return Response(status_code=502)
        body = await request.body()
        path = request.url.path
        if request.method == "POST" and path == "/ssf/verify" and self.controls.rewrite_state is not None:
            body = json.dumps({**json.loads(body), "state": self.controls.rewrite_state}).encode()
        if request.method == "POST" and path.startswith("/ssf/poll/"):
            with self.controls.lock:
                self.controls.polls.append(json.loads(body))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            upstream = await self._client.request(request.method, path, params=list(request.query_params.multi_items()),
                                                  headers=headers, content=body)
        except httpx2.HTTPError:
            return Response(status_code=502)
        return self._rewritten(request, upstream)

    def _rewritten(self, request: Request, upstream: httpx2.Response) -> Response:
        path, content = request.url.path, upstream.content
        if upstream.status_code == 200 and path == "/ssf/jwks.json":
            document = json.loads(content)
            content = json.dumps({"keys": [*document["keys"], *self.controls.extra_keys]}).encode()
        if upstream.status_code == 200 and path.startswith("/ssf/poll/"):
            with self.controls.lock:
                injected, self.controls.inject[:] = [*self.controls.inject, *self.controls.always], []
            if injected:
                answer = json.loads(content)
                answer["sets"].update(dict(injected))
                content = json.dumps(answer).encode()
        if upstream.status_code == 201 and request.method == "POST" and path == "/ssf/streams":
            with self.controls.lock:
                self.controls.created.append(json.loads(content)["stream_id"])
        headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP | {"content-encoding"}}
        return Response(content, status_code=upstream.status_code, headers=headers)


async def eventually(check: Any, *, timeout: float = 5.0, every: float = 0.02) -> Any:
    """The first value `check()` returns without raising AssertionError, polled until `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            result = check()
            return await result if asyncio.iscoroutine(result) else result
        except AssertionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(every)
