"""Where an agent's JWT-SVID comes from (SPIFFE JWT-SVID §3): the Workload API, a file kept fresh by a helper,
or any callable. The SVID's audience is the gateway's issuer; nothing here is a long-lived secret.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import jwt

RENEW_BEFORE = 0.5
"""An SVID is renewed once half of its lifetime has passed (SPIRE rotates at the same point)."""


class IdentitySource(Protocol):
    """Gives the agent's current JWT-SVID for an audience (the gateway's issuer)."""

    async def svid(self, audience: str) -> str: ...


SvidCallable = Callable[[], str] | Callable[[], Awaitable[str]]
"""Any callable returning the agent's current JWT-SVID, plain or async."""


class CallableIdentity:
    """An `IdentitySource` over a callable; asked again for every exchange, so it may rotate at will."""

    def __init__(self, source: SvidCallable) -> None:
        self._source = source

    async def svid(self, audience: str) -> str:
        value = self._source()
        return await value if inspect.isawaitable(value) else value


def as_identity(source: IdentitySource | SvidCallable) -> IdentitySource:
    return source if hasattr(source, "svid") else CallableIdentity(source)


class SvidFile:
    """A JWT-SVID in a file that a helper such as spiffe-helper rewrites: read again whenever it changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._seen: tuple[int, int] | None = None
        self._token = ""

    async def svid(self, audience: str) -> str:
        stat = await asyncio.to_thread(self.path.stat)
        if (stat.st_mtime_ns, stat.st_size) != self._seen:
            self._token = (await asyncio.to_thread(self.path.read_text)).strip()
            self._seen = (stat.st_mtime_ns, stat.st_size)
        return self._token


class WorkloadApiIdentity:
    """JWT-SVIDs from the SPIFFE Workload API (py-spiffe's `JwtSource`, the `spiffe` extra), asked for with the
    gateway as audience and renewed halfway through their lifetime. `socket`: the Workload API endpoint
    (`unix:///path`), else `SPIFFE_ENDPOINT_SOCKET`. The blocking gRPC calls run off the event loop."""

    def __init__(self, socket: str | None = None, *, timeout: float = 10.0) -> None:
        self.socket, self.timeout = socket, timeout
        self._source: Any = None
        self._cached: dict[str, tuple[str, float]] = {}  # audience -> (SVID, renew at)
        self._lock = asyncio.Lock()

    async def svid(self, audience: str) -> str:
        cached = self._cached.get(audience)
        if cached is not None and time.time() < cached[1]:
            return cached[0]
        async with self._lock:
            if self._source is None:
                self._source = await asyncio.to_thread(self._open)
            token = await asyncio.to_thread(self._fetch, audience)
        self._cached[audience] = (token, renew_at(token))
        return token

    def _open(self) -> Any:
        from spiffe import JwtSource  # the `spiffe` extra, imported only when used

        return JwtSource(socket_path=self.socket, timeout_in_seconds=self.timeout)

    def _fetch(self, audience: str) -> str:
        return str(self._source.fetch_svid(audience={audience}, timeout=self.timeout).token)

    async def close(self) -> None:
        if self._source is not None:
            await asyncio.to_thread(self._source.close)
            self._source = None


def renew_at(token: str) -> float:
    """When an SVID is due for renewal: halfway between its `iat` (or now) and its `exp`."""
    claims = jwt.decode(token, options={"verify_signature": False})
    now = time.time()
    issued, expires = float(claims.get("iat", now)), float(claims["exp"])
    return issued + (expires - issued) * RENEW_BEFORE
