"""The checked writes of concurrent requests, sent to PostgreSQL together: group commit.

A request's checked write (a grant, a task: postgres_writes.py) goes at once, alone, from the request's own
task, when fewer than `FLUSHES` statements are on their way; otherwise it joins a queue, and the next
statement to go takes every write queued by then (at most `LARGEST`). So a lone request pays one statement,
as before, and under load the statement's cost (the round trip, the locks, the commit, and the driver's own
work, which is most of a write's CPU on either side) is shared: bench/README.md has the figures.

The batch is one statement, so one transaction: `deputy_checks` (postgres_schema.py) then checks each row
on its own, and a row whose checks fail is not written while the others are. A batch only TRIES the shared
locks its rows need: a row needing one that a revocation holds comes back busy, unwritten, and goes again
alone, waiting for its locks (parties then trees, each set sorted, as every writer takes them, so writers
never deadlock); so a revocation in progress, or a replica frozen in one, holds up its own rows and not the
batch. A lone row always goes this way. A batch that fails as a whole (a driver or server error) is
written by nobody, and each of its rows goes again alone: one request's bad row cannot fail another's.

A write once queued goes to the database even if its request is cancelled (the client went away): it is
recorded, as it would have been had the cancellation come a moment later. (A write sent alone is
cancelled with its request, as any statement is: PostgreSQL commits it or not, and either is consistent.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from ..records import StoreError
from .postgres_db import PostgresDatabase
from .postgres_writes import WRITES

FLUSHES = 4  # statements on their way at once, per store; a write that finds them all taken joins the next batch
LARGEST = 64  # rows in one batch (some 2 KB of JSON each)


class WriteBatches:
    """Checked writes (`postgres_writes.checked_row`), batched; `await write(row)` is that row's result."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db
        self._queue: list[tuple[dict[str, Any], asyncio.Future[DictRow]]] = []
        self._flushing = 0  # statements on their way (a batch's is counted down in the step that finds the queue empty)
        self._tasks: set[asyncio.Task[None]] = set()  # the batches and the rows sent again alone

    async def write(self, row: dict[str, Any]) -> DictRow:
        """The row's checks as `WRITES` returns them (written if they passed). Raises StoreError."""
        if self._flushing < FLUSHES and not self._queue:  # alone: sent at once, from this request's own task
            self._flushing += 1
            try:
                (result,) = await self._send([row], wait=True)
                return result
            finally:
                self._flushing -= 1
                self._flush_queued()
        done: asyncio.Future[DictRow] = asyncio.get_running_loop().create_future()
        self._queue.append((row, done))
        self._flush_queued()
        return await done

    async def close(self) -> None:
        """Wait for the writes on their way (before the pool closes)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _flush_queued(self) -> None:
        if self._queue and self._flushing < FLUSHES:
            self._flushing += 1
            self._start(self._flush())

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:LARGEST], self._queue[LARGEST:]
                if len(batch) == 1:
                    await self._alone(*batch[0])
                    continue
                results: list[DictRow | None]
                try:
                    results = [*await self._send([row for row, _ in batch], wait=False)]
                except Exception:  # nothing was written: each row goes alone, to its own outcome
                    results = [None] * len(batch)
                for (row, done), result in zip(batch, results, strict=True):
                    if result is None or result["busy"]:
                        self._start(self._alone(row, done))  # not in this batch's way
                    else:
                        _settle(done, result)
        finally:
            self._flushing -= 1

    async def _alone(self, row: dict[str, Any], done: asyncio.Future[DictRow]) -> None:
        """One row, waiting for its locks (at most lock_timeout: postgres_db.py)."""
        try:
            (result,) = await self._send([row], wait=True)
        except Exception as exc:  # every error reaches its request (StoreError: 503)
            _settle(done, exc)
        else:
            _settle(done, result)

    async def _send(self, rows: list[dict[str, Any]], *, wait: bool) -> list[DictRow]:
        results = await self._db.fetch(WRITES, {"rows": Jsonb(rows), "wait": wait}, prepare=True)
        if len(results) != len(rows):
            raise StoreError(f"postgresql: a batch of {len(rows)} checked writes returned {len(results)} rows")
        return results


def _settle(done: asyncio.Future[DictRow], outcome: DictRow | BaseException) -> None:
    if done.done():  # its request was cancelled
        return
    if isinstance(outcome, BaseException):
        done.set_exception(outcome)
    else:
        done.set_result(outcome)
