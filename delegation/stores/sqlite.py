"""SQLite store (WAL): one connection on one thread, writes grouped into shared transactions.

Every write waits for its commit. Concurrent writes queue up and are committed together, so one fsync
serves many exchanges; if a grouped transaction fails, each write is retried alone so only the faulty
one fails. The event loop never touches sqlite3.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..audit import AuditEvent
from ..records import IssuedTokenRecord, StoreError

T = TypeVar("T")
Statement = tuple[str, tuple[Any, ...]]

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE issued_tokens (
        jti TEXT PRIMARY KEY,
        user_issuer TEXT NOT NULL,
        user_subject TEXT NOT NULL,
        agent TEXT NOT NULL,
        audience TEXT NOT NULL,
        scope TEXT NOT NULL,
        issued_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        task_id TEXT
    );
    CREATE INDEX issued_tokens_expiry ON issued_tokens (expires_at);
    CREATE TABLE audit_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        decision_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        action TEXT NOT NULL,
        outcome TEXT NOT NULL,
        error TEXT,
        agent TEXT,
        user_issuer TEXT,
        user_subject TEXT,
        audience TEXT,
        requested_scope TEXT,
        granted_scope TEXT,
        reasons TEXT NOT NULL,
        policy_revision TEXT,
        jti TEXT,
        task_id TEXT
    );
    CREATE INDEX audit_events_at ON audit_events (at);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_AUDIT_COLUMNS = tuple(AuditEvent.__dataclass_fields__)
_INSERT_AUDIT = (
    f"INSERT INTO audit_events ({', '.join(_AUDIT_COLUMNS)}) VALUES ({', '.join('?' * len(_AUDIT_COLUMNS))})"
)
_TOKEN_COLUMNS = tuple(IssuedTokenRecord.__dataclass_fields__)
_INSERT_TOKEN = (
    f"INSERT INTO issued_tokens ({', '.join(_TOKEN_COLUMNS)}) VALUES ({', '.join('?' * len(_TOKEN_COLUMNS))})"
)


def sqlite_path(url: str) -> Path:
    """`sqlite:///relative/path.db` or `sqlite:////absolute/path.db` (SQLAlchemy's convention)."""
    if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
        raise ValueError("must look like sqlite:///path/to/deputy.db")
    return Path(url.removeprefix("sqlite:///"))


def migrate(connection: sqlite3.Connection) -> None:
    """Bring the schema to SCHEMA_VERSION (PRAGMA user_version); refuse a newer database.

    Each step runs under BEGIN IMMEDIATE and re-reads the version, so concurrent workers migrate once.
    """
    while True:
        connection.execute("BEGIN IMMEDIATE")
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"database schema {version} is newer than this Deputy ({SCHEMA_VERSION})")
            if version == SCHEMA_VERSION:
                connection.execute("COMMIT")
                return
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {version + 1}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise


def _audit_row(event: AuditEvent) -> tuple[Any, ...]:
    values = event.as_dict()
    values["reasons"] = json.dumps(values["reasons"])
    return tuple(values[c] for c in _AUDIT_COLUMNS)


def _token_row(token: IssuedTokenRecord) -> tuple[Any, ...]:
    return tuple(getattr(token, c) for c in _TOKEN_COLUMNS)


class SqliteStore:
    """The embedded store. Open with `await SqliteStore.open(path)`; close with `await store.close()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deputy-sqlite")
        self._connection: sqlite3.Connection | None = None
        self._pending: list[tuple[Sequence[Statement], asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        store = cls(path)
        await store._call(store._connect)
        return store

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA busy_timeout = 5000")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("PRAGMA foreign_keys = ON")
        migrate(connection)
        self.path.chmod(0o600)
        self._connection = connection

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._connection is not None:
            await self._call(self._connection.close)
        self._executor.shutdown(wait=True)

    async def _call(self, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {exc}") from exc

    async def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        def run() -> list[sqlite3.Row]:
            assert self._connection is not None
            cursor = self._connection.execute(sql, params)
            cursor.row_factory = sqlite3.Row
            return cursor.fetchall()

        return await self._call(run)

    async def write(self, statements: Sequence[Statement]) -> None:
        """Run statements in one transaction, grouped with concurrent writers; raises StoreError."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((statements, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                errors = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._commit, [statements for statements, _ in batch]
                )
            except Exception as exc:  # the thread itself failed: every writer in the batch fails closed
                errors = [f"{type(exc).__name__}: {exc}"] * len(batch)
            for (_, future), error in zip(batch, errors, strict=True):
                if future.done():
                    continue
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(StoreError(error))

    def _commit(self, groups: list[Sequence[Statement]]) -> list[str | None]:
        assert self._connection is not None
        try:
            self._transaction([s for group in groups for s in group])
            return [None] * len(groups)
        except sqlite3.Error:
            if len(groups) == 1:
                raise
        errors: list[str | None] = []
        for group in groups:
            try:
                self._transaction(group)
                errors.append(None)
            except sqlite3.Error as exc:
                errors.append(f"sqlite: {exc}")
        return errors

    def _transaction(self, statements: Sequence[Statement]) -> None:
        assert self._connection is not None
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                connection.execute(sql, params)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    # ExchangeRecords
    async def record_grant(self, token: IssuedTokenRecord, event: AuditEvent) -> None:
        await self.write([(_INSERT_TOKEN, _token_row(token)), (_INSERT_AUDIT, _audit_row(event))])

    async def append_audit(self, event: AuditEvent) -> None:
        await self.write([(_INSERT_AUDIT, _audit_row(event))])

    async def issued_count(self) -> int:
        return (await self.read("SELECT count(*) FROM issued_tokens"))[0][0]
