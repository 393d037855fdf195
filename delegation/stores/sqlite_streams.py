"""SSF streams, their queued SETs and the sealed signing key ring, on the embedded store's database
(`EventStreams`, `KeyRecords` in `delegation/store.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from ..store import ENABLED, PUSH, PendingSet, SealedRing, Stream
from .sqlite_writes import SqliteDatabase

FEED_POLL_S = 0.05  # other workers' commits are seen at the next look (this process's own wake at once)

_STREAM_COLUMNS = tuple(Stream.__dataclass_fields__)
_JSON_COLUMNS = frozenset({"audiences", "events_requested", "events_delivered"})
_UPDATED = tuple(c for c in _STREAM_COLUMNS if c not in {"id", "client", "audiences", "cursor", "created_at"})
_INSERT_STREAM = (f"INSERT INTO ssf_streams ({', '.join(_STREAM_COLUMNS)})"
                  f" VALUES ({', '.join('?' * len(_STREAM_COLUMNS))})")
_UPDATE_STREAM = f"UPDATE ssf_streams SET {', '.join(f'{c} = ?' for c in _UPDATED)} WHERE id = ?"
_QUEUE = "INSERT OR IGNORE INTO ssf_pending (stream_id, jti, token) VALUES (?, ?, ?)"


class SqliteEventStreams:
    """The stream and key-ring half of `SqliteStore`: `_db` is its database, `_changed` wakes this process's
    waiters (`wait_for_events`, `follow`) when it commits a revocation or a queued SET."""

    _db: SqliteDatabase
    _changed: asyncio.Event

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for_events(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), min(timeout, FEED_POLL_S))

    # Streams
    async def create_stream(self, stream: Stream) -> None:
        await self._db.write(lambda c: c.execute(_INSERT_STREAM, _stream_row(stream, _STREAM_COLUMNS)))

    async def stream(self, stream_id: str) -> Stream | None:
        rows = await self._db.read("SELECT * FROM ssf_streams WHERE id = ?", (stream_id,))
        return _stream(rows[0]) if rows else None

    async def streams_of(self, client: str) -> list[Stream]:
        rows = await self._db.read("SELECT * FROM ssf_streams WHERE client = ? ORDER BY created_at, id", (client,))
        return [_stream(r) for r in rows]

    async def push_streams(self) -> list[Stream]:
        rows = await self._db.read(
            "SELECT * FROM ssf_streams WHERE delivery = ? AND status = ? AND EXISTS"
            " (SELECT 1 FROM ssf_pending WHERE stream_id = ssf_streams.id) ORDER BY id", (PUSH, ENABLED))
        return [_stream(r) for r in rows]

    async def update_stream(self, stream: Stream) -> bool:
        params = (*_stream_row(stream, _UPDATED), stream.id)
        return bool(await self._db.write(lambda c: c.execute(_UPDATE_STREAM, params).rowcount))

    async def delete_stream(self, stream_id: str) -> bool:
        return bool(await self._db.write(
            lambda c: c.execute("DELETE FROM ssf_streams WHERE id = ?", (stream_id,)).rowcount))

    async def touch_stream(self, stream_id: str, now: int) -> None:
        await self._db.write(lambda c: c.execute(
            "UPDATE ssf_streams SET touched_at = max(touched_at, ?) WHERE id = ?", (now, stream_id)), small=True)

    async def drop_inactive_streams(self, touched_before: int) -> int:
        return int(await self._db.write(lambda c: c.execute(
            "DELETE FROM ssf_streams WHERE touched_at < ?", (touched_before,)).rowcount))

    # Queued SETs
    async def advance_stream(self, stream_id: str, *, from_cursor: int, to_cursor: int,
                             sets: Sequence[PendingSet]) -> bool:
        def work(connection: sqlite3.Connection) -> bool:
            moved = connection.execute("UPDATE ssf_streams SET cursor = ? WHERE id = ? AND cursor = ?",
                                       (to_cursor, stream_id, from_cursor)).rowcount
            if moved:
                connection.executemany(_QUEUE, [(stream_id, s.jti, s.token) for s in sets])
            return bool(moved)

        return self._woken(await self._db.write(work), bool(sets))

    async def enqueue_sets(self, stream_id: str, sets: Sequence[PendingSet]) -> bool:
        def work(connection: sqlite3.Connection) -> bool:
            if connection.execute("SELECT 1 FROM ssf_streams WHERE id = ?", (stream_id,)).fetchone() is None:
                return False
            connection.executemany(_QUEUE, [(stream_id, s.jti, s.token) for s in sets])
            return True

        return self._woken(await self._db.write(work), bool(sets))

    def _woken(self, written: bool, queued: bool) -> bool:
        if written and queued:
            self._wake()
        return written

    async def clear_stream(self, stream_id: str, *, cursor: int) -> None:
        def work(connection: sqlite3.Connection) -> None:
            connection.execute("DELETE FROM ssf_pending WHERE stream_id = ?", (stream_id,))
            connection.execute("UPDATE ssf_streams SET cursor = max(cursor, ?) WHERE id = ?", (cursor, stream_id))

        await self._db.write(work)

    async def pending_sets(self, stream_id: str, limit: int) -> tuple[list[PendingSet], bool]:
        rows = await self._db.read("SELECT jti, token FROM ssf_pending WHERE stream_id = ? ORDER BY seq LIMIT ?",
                                   (stream_id, limit + 1))
        return [PendingSet(r["jti"], r["token"]) for r in rows[:limit]], len(rows) > limit

    async def acknowledge(self, stream_id: str, jtis: Sequence[str]) -> int:
        if not jtis:
            return 0
        marks = ", ".join("?" * len(jtis))
        sql = f"DELETE FROM ssf_pending WHERE stream_id = ? AND jti IN ({marks})"
        return int(await self._db.write(lambda c: c.execute(sql, (stream_id, *jtis)).rowcount))

    # The sealed key ring
    async def key_ring(self) -> SealedRing | None:
        rows = await self._db.read("SELECT version, sealed FROM signing_key_ring WHERE id = 1")
        return SealedRing(rows[0]["version"], bytes(rows[0]["sealed"])) if rows else None

    async def key_ring_version(self) -> int | None:
        rows = await self._db.read("SELECT version FROM signing_key_ring WHERE id = 1")
        return int(rows[0][0]) if rows else None

    async def save_key_ring(self, sealed: bytes, *, replaces: int | None) -> int | None:
        def work(connection: sqlite3.Connection) -> int | None:
            if replaces is None:
                inserted = connection.execute(
                    "INSERT OR IGNORE INTO signing_key_ring VALUES (1, 1, ?)", (sealed,)).rowcount
                return 1 if inserted else None
            updated = connection.execute("UPDATE signing_key_ring SET version = ?, sealed = ? WHERE version = ?",
                                         (replaces + 1, sealed, replaces)).rowcount
            return replaces + 1 if updated else None

        return await self._db.write(work)

    def revocation_sync_problem(self) -> str | None:
        """Every worker reads one database file: a revocation committed by any is seen by the next read."""
        return None


def _stream_row(stream: Stream, columns: Sequence[str]) -> tuple[Any, ...]:
    return tuple(json.dumps(list(getattr(stream, c))) if c in _JSON_COLUMNS else getattr(stream, c) for c in columns)


def _stream(row: sqlite3.Row) -> Stream:
    fields: dict[str, Any] = {c: tuple(json.loads(row[c])) if c in _JSON_COLUMNS else row[c] for c in _STREAM_COLUMNS}
    return Stream(**fields)
