"""The shared store: every store Protocol (`delegation/store.py`) on one PostgreSQL database, for several
gateway replicas at once. The semantics are SQLite's (`stores/sqlite.py`), the contract suite's cases.

Driver: psycopg 3 with psycopg_pool (`postgres_db.py`). libpq itself reads the URL, so every libpq option
works (Unix sockets with peer authentication, TLS client certificates, service and password files). The hot
path is server-side prepared statements, one round trip each: the task lookup, and the checked writes (a
grant, a task), those of concurrent requests sent as one (`postgres_batch.py`); the check of the cutoffs
before the policy reads a copy held in memory (`postgres_cutoffs.py`). Measured against asyncpg on this
machine (bench/postgres_driver.py, bench/README.md): the client's CPU per write alike (one-shot write with 8
callers: 183 µs psycopg, 180 µs asyncpg; an earlier, noisier run had asyncpg 35-70 µs cheaper); psycopg is
kept for libpq's connection handling, which passwordless deployments rely on.

Concurrency (`postgres_writes.py`): READ COMMITTED and transaction-level advisory locks on task trees and
on parties, taken in a statement before the checks, so a check-and-write and a revocation are ordered one
way or the other (a batch of writes only tries them, and a row that would wait goes alone:
`postgres_batch.py`); feed events are inserted under one lock held to commit, so feed cursors never pass an
event that commits later. LISTEN/NOTIFY wakes every replica's feed readers (`postgres_listen.py`), and
`revocation_sync_problem` says when this process may not hear of a revocation at once.

Serving never migrates: a schema older or newer than the code is refused at open (`deputy db upgrade`).
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any

from psycopg.rows import DictRow

from token_exchange.actors import ActorRef

from ..audit import AuditEvent
from ..records import Block, IssuedTokenRecord, Party, Presented
from ..store import AuditQuery, AuditRecord, FeedPage, TaskDetail, TaskQuery, TokenState, TokenView
from ..tasks import REVOKED, SYSTEM, EndedTask, Revocation, Task
from . import postgres_writes as writes
from .feed_events import Ending
from .postgres_batch import WriteBatches
from .postgres_cutoffs import CutoffCopy, notice
from .postgres_db import CHECKOUT_TIMEOUT_S, Connection, PostgresDatabase
from .postgres_listen import Listener, Wakeup
from .postgres_rows import audit_event, audit_params, task, token_record, written_records
from .postgres_schema import check_version, version_of
from .postgres_streams import PostgresEventStreams

FEED_PAGE = 500
SWEEP_BATCH = 500  # rows a sweep transaction touches at most

_FEED = (  # the page's events (those with something for these audiences), then their rows for them
    "WITH page AS (SELECT DISTINCT seq FROM revocation_audiences WHERE audience = ANY(%(audiences)s::text[])"
    " AND seq > %(since)s AND seq <= %(head)s ORDER BY seq LIMIT %(limit)s)"
    " SELECT r.seq, r.at, r.reason, r.initiator, r.party_kind, r.party_id, r.party_domain, r.tasks,"
    " a.task_ids, a.jtis FROM page JOIN revocations r ON r.seq = page.seq"
    " JOIN revocation_audiences a ON a.seq = page.seq AND a.audience = ANY(%(audiences)s::text[])"
    ' ORDER BY r.seq, a.audience COLLATE "C"'
)
_TOKEN = ("SELECT issued_tokens.*, to_jsonb(tasks) AS task FROM issued_tokens"
          " LEFT JOIN tasks ON tasks.id = issued_tokens.task_id WHERE jti = %s")


class PostgresStore(PostgresEventStreams):
    """The shared store. Open with `await PostgresStore.open(url)`; close with `await store.close()`."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db
        self._wakeup = Wakeup()
        self._cutoff_copy = CutoffCopy(db)
        self._writes = WriteBatches(db)
        self._listener = Listener(db.conninfo, self._wakeup, db.check, self._cutoff_copy.notified)
        self._seen = weakref.WeakKeyDictionary()

    @classmethod
    async def open(cls, url: str) -> PostgresStore:
        """Connect, refuse a schema other than this code's, and start listening."""
        db = PostgresDatabase(url)
        await db.open()
        try:
            async with db.connection() as connection:
                check_version(await version_of(connection))
        except BaseException:
            await db.close()
            raise
        store = cls(db)
        await store._listener.start(wait=CHECKOUT_TIMEOUT_S)
        return store

    async def close(self) -> None:
        await self._writes.close()
        await self._listener.close()
        await self._db.close()

    # The token endpoint's writes: one statement per batch of them, locks and checks included
    # (postgres_batch.py, postgres_writes.py)
    async def record_grant(self, token: IssuedTokenRecord, event: AuditEvent, *, presented: Presented,
                           task: Task | None = None) -> None:
        """A minted token, its task when the exchange created one, and the audit event: all or nothing.

        A token under an existing task is only recorded while that task is still open (TaskEnded)."""
        under = token.task_id if task is None else None
        row = writes.checked_row(presented, under=under, now=token.issued_at,
                                 **written_records(event, token=token, task=task))
        writes.raise_unless_written(await self._writes.write(row), presented, under)

    async def record_task(self, task: Task, event: AuditEvent, *, presented: Presented) -> None:
        """A task and its audit event; a delegated task only while its parent is still open (TaskEnded)."""
        row = writes.checked_row(presented, under=task.parent_id, now=task.created_at,
                                 **written_records(event, task=task))
        writes.raise_unless_written(await self._writes.write(row), presented, task.parent_id)

    async def append_audit(self, event: AuditEvent) -> None:
        async with self._db.connection() as connection:
            await connection.execute(writes.INSERT_AUDIT, audit_params(event), prepare=True)

    async def cutoffs(self, actor: ActorRef | None, *, user: tuple[str, str] | None, now: int
                      ) -> tuple[int | None, int | None]:
        """A plain read of the cutoffs, without the locks: the write's own transaction checks again under them."""
        return await self._cutoff_copy.read(actor, user=user, now=now)

    async def cached_cutoffs(self, actor: ActorRef | None, *, user: tuple[str, str] | None, now: int
                             ) -> tuple[int | None, int | None]:
        """From the copy in memory (postgres_cutoffs.py); from the tables while the listener is down."""
        if self._listener.problem is not None:
            return await self._cutoff_copy.read(actor, user=user, now=now)
        return await self._cutoff_copy.cutoffs(actor, user=user, now=now)

    # Tasks and tokens
    async def task(self, task_id: str) -> Task | None:
        row = await self._db.fetchone("SELECT * FROM tasks WHERE id = %s", (task_id,), prepare=True)
        return task(row) if row else None

    async def token(self, jti: str) -> TokenState | None:
        row = await self._db.fetchone(_TOKEN, (jti,), prepare=True)
        if row is None:
            return None
        return TokenState(token_record(row), row["revoked_at"] is not None, task(row["task"]) if row["task"] else None)

    async def end_tasks(self, roots: Sequence[str], *, state: str, reason: str, now: int,
                        event: AuditEvent | None = None, initiator: str = SYSTEM) -> Revocation | None:
        """End open tasks, all their descendants and every token minted under them, atomically."""
        ending = Ending(state, reason, now, initiator)
        return self._announce(await self._db.transaction(lambda c: writes.end_tasks(c, list(roots), ending, event)))

    async def end_matching(self, party: Party, *, reason: str, now: int,
                           event: AuditEvent | None = None) -> Revocation | None:
        """Revoke every open task of the party (with descendants and tokens), and refuse from now on the
        credentials (workload tokens, user tokens) of that party issued until now."""
        revocation = await self._db.transaction(lambda c: writes.end_matching(c, party, reason, now, event))
        self._cutoff_copy.notified(notice(party.kind, party.id))  # this process's at once; others' by the NOTIFY
        return self._announce(revocation)

    async def revoke_token(self, jti: str, *, reason: str, now: int, event: AuditEvent | None = None,
                           initiator: str = SYSTEM) -> Revocation | None:
        ending = Ending(REVOKED, reason, now, initiator)
        return self._announce(await self._db.transaction(lambda c: writes.revoke_token(c, jti, ending, event)))

    # The revocation feed
    def _announce(self, revocation: Revocation | None) -> Revocation | None:
        """Wake this process's readers at once (other replicas' are woken by the NOTIFY)."""
        if revocation is not None:
            self._wakeup.fire()
        return revocation

    async def revocations(self, since: int, limit: int, *, audiences: frozenset[str]) -> FeedPage:
        """The events up to the feed's head at the time of asking (every event up to it is committed: see
        FEED_LOCK in postgres_writes.py), narrowed to `audiences`."""
        async with self._db.connection() as connection:
            found = await (await connection.execute("SELECT coalesce(max(seq), 0) AS head FROM revocations",
                                                    prepare=True)).fetchone()
            head = max(since, found["head"] if found else 0)
            if head == since or not audiences:
                return FeedPage((), head)
            rows = await (await connection.execute(_FEED, {"audiences": sorted(audiences), "since": since,
                                                           "head": head, "limit": limit})).fetchall()
        events = _narrowed_events(rows)
        return FeedPage(events, events[-1].seq if len(events) == limit else head)

    async def follow(self, cursor: int, *, audiences: frozenset[str]) -> AsyncIterator[Revocation]:
        while True:
            wake = self._wakeup.current()  # before looking: a commit meanwhile wakes this very event
            page = await self.revocations(cursor, FEED_PAGE, audiences=audiences)
            for event in page.events:
                yield event
            cursor = page.next
            if not page.events:
                await self._wakeup.wait(wake, self._poll_s())

    def revocation_sync_problem(self) -> str | None:
        return self._listener.problem

    # Single-use values (proof jtis)
    async def first_use(self, namespace: str, value: str, *, expires_at: int) -> bool:
        """One INSERT on the `seen_once` primary key: whichever replica commits it first wins; a concurrent
        one waits for it on the key and then finds the row. A remembered value stays refused until purged."""
        async with self._db.connection() as connection:
            cursor = await connection.execute("INSERT INTO seen_once VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                                              (namespace, value, expires_at), prepare=True)
            return cursor.rowcount == 1

    # Maintenance
    def lead_sweeps(self) -> bool:
        """Whether this instance holds the sweep lock (a session advisory lock on its listener's connection;
        an instance that does not hold it tries again every second, see postgres_listen.py)."""
        return self._listener.leading

    async def expire_and_purge(self, *, now: int, retention: int, batch: int = SWEEP_BATCH) -> tuple[int, int]:
        """Mark tasks past their deadline expired (a feed event); delete what ended over `retention` ago,
        and single-use values past their `expires_at`, in transactions of at most `batch` rows each.
        Returns (tasks expired, root tasks purged)."""
        expired, looked = 0, batch
        while looked >= batch:
            looked, done = await self._db.transaction(lambda c: writes.expire_batch(c, now, batch))
            expired += done
            if done:
                self._wakeup.fire()
        purged = [await self._purge(sql, now - retention, batch) for sql in writes.PURGES]
        await self._purge(writes.PURGE_SEEN, now, batch)
        return expired, purged[0]

    async def _purge(self, sql: str, before: int, batch: int) -> int:
        """Run one bounded DELETE (its own transaction) until it comes back short; the total."""
        total = 0
        while True:
            async with self._db.connection() as connection:
                done = (await connection.execute(sql, (before, batch))).rowcount
            total += done
            if done < batch:
                return total

    async def count_open_tasks(self) -> int:
        """Counted on the `tasks_open` partial index (a scan of the open tasks only)."""
        row = await self._db.fetchone("SELECT count(*) AS open FROM tasks WHERE state = 'open'")
        return int(row["open"]) if row else 0

    async def audit_before(self, before: int, limit: int) -> list[AuditRecord]:
        rows = await self._db.fetch("SELECT * FROM audit_events WHERE at < %s ORDER BY id LIMIT %s", (before, limit))
        return [AuditRecord(r["id"], audit_event(r)) for r in rows]

    async def drop_audit(self, ids: Sequence[int]) -> int:
        async with self._db.connection() as connection:
            return (await connection.execute("DELETE FROM audit_events WHERE id = ANY(%s::bigint[])", (list(ids),))
                    ).rowcount

    # Admin views
    async def tasks(self, query: TaskQuery) -> list[Task]:
        clauses, params = _filters(agent=query.agent, user_subject=query.user, state=query.state)
        rows = await self._db.fetch(f'SELECT * FROM tasks {clauses} ORDER BY created_at DESC, id COLLATE "C" LIMIT %s',
                                    (*params, query.limit))
        return [task(r) for r in rows]

    async def task_detail(self, task_id: str) -> TaskDetail | None:
        found = await self.task(task_id)
        if found is None:
            return None
        children = await self._db.fetch("SELECT id FROM tasks WHERE parent_id = %s ORDER BY created_at", (task_id,))
        tokens = await self._db.fetch("SELECT * FROM issued_tokens WHERE task_id = %s ORDER BY issued_at", (task_id,))
        views = tuple(TokenView(token_record(r), r["revoked_at"]) for r in tokens)
        return TaskDetail(found, tuple(r["id"] for r in children), views)

    async def task_ids_with_prefix(self, prefix: str, *, limit: int = 2) -> list[str]:
        rows = await self._db.fetch('SELECT id FROM tasks WHERE id COLLATE "C" >= %s AND left(id, %s) = %s'
                                    ' ORDER BY id COLLATE "C" LIMIT %s', (prefix, len(prefix), prefix, limit))
        return [r["id"] for r in rows]

    async def seen(self, party: Party) -> bool:
        sql = writes.OPEN_TASKS_OF[party.kind].replace("state = 'open' AND ", "") + " LIMIT 1"
        return bool(await self._db.fetch(sql, {"id": party.id, "domain": party.domain}))

    # Blocks
    async def add_block(self, block: Block, event: AuditEvent) -> None:
        await self._db.transaction(lambda c: writes.add_block(c, block, event))
        self._cutoff_copy.notified(notice(block.target.kind, block.target.id))

    async def blocks(self, *, now: int, include_inactive: bool = False) -> list[Block]:
        where = "" if include_inactive else "WHERE lifted_at IS NULL AND expires_at > %s"
        rows = await self._db.fetch(f'SELECT * FROM blocks {where} ORDER BY created_at DESC, id COLLATE "C"',
                                    () if include_inactive else (now,))
        return [writes.block(r) for r in rows]

    async def blocks_with_prefix(self, prefix: str, *, limit: int = 2) -> list[Block]:
        rows = await self._db.fetch('SELECT * FROM blocks WHERE left(id, %s) = %s ORDER BY id COLLATE "C" LIMIT %s',
                                    (len(prefix), prefix, limit))
        return [writes.block(r) for r in rows]

    async def lift_block(self, block_id: str, *, by: str, reason: str | None, now: int,
                         event: AuditEvent) -> Block | None:
        async def work(connection: Connection) -> Block | None:
            row = await (await connection.execute(
                "UPDATE blocks SET lifted_at = %s, lifted_by = %s, lift_reason = %s WHERE id = %s"
                " AND lifted_at IS NULL AND expires_at > %s RETURNING *", (now, by, reason, block_id, now))).fetchone()
            if row is None:
                return None
            await connection.execute(writes.INSERT_AUDIT, audit_params(event))
            await connection.execute(writes.NOTIFY_CUTOFFS, (notice(row["target"], row["party"]),))
            return writes.block(row)

        lifted = await self._db.transaction(work)
        if lifted is not None:
            self._cutoff_copy.notified(notice(lifted.target.kind, lifted.target.id))
        return lifted

    async def audit_events(self, query: AuditQuery) -> list[AuditRecord]:
        clauses, params = _filters(task_id=query.task, agent=query.agent, user_subject=query.user)
        ranges = [(c, v) for c, v in (("at >= %s", query.since), ("at <= %s", query.until)) if v is not None]
        if ranges:
            clauses = (clauses + " AND " if clauses else "WHERE ") + " AND ".join(c for c, _ in ranges)
            params.extend(v for _, v in ranges)
        rows = await self._db.fetch(f"SELECT * FROM audit_events {clauses} ORDER BY id DESC LIMIT %s",
                                    (*params, query.limit))
        return [AuditRecord(r["id"], audit_event(r)) for r in rows]


def _filters(**equal: str | None) -> tuple[str, list[Any]]:
    names = [name for name, value in equal.items() if value is not None]
    params: list[Any] = [equal[name] for name in names]
    return ("WHERE " + " AND ".join(f"{n} = %s" for n in names) if names else ""), params


def _narrowed_events(rows: Sequence[DictRow]) -> tuple[Revocation, ...]:
    """One event per `seq` from its rows for the reader's audiences: their task ids and jtis, each once."""
    events: dict[int, tuple[DictRow, dict[str, None], dict[str, None]]] = {}
    for row in rows:
        _, task_ids, jtis = events.setdefault(row["seq"], (row, {}, {}))
        task_ids.update(dict.fromkeys(row["task_ids"]))
        jtis.update(dict.fromkeys(row["jtis"]))
    return tuple(_event(seq, row, tuple(task_ids), tuple(jtis)) for seq, (row, task_ids, jtis) in events.items())


def _event(seq: int, row: DictRow, task_ids: tuple[str, ...], jtis: tuple[str, ...]) -> Revocation:
    """A feed event as one reader is told it: its tasks' details only for the task ids it is shown."""
    detail = row["tasks"]
    tasks = tuple(EndedTask(task_id, *detail[task_id]) for task_id in task_ids if task_id in detail)
    party = Party(row["party_kind"], row["party_id"], row["party_domain"]) if row["party_kind"] else None
    return Revocation(seq, row["at"], row["reason"], task_ids, jtis, tasks, party, row["initiator"])

