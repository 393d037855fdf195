"""Store implementations, opened by URL."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from ..records import StoreError
from ..store import Store
from .sqlite import SqliteStore, sqlite_path
from .sqlite_schema import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION

POSTGRESQL = ("postgresql://", "postgres://")  # libpq connection URIs


async def open_store(url: str) -> Store:
    """The store a `[store] url` names: `sqlite:///path`, or `postgresql://...` (a libpq URI, given to libpq
    as it is). SQLite migrates its schema itself; PostgreSQL refuses a schema other than the code's
    (`upgrade_store` applies its migrations)."""
    if url.startswith(POSTGRESQL):
        from .postgres import PostgresStore  # the driver is imported only by those who use it

        return await PostgresStore.open(url)
    return await SqliteStore.open(_sqlite(url))


async def upgrade_store(url: str) -> tuple[int, int]:
    """`deputy db upgrade`: bring the schema to this code's version; (the version before, after)."""
    if url.startswith(POSTGRESQL):
        from .postgres_schema import upgrade

        return await upgrade(url)
    path = _sqlite(url)
    before = 0
    if path.exists():
        try:
            with contextlib.closing(sqlite3.connect(path)) as connection:
                before = int(connection.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {exc}") from exc
    store = await SqliteStore.open(path)  # migrates
    await store.close()
    return before, SQLITE_SCHEMA_VERSION


def _sqlite(url: str) -> Path:
    if not url.startswith("sqlite:///"):
        raise StoreError("store.url: only sqlite:///path and postgresql:// URLs are supported")
    try:
        return sqlite_path(url)
    except ValueError as exc:
        raise StoreError(f"store.url: {exc}") from exc
