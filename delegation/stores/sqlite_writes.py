"""How the SQLite store talks to its database file (WAL), shared by every gateway worker process.

Small hot-path writes (a grant, a task, an audit event) run on the event loop: the writes that arrive in
one loop iteration commit together, in one transaction, if the write lock is free at once. On this
class of machine a hop to a thread costs about 300 µs of CPU and 350 µs of latency, more than such a
commit (about 150-200 µs), so the loop only blocks for work cheaper than the hop (style §8). When the
lock is held by another process, or the transaction fails, the batch goes to the store's own thread,
which waits for the lock in short naps and retries each write alone so only a faulty one fails.
Maintenance writes (revocation cascades, expiry) always run on that thread.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..records import StoreError
from .sqlite_schema import migrate

T = TypeVar("T")
log = logging.getLogger(__name__)
Work = Callable[[sqlite3.Connection], Any]
Pending = list[tuple[Work, "asyncio.Future[Any]"]]

LOCK_WAIT_S = 5.0
INLINE_RETRIES, INLINE_RETRY_S = 4, 0.0001  # on a busy lock, retry the loop's commit after 0.2-1.6 ms
CHECKPOINT_EVERY = 200  # inline commits between WAL checkpoints run on the store's thread


class SqliteDatabase:
    """Connections to one database file: the thread's (which wait for the lock) and the loop's (which don't)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deputy-sqlite")
        self._connection: sqlite3.Connection | None = None  # the thread's writer: waits for the lock
        self._reader: sqlite3.Connection | None = None  # the thread's reader
        self._loop_writer: sqlite3.Connection | None = None  # the event loop's: never waits
        self._loop_reader: sqlite3.Connection | None = None
        self._pending: Pending = []
        self._inline: Pending = []
        self._inline_flush: asyncio.Handle | None = None
        self._busy_streak = 0
        self._inline_commits = 0
        self._checkpointer: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None

    async def open(self) -> None:
        try:
            await self.call(self._connect)
        except OSError as exc:  # a directory that cannot be made (SQLite's own errors are StoreError already)
            await self.close()
            raise StoreError(f"sqlite: {self.path}: {exc.strerror or exc}") from exc
        try:
            self._loop_writer = self._open_connection(busy_timeout_ms=0)
            # Checkpoints copy the WAL into the database; the thread does them (see _checkpoint), never a
            # commit on the loop.
            self._loop_writer.execute("PRAGMA wal_autocheckpoint = 0")
            self._loop_reader = self._open_connection(busy_timeout_ms=100)  # WAL readers wait only in recovery
        except sqlite3.Error as exc:
            await self.close()
            raise StoreError(f"sqlite: {exc}") from exc

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = self._open_connection()
        self._connection.execute("PRAGMA journal_mode = WAL")
        migrate(self._connection)
        # The writer waits for the lock in _begin, in short naps: SQLite's own busy handler sleeps in
        # steps of up to 100 ms, which serializes the gateway's worker processes behind one another.
        self._connection.execute("PRAGMA busy_timeout = 0")
        self._reader = self._open_connection()
        self.path.chmod(0o600)

    def _open_connection(self, busy_timeout_ms: int = int(LOCK_WAIT_S * 1000)) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        connection.row_factory = sqlite3.Row
        connection.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("PRAGMA foreign_keys = ON")
        return connection

    async def close(self) -> None:
        if self._inline_flush is not None:  # writes still waiting for the loop: the thread commits them
            self._inline_flush.cancel()
            self._inline_flush = None
            batch, self._inline = self._inline, []
            self._to_thread(batch)
        for task in (self._flusher, self._checkpointer):
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        for connection in (self._loop_writer, self._loop_reader):
            if connection is not None:
                connection.close()
        for connection in (self._connection, self._reader):
            if connection is not None:
                await self.call(connection.close)
        self._executor.shutdown(wait=True)

    async def call(self, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except (sqlite3.Error, OverflowError) as exc:  # OverflowError: an integer beyond SQLite's 64 bits
            raise StoreError(f"sqlite: {exc}") from exc

    async def read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """A read on the store's thread (for lists that may be long)."""

        def run() -> list[sqlite3.Row]:
            assert self._reader is not None
            return self._reader.execute(sql, tuple(params)).fetchall()

        return await self.call(run)

    def lookup(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        """An indexed point read on the loop: WAL readers never wait for writers."""
        assert self._loop_reader is not None
        try:
            return self._loop_reader.execute(sql, tuple(params)).fetchall()
        except (sqlite3.Error, OverflowError) as exc:
            raise StoreError(f"sqlite: {exc}") from exc

    async def write(self, work: Callable[[sqlite3.Connection], T], *, small: bool = False) -> T:
        """Run `work(connection)` in a transaction, grouped with concurrent writers; raises StoreError.

        `small` writes try the event loop first (see the module docstring); the others go to the thread.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if small:
            self._inline.append((work, future))
            if self._inline_flush is None:
                self._inline_flush = asyncio.get_running_loop().call_soon(self._flush_inline)
        else:
            self._to_thread([(work, future)])
        result: T = await future
        return result

    def _flush_inline(self) -> None:
        self._inline_flush = None
        batch, self._inline = self._inline, []
        assert self._loop_writer is not None
        try:
            outcomes = _transaction(self._loop_writer, [work for work, _ in batch], wait=False)
        except _LockBusy:  # another worker is committing: try again in a moment, then leave it to the thread
            self._retry_inline_later(batch)
            return
        except Exception:  # a failing write: the thread retries each write alone so only it fails
            self._to_thread(batch)
            return
        self._busy_streak = 0
        _settle(batch, outcomes)
        self._inline_commits += 1
        if self._inline_commits % CHECKPOINT_EVERY == 0 and (self._checkpointer is None or self._checkpointer.done()):
            self._checkpointer = asyncio.create_task(self._checkpoint())

    def _retry_inline_later(self, batch: Pending) -> None:
        if self._busy_streak >= INLINE_RETRIES:
            self._busy_streak = 0
            self._to_thread(batch)
            return
        self._busy_streak += 1
        self._inline = batch + self._inline
        delay = INLINE_RETRY_S * 2**self._busy_streak
        self._inline_flush = asyncio.get_running_loop().call_later(delay, self._flush_inline)

    async def _checkpoint(self) -> None:
        """A passive WAL checkpoint on the thread: it copies what no reader needs and never waits."""
        assert self._connection is not None
        connection = self._connection
        try:
            await self.call(lambda: connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())
        except StoreError as exc:
            log.warning("sqlite.checkpoint_failed", extra={"error": str(exc)})

    def _to_thread(self, batch: Pending) -> None:
        self._pending.extend(batch)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                outcomes = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._commit, [work for work, _ in batch]
                )
            except Exception as exc:  # the thread itself failed: every writer in the batch fails closed
                outcomes = [StoreError(f"{type(exc).__name__}: {exc}")] * len(batch)
            _settle(batch, outcomes)

    def _commit(self, works: list[Work]) -> list[Any]:
        """All works in one transaction; if that fails, each alone, so only the faulty one fails."""
        assert self._connection is not None
        try:
            return _transaction(self._connection, works, wait=True)
        except (sqlite3.Error, StoreError) as exc:
            if len(works) == 1:
                return [exc if isinstance(exc, StoreError) else StoreError(f"sqlite: {exc}")]
        outcomes: list[Any] = []
        for work in works:
            try:
                outcomes.extend(_transaction(self._connection, [work], wait=True))
            except sqlite3.Error as exc:
                outcomes.append(StoreError(f"sqlite: {exc}"))
            except StoreError as exc:
                outcomes.append(exc)
        return outcomes


class _LockBusy(Exception):
    """Another connection holds the write lock and this caller will not wait."""


def _begin(connection: sqlite3.Connection, *, wait: bool) -> None:
    """BEGIN IMMEDIATE; when waiting, nap 0.1-2 ms while another process holds the lock (up to LOCK_WAIT_S)."""
    deadline, nap = time.monotonic() + LOCK_WAIT_S, 0.0001
    while True:
        try:
            connection.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                raise
            if not wait:
                raise _LockBusy() from exc
            if time.monotonic() > deadline:
                raise
        time.sleep(nap)
        nap = min(nap * 2, 0.002)


def _transaction(connection: sqlite3.Connection, works: list[Work], *, wait: bool) -> list[Any]:
    _begin(connection, wait=wait)
    try:
        results = [work(connection) for work in works]
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return results


def _settle(batch: Pending, outcomes: list[Any]) -> None:
    for (_, future), outcome in zip(batch, outcomes, strict=True):
        if future.done():
            continue
        if isinstance(outcome, StoreError):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
