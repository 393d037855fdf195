"""SSF streams, their queued SETs and the sealed signing key ring, on the shared store's database
(`EventStreams`, `KeyRecords` in `delegation/store.py`). Queueing a SET NOTIFYs `deputy_events`, so every
replica's long polls wake at once (`postgres_listen.py`)."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from typing import Any

from psycopg.rows import DictRow

from ..store import ENABLED, PUSH, PendingSet, SealedRing, Stream
from .postgres_db import PostgresDatabase
from .postgres_listen import CHANNEL, Listener, Wakeup

FEED_POLL_S = 0.5  # how long a waiter waits at most while the LISTEN connection is down
LISTENING_POLL_S = 5.0  # ... and while it is up (notifications wake it; this only bounds a lost one)

_COLUMNS = tuple(Stream.__dataclass_fields__)
_ARRAYS = frozenset({"audiences", "events_requested", "events_delivered"})
_UPDATED = tuple(c for c in _COLUMNS if c not in {"id", "client", "audiences", "cursor", "created_at"})
_INSERT = f"INSERT INTO ssf_streams ({', '.join(_COLUMNS)}) VALUES ({', '.join(f'%({c})s' for c in _COLUMNS)})"
_UPDATE = f"UPDATE ssf_streams SET {', '.join(f'{c} = %({c})s' for c in _UPDATED)} WHERE id = %(id)s"
_QUEUE = (  # the SETs in their order (so `seq` keeps it), once each, on the stream `target` found
    "INSERT INTO ssf_pending (stream_id, jti, token) SELECT target.id, s.jti, s.token FROM target,"
    " unnest(%(jtis)s::text[], %(tokens)s::text[]) WITH ORDINALITY AS s(jti, token, n) ORDER BY s.n"
    " ON CONFLICT (stream_id, jti) DO NOTHING"
)
_NOTIFY = f"CASE WHEN count(*) > 0 AND %(queued)s THEN pg_notify('{CHANNEL}', '') END"
_ADVANCE = (  # the cursor moves only from `from`; the SETs are queued only if it did
    "WITH target AS (UPDATE ssf_streams SET cursor = %(to)s WHERE id = %(id)s AND cursor = %(from)s RETURNING id),"
    f" queued AS ({_QUEUE}) SELECT count(*) AS written, {_NOTIFY} FROM target"
)
_ENQUEUE = (  # FOR KEY SHARE: a stream deleted meanwhile is not found, rather than failing the insert
    "WITH target AS (SELECT id FROM ssf_streams WHERE id = %(id)s FOR KEY SHARE),"
    f" queued AS ({_QUEUE}) SELECT count(*) AS written, {_NOTIFY} FROM target"
)
_PUSH = (  # constants, not parameters, so the partial index ssf_streams_push serves it
    f"SELECT * FROM ssf_streams WHERE delivery = '{PUSH}' AND status = '{ENABLED}'"
    " AND EXISTS (SELECT 1 FROM ssf_pending WHERE stream_id = ssf_streams.id) ORDER BY id"
)


class PostgresEventStreams:
    """The stream and key-ring half of `PostgresStore`: `_db` is its pool, `_wakeup` wakes this process's
    waiters, `_listener` says whether other replicas' notifications reach them."""

    _db: PostgresDatabase
    _wakeup: Wakeup
    _listener: Listener
    _seen: weakref.WeakKeyDictionary[asyncio.Task[Any], int]

    async def wait_for_events(self, timeout: float) -> None:
        """Wait for the next wake-up; but return at once if one came since this same task last returned
        from here (it came while the caller was looking, and may be what the caller has not seen)."""
        task = asyncio.current_task()
        assert task is not None
        event, generation = self._wakeup.current(), self._wakeup.generation
        if self._seen.get(task, generation) == generation:
            await self._wakeup.wait(event, min(timeout, self._poll_s()))
        self._seen[task] = self._wakeup.generation

    def _poll_s(self) -> float:
        """How long to wait for a wake-up before looking anyway."""
        return LISTENING_POLL_S if self._listener.problem is None else FEED_POLL_S

    # Streams
    async def create_stream(self, stream: Stream) -> None:
        async with self._db.connection() as connection:
            await connection.execute(_INSERT, _params(stream))

    async def stream(self, stream_id: str) -> Stream | None:
        row = await self._db.fetchone("SELECT * FROM ssf_streams WHERE id = %s", (stream_id,), prepare=True)
        return _stream(row) if row else None

    async def streams_of(self, client: str) -> list[Stream]:
        rows = await self._db.fetch("SELECT * FROM ssf_streams WHERE client = %s ORDER BY created_at, id", (client,))
        return [_stream(r) for r in rows]

    async def push_streams(self) -> list[Stream]:
        return [_stream(r) for r in await self._db.fetch(_PUSH)]

    async def update_stream(self, stream: Stream) -> bool:
        return await self._changed(_UPDATE, _params(stream)) > 0

    async def delete_stream(self, stream_id: str) -> bool:
        return await self._changed("DELETE FROM ssf_streams WHERE id = %s", (stream_id,)) > 0

    async def touch_stream(self, stream_id: str, now: int) -> None:
        await self._changed("UPDATE ssf_streams SET touched_at = greatest(touched_at, %s) WHERE id = %s",
                            (now, stream_id))

    async def drop_inactive_streams(self, touched_before: int) -> int:
        return await self._changed("DELETE FROM ssf_streams WHERE touched_at < %s", (touched_before,))

    # Queued SETs
    async def advance_stream(self, stream_id: str, *, from_cursor: int, to_cursor: int,
                             sets: Sequence[PendingSet]) -> bool:
        return await self._queue(_ADVANCE, {"id": stream_id, "from": from_cursor, "to": to_cursor}, sets)

    async def enqueue_sets(self, stream_id: str, sets: Sequence[PendingSet]) -> bool:
        return await self._queue(_ENQUEUE, {"id": stream_id}, sets)

    async def _queue(self, statement: str, params: dict[str, Any], sets: Sequence[PendingSet]) -> bool:
        """One statement: find (or move) the stream, queue the SETs, NOTIFY if any; whether it was written."""
        row = await self._db.fetchone(statement, {**params, "jtis": [s.jti for s in sets],
                                                  "tokens": [s.token for s in sets], "queued": bool(sets)})
        written = bool(row and row["written"])
        if written and sets:
            self._wakeup.fire()
        return written

    async def clear_stream(self, stream_id: str, *, cursor: int) -> None:
        async with self._db.connection() as connection, connection.transaction():
            await connection.execute("DELETE FROM ssf_pending WHERE stream_id = %s", (stream_id,))
            await connection.execute("UPDATE ssf_streams SET cursor = greatest(cursor, %s) WHERE id = %s",
                                     (cursor, stream_id))

    async def pending_sets(self, stream_id: str, limit: int) -> tuple[list[PendingSet], bool]:
        rows = await self._db.fetch("SELECT jti, token FROM ssf_pending WHERE stream_id = %s ORDER BY seq LIMIT %s",
                                    (stream_id, limit + 1), prepare=True)
        return [PendingSet(r["jti"], r["token"]) for r in rows[:limit]], len(rows) > limit

    async def acknowledge(self, stream_id: str, jtis: Sequence[str]) -> int:
        return await self._changed("DELETE FROM ssf_pending WHERE stream_id = %s AND jti = ANY(%s::text[])",
                                   (stream_id, list(jtis)))

    # The sealed key ring
    async def key_ring(self) -> SealedRing | None:
        row = await self._db.fetchone("SELECT version, sealed FROM signing_key_ring WHERE id = 1")
        return SealedRing(row["version"], bytes(row["sealed"])) if row else None

    async def key_ring_version(self) -> int | None:
        row = await self._db.fetchone("SELECT version FROM signing_key_ring WHERE id = 1", prepare=True)
        return int(row["version"]) if row else None

    async def save_key_ring(self, sealed: bytes, *, replaces: int | None) -> int | None:
        """Compare-and-set on the one row: the first ring only if there is none, the next only over `replaces`."""
        if replaces is None:
            done = await self._changed("INSERT INTO signing_key_ring VALUES (1, 1, %s) ON CONFLICT DO NOTHING",
                                       (sealed,))
            return 1 if done else None
        done = await self._changed(
            "UPDATE signing_key_ring SET version = %s, sealed = %s WHERE id = 1 AND version = %s",
            (replaces + 1, sealed, replaces))
        return replaces + 1 if done else None

    async def _changed(self, statement: str, params: Sequence[Any] | dict[str, Any]) -> int:
        """One statement in its own transaction; how many rows it changed."""
        async with self._db.connection() as connection:
            return (await connection.execute(statement, params)).rowcount


def _params(stream: Stream) -> dict[str, Any]:
    return {c: list(getattr(stream, c)) if c in _ARRAYS else getattr(stream, c) for c in _COLUMNS}


def _stream(row: DictRow) -> Stream:
    fields: dict[str, Any] = {c: tuple(row[c]) if c in _ARRAYS else row[c] for c in _COLUMNS}
    return Stream(**fields)
