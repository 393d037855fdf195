"""SQLite store (WAL), shared by every gateway worker process.

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
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from token_exchange.rfc9068 import new_id
from token_exchange.scope import Scope

from ..audit import AuditEvent
from ..records import IssuedTokenRecord, StoreError, TaskEnded
from ..tasks import OPEN, Revocation, Task

T = TypeVar("T")
log = logging.getLogger(__name__)
Work = Callable[[sqlite3.Connection], Any]

# Each commit writes one WAL frame per page it dirties, so the hot path's inserts touch as few B-trees as
# they can: keyed tables are WITHOUT ROWID, and indexes that only ended or delegated tasks need are partial.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        parent_id TEXT REFERENCES tasks (id) ON DELETE CASCADE,
        root_id TEXT NOT NULL,
        chain TEXT NOT NULL,
        agent TEXT NOT NULL,
        user_issuer TEXT NOT NULL,
        user_subject TEXT NOT NULL,
        scope TEXT NOT NULL,
        audiences TEXT NOT NULL,
        purpose TEXT,
        created_at INTEGER NOT NULL,
        deadline INTEGER NOT NULL,
        implicit INTEGER NOT NULL,
        state TEXT NOT NULL,
        ended_at INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX tasks_open ON tasks (deadline) WHERE state = 'open';
    CREATE INDEX tasks_ended ON tasks (ended_at) WHERE state != 'open';
    CREATE INDEX tasks_children ON tasks (parent_id) WHERE parent_id IS NOT NULL;
    CREATE INDEX tasks_agent ON tasks (agent);
    CREATE TABLE issued_tokens (
        jti TEXT PRIMARY KEY,
        user_issuer TEXT NOT NULL,
        user_subject TEXT NOT NULL,
        agent TEXT NOT NULL,
        audience TEXT NOT NULL,
        scope TEXT NOT NULL,
        issued_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        task_id TEXT,
        revoked_at INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX issued_tokens_task ON issued_tokens (task_id);
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
    CREATE INDEX audit_events_task ON audit_events (task_id);
    CREATE TABLE revocations (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        reason TEXT NOT NULL,
        task_ids TEXT NOT NULL,
        jtis TEXT NOT NULL
    );
    CREATE INDEX revocations_at ON revocations (at);
    CREATE TABLE credential_cutoffs (
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        issuer TEXT NOT NULL,
        issued_before INTEGER NOT NULL,
        PRIMARY KEY (kind, subject, issuer)
    ) WITHOUT ROWID;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
LOCK_WAIT_S = 5.0
INLINE_RETRIES, INLINE_RETRY_S = 4, 0.0001  # on a busy lock, retry the loop's commit after 0.2-1.6 ms
CHECKPOINT_EVERY = 200  # inline commits between WAL checkpoints run on the store's thread

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
    return tuple(json.dumps(list(event.reasons)) if c == "reasons" else getattr(event, c) for c in _AUDIT_COLUMNS)


def _token_row(token: IssuedTokenRecord) -> tuple[Any, ...]:
    return tuple(getattr(token, c) for c in _TOKEN_COLUMNS)


class SqliteStore:
    """The embedded store. Open with `await SqliteStore.open(path)`; close with `await store.close()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deputy-sqlite")
        self._connection: sqlite3.Connection | None = None  # the thread's writer: waits for the lock
        self._reader: sqlite3.Connection | None = None  # the thread's reader
        self._loop_writer: sqlite3.Connection | None = None  # the event loop's: never waits
        self._loop_reader: sqlite3.Connection | None = None
        self._pending: list[tuple[Work, asyncio.Future[Any]]] = []
        self._inline: list[tuple[Work, asyncio.Future[Any]]] = []
        self._inline_flush: asyncio.Handle | None = None
        self._busy_streak = 0
        self._revoked = asyncio.Event()
        self._inline_commits = 0
        self._checkpointer: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        store = cls(path)
        await store._call(store._connect)
        try:
            store._loop_writer = store._open_connection(busy_timeout_ms=0)
            # Checkpoints copy the WAL into the database; the thread does them (see _checkpoint_soon),
            # never a commit on the loop.
            store._loop_writer.execute("PRAGMA wal_autocheckpoint = 0")
            store._loop_reader = store._open_connection(busy_timeout_ms=100)  # WAL readers wait only in recovery
        except sqlite3.Error as exc:
            await store.close()
            raise StoreError(f"sqlite: {exc}") from exc
        return store

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
                await self._call(connection.close)
        self._executor.shutdown(wait=True)

    async def _call(self, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except (sqlite3.Error, OverflowError) as exc:  # OverflowError: an integer beyond SQLite's 64 bits
            raise StoreError(f"sqlite: {exc}") from exc

    async def read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """A read on the store's thread (for lists that may be long)."""

        def run() -> list[sqlite3.Row]:
            assert self._reader is not None
            return self._reader.execute(sql, tuple(params)).fetchall()

        return await self._call(run)

    def _lookup(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
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
            if self._busy_streak < INLINE_RETRIES:
                self._busy_streak += 1
                self._inline = batch + self._inline
                delay = INLINE_RETRY_S * 2**self._busy_streak
                self._inline_flush = asyncio.get_running_loop().call_later(delay, self._flush_inline)
                return
            self._busy_streak = 0
            self._to_thread(batch)
            return
        except Exception:  # a failing write: the thread retries each write alone so only it fails
            self._to_thread(batch)
            return
        self._busy_streak = 0
        _settle(batch, outcomes)
        self._inline_commits += 1
        if self._inline_commits % CHECKPOINT_EVERY == 0 and (self._checkpointer is None or self._checkpointer.done()):
            self._checkpointer = asyncio.create_task(self._checkpoint())

    async def _checkpoint(self) -> None:
        """A passive WAL checkpoint on the thread: it copies what no reader needs and never waits."""
        assert self._connection is not None
        connection = self._connection
        try:
            await self._call(lambda: connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())
        except StoreError as exc:
            log.warning("sqlite.checkpoint_failed", extra={"error": str(exc)})

    def _to_thread(self, batch: list[tuple[Work, asyncio.Future[Any]]]) -> None:
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

    # Exchange records
    async def record_grant(self, token: IssuedTokenRecord, event: AuditEvent, task: Task | None = None) -> None:
        """A minted token, its task when the exchange created one, and the audit event: all or nothing.

        A token under an existing task is only recorded while that task is still open (TaskEnded)."""

        def work(connection: sqlite3.Connection) -> None:
            if task is not None:
                connection.execute(_INSERT_TASK, _task_row(task))
            elif token.task_id is not None:
                _require_open(connection, token.task_id, token.issued_at)
            connection.execute(_INSERT_TOKEN, _token_row(token))
            connection.execute(_INSERT_AUDIT, _audit_row(event))

        await self.write(work, small=True)

    async def record_task(self, task: Task, event: AuditEvent) -> None:
        """A task and its audit event; a delegated task only while its parent is still open (TaskEnded)."""

        def work(connection: sqlite3.Connection) -> None:
            if task.parent_id is not None:
                _require_open(connection, task.parent_id, task.created_at)
            connection.execute(_INSERT_TASK, _task_row(task))
            connection.execute(_INSERT_AUDIT, _audit_row(event))

        await self.write(work, small=True)

    async def append_audit(self, event: AuditEvent) -> None:
        await self.write(lambda connection: connection.execute(_INSERT_AUDIT, _audit_row(event)), small=True)

    async def issued_count(self) -> int:
        return int((await self.read("SELECT count(*) FROM issued_tokens"))[0][0])

    # Tasks
    async def task(self, task_id: str) -> Task | None:
        rows = self._lookup("SELECT * FROM tasks WHERE id = ?", (task_id,))
        return _task(rows[0]) if rows else None

    async def tasks(self, *, agent: str | None = None, user: str | None = None, state: str | None = None,
                    limit: int = 100) -> list[Task]:
        clauses, params = _filters(agent=agent, user_subject=user, state=state)
        rows = await self.read(
            f"SELECT * FROM tasks {clauses} ORDER BY created_at DESC, id LIMIT ?", (*params, limit)
        )
        return [_task(r) for r in rows]

    async def cutoffs(self, *, agent: str, trust_domain: str, user: tuple[str, str] | None
                      ) -> tuple[int | None, int | None]:
        """Admin revocations that still bar credentials: (the agent's or its trust domain's, the user's).

        A credential issued (`iat`) at or before the time returned was revoked with its party (end_matching)."""
        issuer, subject = user if user is not None else ("", "\0")
        row = self._lookup(
            "SELECT max(CASE WHEN kind != 'user' THEN issued_before END),"
            " max(CASE WHEN kind = 'user' THEN issued_before END) FROM credential_cutoffs"
            " WHERE (kind = 'agent' AND subject = ?) OR (kind = 'trust_domain' AND subject = ?)"
            " OR (kind = 'user' AND subject = ? AND issuer IN (?, ''))",
            (agent, trust_domain, subject, issuer),
        )[0]
        return row[0], row[1]

    async def children(self, task_id: str) -> list[str]:
        """The ids of the tasks delegated directly from this one."""
        rows = await self.read("SELECT id FROM tasks WHERE parent_id = ? ORDER BY created_at", (task_id,))
        return [r["id"] for r in rows]

    async def task_tokens(self, task_id: str) -> list[dict[str, Any]]:
        rows = await self.read("SELECT * FROM issued_tokens WHERE task_id = ? ORDER BY issued_at", (task_id,))
        return [dict(r) for r in rows]

    async def token(self, jti: str) -> tuple[IssuedTokenRecord, bool, Task | None] | None:
        """A token's record, whether it was revoked on its own, and its task."""
        rows = self._lookup("SELECT * FROM issued_tokens WHERE jti = ?", (jti,))
        if not rows:
            return None
        row = rows[0]
        record = IssuedTokenRecord(*(row[c] for c in _TOKEN_COLUMNS))
        task = await self.task(row["task_id"]) if row["task_id"] else None
        return record, row["revoked_at"] is not None, task

    async def end_tasks(self, roots: Sequence[str], *, state: str, reason: str, now: int,
                        event: AuditEvent | None = None) -> Revocation | None:
        """End open tasks, all their descendants and every token minted under them, atomically."""
        return self._announce(await self.write(lambda c: _end_tasks(c, list(roots), state, reason, now, event)))

    async def end_matching(self, *, agent: str | None = None, trust_domain: str | None = None,
                           user: tuple[str | None, str] | None = None, reason: str, now: int,
                           event: AuditEvent | None = None) -> Revocation | None:
        """Revoke every open task of an agent, a trust domain or a user (with descendants and tokens), and
        refuse from now on the credentials (SVIDs, user tokens) of that party issued until now.

        `user` is (issuer, subject); with issuer None, that subject at every subject issuer."""

        def work(connection: sqlite3.Connection) -> Revocation | None:
            if agent is not None:
                cutoff = ("agent", agent, "")
            elif trust_domain is not None:
                cutoff = ("trust_domain", trust_domain, "")
            else:
                assert user is not None
                cutoff = ("user", user[1], user[0] or "")
            connection.execute(  # credentials issued until now stop working too, not only the open tasks
                "INSERT INTO credential_cutoffs VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET issued_before ="
                " max(issued_before, excluded.issued_before)", (*cutoff, now))
            if agent is not None:
                rows = connection.execute("SELECT id FROM tasks WHERE state = 'open' AND agent = ?", (agent,))
            elif trust_domain is not None:
                prefix = f"spiffe://{trust_domain}/"
                rows = connection.execute(
                    "SELECT id FROM tasks WHERE state = 'open' AND substr(agent, 1, ?) = ?", (len(prefix), prefix)
                )
            else:
                assert user is not None
                issuer, subject = user
                rows = connection.execute(  # no issuer: that subject at every subject issuer
                    "SELECT id FROM tasks WHERE state = 'open' AND user_subject = ?"
                    " AND coalesce(?, user_issuer) = user_issuer",
                    (subject, issuer),
                )
            return _end_tasks(connection, [r[0] for r in rows], REVOKED_STATE, reason, now, event)

        return self._announce(await self.write(work))

    async def revoke_token(self, jti: str, *, reason: str, now: int, event: AuditEvent | None = None
                           ) -> Revocation | None:
        def work(connection: sqlite3.Connection) -> Revocation | None:
            changed = connection.execute(
                "UPDATE issued_tokens SET revoked_at = ? WHERE jti = ? AND revoked_at IS NULL", (now, jti)
            ).rowcount
            if event is not None:
                connection.execute(_INSERT_AUDIT, _audit_row(event))
            return _revocation(connection, now, reason, [], [jti]) if changed else None

        return self._announce(await self.write(work))

    def _announce(self, revocation: Revocation | None) -> Revocation | None:
        """Wake this process's feed readers at once; other workers' readers find it at their next poll."""
        if revocation is not None:
            self._revoked.set()
            self._revoked = asyncio.Event()
        return revocation

    async def wait_for_revocation(self, timeout: float) -> None:
        """Return when this process records a revocation, or after `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._revoked.wait(), timeout)

    async def revocations(self, since: int, limit: int) -> list[Revocation]:
        rows = await self.read("SELECT * FROM revocations WHERE seq > ? ORDER BY seq LIMIT ?", (since, limit))
        return [
            Revocation(r["seq"], r["at"], r["reason"], tuple(json.loads(r["task_ids"])), tuple(json.loads(r["jtis"])))
            for r in rows
        ]

    async def expire_and_purge(self, *, now: int, retention: int) -> tuple[int, int]:
        """Mark tasks past their deadline expired (a feed event); delete what ended over `retention` ago."""

        def work(connection: sqlite3.Connection) -> tuple[int, int]:
            expired = connection.execute(
                "SELECT id, agent, user_issuer, user_subject FROM tasks WHERE state = 'open' AND deadline <= ?", (now,)
            ).fetchall()
            for row in expired:
                connection.execute(_INSERT_AUDIT, _audit_row(AuditEvent(
                    decision_id=new_id(), at=now, action="expire", outcome="granted", agent=row["agent"],
                    user_issuer=row["user_issuer"], user_subject=row["user_subject"], task_id=row["id"],
                    reasons=("task deadline passed",))))
            if expired:
                _end_tasks(connection, [r["id"] for r in expired], EXPIRED_STATE, "deadline passed", now, None)
            cutoff = now - retention
            purged = connection.execute(
                "DELETE FROM tasks WHERE state != 'open' AND ended_at < ? AND parent_id IS NULL", (cutoff,)
            ).rowcount
            connection.execute(
                "DELETE FROM issued_tokens WHERE expires_at < ? AND (task_id IS NULL OR task_id NOT IN "
                "(SELECT id FROM tasks))", (cutoff,)
            )
            connection.execute("DELETE FROM revocations WHERE at < ?", (cutoff,))
            return len(expired), purged

        return await self.write(work)

    async def audit_events(self, *, task: str | None = None, agent: str | None = None, user: str | None = None,
                           since: int | None = None, until: int | None = None, limit: int = 100
                           ) -> list[dict[str, Any]]:
        clauses, params = _filters(task_id=task, agent=agent, user_subject=user)
        extra = []
        if since is not None:
            extra.append("at >= ?")
            params.append(since)
        if until is not None:
            extra.append("at <= ?")
            params.append(until)
        if extra:
            clauses = (clauses + " AND " if clauses else "WHERE ") + " AND ".join(extra)
        rows = await self.read(f"SELECT * FROM audit_events {clauses} ORDER BY id DESC LIMIT ?", (*params, limit))
        return [{**dict(r), "reasons": json.loads(r["reasons"])} for r in rows]


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


def _require_open(connection: sqlite3.Connection, task_id: str, now: int) -> None:
    """Inside the writing transaction: the check and the write cannot be split by an ending task."""
    row = connection.execute("SELECT state, deadline FROM tasks WHERE id = ?", (task_id,)).fetchone()
    if row is None or row["state"] != OPEN or row["deadline"] <= now:
        raise TaskEnded(f"task {task_id[:12]} has ended")


def _settle(batch: list[tuple[Work, asyncio.Future[Any]]], outcomes: list[Any]) -> None:
    for (_, future), outcome in zip(batch, outcomes, strict=True):
        if future.done():
            continue
        if isinstance(outcome, StoreError):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


REVOKED_STATE, EXPIRED_STATE = "revoked", "expired"
_TASK_COLUMNS = ("id", "parent_id", "root_id", "chain", "agent", "user_issuer", "user_subject", "scope",
                 "audiences", "purpose", "created_at", "deadline", "implicit", "state", "ended_at")
_INSERT_TASK = f"INSERT INTO tasks ({', '.join(_TASK_COLUMNS)}) VALUES ({', '.join('?' * len(_TASK_COLUMNS))})"


def _task_row(task: Task) -> tuple[Any, ...]:
    return (task.id, task.parent_id, task.root_id, json.dumps(list(task.chain)), task.agent, task.user_issuer,
            task.user_subject, str(task.scope), json.dumps(list(task.audiences)), task.purpose, task.created_at,
            task.deadline, int(task.implicit), task.state, task.ended_at)


def _task(row: sqlite3.Row) -> Task:
    return Task(
        id=row["id"], parent_id=row["parent_id"], root_id=row["root_id"], chain=tuple(json.loads(row["chain"])),
        user_issuer=row["user_issuer"], user_subject=row["user_subject"], scope=Scope.from_claim(row["scope"]),
        audiences=tuple(json.loads(row["audiences"])), purpose=row["purpose"], created_at=row["created_at"],
        deadline=row["deadline"], implicit=bool(row["implicit"]), state=row["state"], ended_at=row["ended_at"],
    )


def _filters(**equal: str | None) -> tuple[str, list[Any]]:
    names = [name for name, value in equal.items() if value is not None]
    params: list[Any] = [equal[name] for name in names]
    return ("WHERE " + " AND ".join(f"{n} = ?" for n in names) if names else ""), params


def _end_tasks(connection: sqlite3.Connection, roots: list[str], state: str, reason: str, now: int,
               event: AuditEvent | None) -> Revocation | None:
    if event is not None:
        connection.execute(_INSERT_AUDIT, _audit_row(event))
    if not roots:
        return None
    marks = ", ".join("?" * len(roots))
    ids = [r[0] for r in connection.execute(
        f"""WITH RECURSIVE subtree(id) AS (
                SELECT id FROM tasks WHERE id IN ({marks})
                UNION SELECT t.id FROM tasks t JOIN subtree s ON t.parent_id = s.id)
            SELECT tasks.id FROM tasks JOIN subtree USING (id) WHERE tasks.state = ?""",
        (*roots, OPEN))]
    if not ids:
        return None
    marks = ", ".join("?" * len(ids))
    connection.execute(f"UPDATE tasks SET state = ?, ended_at = ? WHERE id IN ({marks})", (state, now, *ids))
    jtis = [r[0] for r in connection.execute(
        f"SELECT jti FROM issued_tokens WHERE task_id IN ({marks}) AND revoked_at IS NULL AND expires_at > ?",
        (*ids, now))]
    # Each token carries its own revocation too, so it stays revoked after its task's row is purged.
    connection.execute(f"UPDATE issued_tokens SET revoked_at = ? WHERE task_id IN ({marks}) AND revoked_at IS NULL",
                       (now, *ids))
    return _revocation(connection, now, reason, ids, jtis)


def _revocation(connection: sqlite3.Connection, now: int, reason: str, task_ids: list[str], jtis: list[str]
                ) -> Revocation:
    cursor = connection.execute(
        "INSERT INTO revocations (at, reason, task_ids, jtis) VALUES (?, ?, ?, ?)",
        (now, reason, json.dumps(task_ids), json.dumps(jtis)),
    )
    return Revocation(int(cursor.lastrowid or 0), now, reason, tuple(task_ids), tuple(jtis))
