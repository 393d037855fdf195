"""A task handle (docs/tasks.md): its per-task access tokens, cached per (audience, scope), its delegations,
and its end. Leaving `async with` completes the task, on an exception and on cancellation too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Protocol

from .auth import TaskAuth
from .grants import TXN_TOKEN, AccessToken
from .handoff import Handoff

log = logging.getLogger("deputy_client")

CacheKey = tuple[str, frozenset[str]]


class TaskGateway(Protocol):
    """What a task needs of its client: exchanges by its agent, the end of a task, and the DPoP key."""

    issuer: str

    async def grant(self, form: dict[str, Any]) -> AccessToken: ...

    async def complete(self, task_id: str) -> dict[str, Any]: ...

    def proof(self, method: str, url: str, access_token: str, nonce: str | None) -> str: ...


class Task:
    """An open task: its id, scope ceiling, audiences and deadline. It holds the task token, never the user's."""

    def __init__(self, gateway: TaskGateway, grant: AccessToken, *, audiences: Sequence[str]) -> None:
        if grant.task_id is None:
            raise ValueError("the gateway opened a task without a task_id")
        self.gateway, self.id = gateway, grant.task_id
        self.scope, self.audiences = grant.scope, tuple(audiences)
        self.expires_at = int(time.time()) + grant.expires_in
        self._task_token = grant.access_token
        self._cache: dict[CacheKey, AccessToken] = {}
        self._locks: dict[CacheKey, asyncio.Lock] = {}

    def cached(self, key: CacheKey) -> AccessToken | None:
        """The cached token for `key` if it is not due for minting again; no lock, no I/O (the warm path)."""
        token = self._cache.get(key)
        return token if token is not None and token.fresh() else None

    async def access(self, key: CacheKey) -> AccessToken:
        """A fresh token for `key`; concurrent callers of one key share one exchange."""
        if (token := self.cached(key)) is not None:
            return token
        async with self._locks.setdefault(key, asyncio.Lock()):
            if (token := self.cached(key)) is not None:
                return token
            audience, scope = key
            token = await self.gateway.grant({"subject_token": self._task_token, "subject_token_type": TXN_TOKEN,
                                              "resource": audience, "scope": " ".join(sorted(scope))})
            self._cache[key] = token
            return token

    def forget(self, key: CacheKey, token: AccessToken) -> None:
        """A resource refused `token` as invalid (revoked, say): the next call for `key` mints again, and so
        learns from the gateway whether the task is still open."""
        if self._cache.get(key) is token:
            del self._cache[key]

    async def token(self, audience: str, *scope: str) -> str:
        """The raw access token for `audience` with `scope` (RFC 8693 §2.1 `resource`, RFC 6749 §3.3)."""
        return (await self.access_token(audience, *scope)).access_token

    async def access_token(self, audience: str, *scope: str) -> AccessToken:
        """`token`, with how to present it (`token_type`), its lifetime and its task."""
        return await self.access(key(audience, scope))

    def auth(self, audience: str, *scope: str) -> TaskAuth:
        """An `httpx2.Auth` giving every request a fitting token of this task (and a DPoP proof if bound)."""
        return TaskAuth(self, key(audience, scope))

    async def delegate(self, *, scope: Sequence[str], audiences: Sequence[str] | None = None,
                       ttl: int | None = None) -> Handoff:
        """What a sub-agent needs to open its child task with its own identity (docs/tasks.md, "Delegation").
        Nothing is asked of the gateway here: the sub-agent's `join` presents it with its own SVID."""
        return Handoff(gateway=self.gateway.issuer, task_token=self._task_token, task_id=self.id,
                       scope=tuple(scope), audiences=tuple(self.audiences if audiences is None else audiences),
                       expires_at=self.expires_at, ttl=ttl)

    async def complete(self) -> dict[str, Any]:
        """End the task, its descendants and every token minted under them; the cache goes with them."""
        self._cache.clear()
        return await self.gateway.complete(self.id)


def key(audience: str, scope: Sequence[str]) -> CacheKey:
    if not scope:
        raise ValueError("name at least one scope for the token")
    return audience, frozenset(scope)


class TaskScope:
    """`async with`: the opened `Task`; on leaving, the task is completed. A failure to complete is logged and
    raised, chained to the exception that was propagating (a cancellation propagates, with the failure noted)."""

    def __init__(self, opener: Callable[[], Awaitable[Task]]) -> None:
        self._opener: Callable[[], Awaitable[Task]] | None = opener  # holds the user's token until it is used
        self._task: Task | None = None

    async def __aenter__(self) -> Task:
        if self._opener is None:
            raise RuntimeError("a task scope is entered once")
        opener, self._opener = self._opener, None  # the user's token goes with it
        self._task = await opener()
        return self._task

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        assert self._task is not None
        completion = asyncio.ensure_future(self._task.complete())
        try:
            try:
                await asyncio.shield(completion)
            except asyncio.CancelledError:
                if completion.cancelled():
                    raise
                await completion  # cancelled while completing: finish completing, then let the cancellation go
                raise
        except Exception as failure:
            log.error("could not complete task %s: %s", self._task.id, failure)
            if isinstance(exc, asyncio.CancelledError):
                exc.add_note(f"and completing task {self._task.id} failed: {failure!r}")
                return
            raise failure from exc
