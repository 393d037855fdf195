"""The sync twin: `deputy_client.sync.DeputyClient` offers the async client's API to code that is not async.

No second implementation: the async client runs on a private event loop in a daemon thread, and each call
waits for its coroutine there. `task.auth(...)` is an `httpx2.Auth` for `httpx2.Client` whose warm path reads
the cache from the caller's thread, without a hop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from types import TracebackType
from typing import Any, TypeVar

from . import client as aio
from .auth import TaskAuth
from .grants import ACCESS_TOKEN, AccessToken
from .handoff import Handoff
from .tasks import Task as AsyncTask
from .tasks import TaskScope as AsyncTaskScope
from .tasks import key

T = TypeVar("T")


class _Loop:
    """An event loop of its own, in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="deputy-client", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class Task:
    """A task handle with the async `Task`'s API, each call blocking."""

    def __init__(self, task: AsyncTask, loop: _Loop) -> None:
        self._task, self._loop = task, loop
        self.id, self.scope, self.audiences, self.expires_at = task.id, task.scope, task.audiences, task.expires_at

    def token(self, audience: str, *scope: str) -> str:
        return self._loop.run(self._task.token(audience, *scope))

    def access_token(self, audience: str, *scope: str) -> AccessToken:
        return self._loop.run(self._task.access_token(audience, *scope))

    def auth(self, audience: str, *scope: str) -> TaskAuth:
        return TaskAuth(self._task, key(audience, scope), runner=self._loop.run)

    def delegate(self, *, scope: Sequence[str], audiences: Sequence[str] | None = None,
                 ttl: int | None = None) -> Handoff:
        return self._loop.run(self._task.delegate(scope=scope, audiences=audiences, ttl=ttl))

    def complete(self) -> dict[str, Any]:
        return self._loop.run(self._task.complete())


class TaskScope:
    """`with deputy.task(...) as task:` completes the task on leaving, as the async one does."""

    def __init__(self, scope: AsyncTaskScope, loop: _Loop) -> None:
        self._scope, self._loop = scope, loop

    def __enter__(self) -> Task:
        return Task(self._loop.run(self._scope.__aenter__()), self._loop)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._loop.run(self._scope.__aexit__(exc_type, exc, traceback))


class DeputyClient:
    """`with DeputyClient(url, identity=...) as deputy:`; the arguments are the async client's."""

    def __init__(self, url: str, **options: Any) -> None:
        self._loop = _Loop()
        self._client = self._loop.run(_make(url, options))

    def __enter__(self) -> DeputyClient:
        self._loop.run(self._client.__aenter__())
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._loop.run(self._client.aclose())
        finally:
            self._loop.close()

    @property
    def issuer(self) -> str:
        return self._client.issuer

    def task(self, user_token: str, *, scope: Sequence[str], audiences: Sequence[str], purpose: str | None = None,
             ttl: int | None = None, user_token_type: str = ACCESS_TOKEN) -> TaskScope:
        return TaskScope(self._client.task(user_token, scope=scope, audiences=audiences, purpose=purpose, ttl=ttl,
                                           user_token_type=user_token_type), self._loop)

    def join(self, handoff: Handoff) -> TaskScope:
        return TaskScope(self._client.join(handoff), self._loop)

    def exchange(self, user_token: str, *, resource: str, scope: Sequence[str],
                 user_token_type: str = ACCESS_TOKEN) -> AccessToken:
        return self._loop.run(self._client.exchange(user_token, resource=resource, scope=scope,
                                                    user_token_type=user_token_type))


async def _make(url: str, options: dict[str, Any]) -> aio.DeputyClient:
    """The async client, made on its loop (its HTTP client binds to the loop it first runs on)."""
    return aio.DeputyClient(url, **options)
