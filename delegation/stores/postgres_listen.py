"""Each PostgreSQL store instance's own session connection: LISTEN for what any replica commits, and the
sweeper's lead.

Every transaction that writes a revocation or queues an SSF SET also does `NOTIFY deputy_events`, which
PostgreSQL delivers once it has committed; the listener then wakes this process's feed readers and long
polls at once. One that records a cutoff or adds or lifts a block notifies with the payload
`cutoffs:<kind>:<subject>`: the listener tells the store's copy of them (postgres_cutoffs.py). While the
connection is down the readers fall back on polling, and `problem` says why the process cannot be sure to
see every revocation at once. On reconnecting it LISTENs again before anything else: whatever committed
before that is in the revocations table, where every reader, woken, reads it by its cursor; whatever commits
after is notified. Only then is `problem` cleared.

The lead of the sweeps is a session advisory lock (`pg_try_advisory_lock`) held on the same connection, so
it lasts as long as the connection: losing the connection loses the lead, and another replica takes it at
its next try (each instance not leading tries once a second, which also checks the connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .postgres_cutoffs import CHANGED as CUTOFFS_CHANGED
from .postgres_db import first_line

log = logging.getLogger(__name__)

CHANNEL = "deputy_events"
SWEEP_LOCK = "deputy:sweeper"
TRY_EVERY_S = 1.0  # how often the lead is tried for (and the connection checked)
CHECK_TIMEOUT_S = 5.0  # a check unanswered this long: the connection is taken for lost (a half-open TCP one)
RETRY_MIN_S, RETRY_MAX_S = 0.2, 5.0  # reconnection backoff
NOT_YET = "not yet listening for revocations on PostgreSQL (LISTEN)"
LISTENER_NAME = "listener"  # its application_name: the pool's, then this (pg_stat_activity tells them apart)


class Wakeup:
    """One event that wakes every waiter at once; `current()` before looking, so a wake-up that comes while
    looking is not lost. `generation` counts the wake-ups."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.generation = 0

    def current(self) -> asyncio.Event:
        return self._event

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()
        self.generation += 1

    async def wait(self, event: asyncio.Event, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


class Listener:
    """Keeps the session connection up: LISTEN, wake on notifications, hold or try the sweep lock."""

    def __init__(self, conninfo: str, wakeup: Wakeup, on_reconnect: Callable[[], Awaitable[None]],
                 on_cutoffs: Callable[[str], None]) -> None:
        name = conninfo_to_dict(conninfo).get("application_name") or "deputy"
        self._conninfo = make_conninfo(conninfo, application_name=f"{name} {LISTENER_NAME}")
        self._wakeup = wakeup
        self._on_reconnect = on_reconnect
        self._on_cutoffs = on_cutoffs
        self.problem: str | None = NOT_YET
        self.leading = False
        self._listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, wait: float) -> None:
        """Start listening; wait up to `wait` seconds for the first LISTEN (it goes on trying after)."""
        self._task = asyncio.create_task(self._run(), name="deputy-postgres-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), wait)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.leading = False

    async def _run(self) -> None:
        delay = RETRY_MIN_S
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    await self._lead(connection)
                    await self._caught_up()
                    delay = RETRY_MIN_S
                    await self._serve(connection)
            except Exception as exc:  # whatever stops it, it is not listening: fail closed, and try again
                self._lost(exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def _caught_up(self) -> None:
        """LISTEN is (again) in place: readers look at the table once more, the copy of the cutoffs is dropped,
        and sync is restored."""
        self._on_cutoffs(CUTOFFS_CHANGED)  # any of them may have changed while it was not listening
        await self._on_reconnect()
        self._wakeup.fire()
        if self._listening.is_set():
            log.warning("postgres.listen_restored", extra={"after": self.problem})
        self.problem = None
        self._listening.set()

    def _lost(self, exc: BaseException) -> None:
        if self.problem is None:
            log.error("postgres.listen_lost", extra={"error": first_line(exc)})
        self.leading = False
        before = "lost its PostgreSQL LISTEN connection" if self._listening.is_set() else NOT_YET
        self.problem = f"{before}: {first_line(exc)}"
        self._wakeup.fire()  # readers poll while it is down

    async def _serve(self, connection: psycopg.AsyncConnection[tuple[Any, ...]]) -> None:
        """Wake on every notification (or tell of changed cutoffs); once a second, try for the lead (or check
        the connection, which must answer within CHECK_TIMEOUT_S). Returns only by raising, when the
        connection is lost."""
        while True:
            async for notice in connection.notifies(timeout=TRY_EVERY_S):
                if notice.payload.startswith(CUTOFFS_CHANGED):
                    self._on_cutoffs(notice.payload)
                else:
                    self._wakeup.fire()
            try:
                await asyncio.wait_for(self._lead(connection), CHECK_TIMEOUT_S)
            except TimeoutError as exc:
                raise TimeoutError(f"the connection did not answer a check within {CHECK_TIMEOUT_S:g} s") from exc

    async def _lead(self, connection: psycopg.AsyncConnection[tuple[Any, ...]]) -> None:
        if self.leading:
            await connection.execute("SELECT 1")
            return
        row = await (await connection.execute(
            "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (SWEEP_LOCK,))).fetchone()
        self.leading = bool(row and row[0])
