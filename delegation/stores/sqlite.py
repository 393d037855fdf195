"""The embedded store: every store Protocol (`delegation/store.py`) on one SQLite file in WAL mode.

Checks a write depends on (the task still open, the credentials not cut off) run inside its transaction,
so a revocation is either seen by the write or sees what the write committed (`sqlite_writes.py` for how
transactions are batched).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

from token_exchange.actors import ActorRef
from token_exchange.rfc9068 import new_id
from token_exchange.scope import Scope
from token_exchange.txn_tokens import TaskContext

from ..audit import AuditEvent
from ..records import BLOCKED, Block, IssuedTokenRecord, Party, Presented, TaskEnded, barred, cutoffs_of
from ..store import AuditQuery, AuditRecord, FeedPage, TaskDetail, TaskQuery, TokenState, TokenView
from ..tasks import ADMIN, EXPIRED, OPEN, POLICY, REVOKED, SYSTEM, EndedTask, Revocation, Task
from .feed_events import Ending, told_per_audience
from .sqlite_streams import FEED_POLL_S, SqliteEventStreams
from .sqlite_writes import SqliteDatabase

FEED_PAGE = 500
SWEEP_BATCH = 500  # rows a sweep transaction touches at most (each a few ms of write lock)

_AUDIT_COLUMNS = tuple(AuditEvent.__dataclass_fields__)
_INSERT_AUDIT = (
    f"INSERT INTO audit_events ({', '.join(_AUDIT_COLUMNS)}) VALUES ({', '.join('?' * len(_AUDIT_COLUMNS))})"
)
_TOKEN_COLUMNS = tuple(IssuedTokenRecord.__dataclass_fields__)
_INSERT_TOKEN = (
    f"INSERT INTO issued_tokens ({', '.join(_TOKEN_COLUMNS)}) VALUES ({', '.join('?' * len(_TOKEN_COLUMNS))})"
)
_TASK_COLUMNS = ("id", "parent_id", "root_id", "chain", "agent", "agent_domain", "user_issuer", "user_subject",
                 "scope", "audiences", "purpose", "context", "created_at", "deadline", "implicit", "state", "ended_at")
_INSERT_TASK = f"INSERT INTO tasks ({', '.join(_TASK_COLUMNS)}) VALUES ({', '.join('?' * len(_TASK_COLUMNS))})"
_CUTOFFS = (  # the cutoffs that may bear on an agent (by id, by domain) and a user, active blocks as cutoffs
    # of BLOCKED + their expiry (records.py); `cutoffs_of` (records.py) picks
    "WITH party (kind, subject) AS (VALUES ('agent', ?), ('domain', ?), ('user', ?))"
    " SELECT kind, issuer, issued_before FROM credential_cutoffs WHERE (kind, subject) IN party"
    f" UNION ALL SELECT target, issuer, {BLOCKED} + expires_at FROM blocks"
    " WHERE (target, party) IN party AND lifted_at IS NULL AND expires_at > ?"
)
_BLOCK_COLUMNS = ("id", "kind", "target", "party", "issuer", "reason", "created_at", "expires_at", "created_by",
                  "lifted_at", "lifted_by", "lift_reason")
_FEED = (  # the page's events (those with something for these audiences), then their rows for them
    "WITH page AS (SELECT DISTINCT seq FROM revocation_audiences WHERE audience IN ({marks})"
    " AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?)"
    " SELECT r.seq, r.at, r.reason, r.initiator, r.party, r.tasks, a.task_ids, a.jtis"
    " FROM page JOIN revocations r ON r.seq = page.seq"
    " JOIN revocation_audiences a ON a.seq = page.seq AND a.audience IN ({marks}) ORDER BY r.seq, a.audience"
)
_OPEN_TASKS_OF = {  # the party's id, then its domain (None: any), for the columns that hold them
    "agent": ("agent", "agent_domain"),
    "domain": ("agent_domain", None),
    "user": ("user_subject", "user_issuer"),
}


def sqlite_path(url: str) -> Path:
    """`sqlite:///relative/path.db` or `sqlite:////absolute/path.db` (SQLAlchemy's convention)."""
    if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
        raise ValueError("must look like sqlite:///path/to/deputy.db")
    return Path(url.removeprefix("sqlite:///"))


class SqliteStore(SqliteEventStreams):
    """The embedded store. Open with `await SqliteStore.open(path)`; close with `await store.close()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = SqliteDatabase(path)
        self._changed = asyncio.Event()
        self._sweep_lock: IO[str] | None = None

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        store = cls(path)
        await store._db.open()
        return store

    async def close(self) -> None:
        await self._db.close()
        if self._sweep_lock is not None:
            self._sweep_lock.close()

    # The token endpoint's writes
    async def record_grant(self, token: IssuedTokenRecord, event: AuditEvent, *, presented: Presented,
                           task: Task | None = None) -> None:
        """A minted token, its task when the exchange created one, and the audit event: all or nothing.

        A token under an existing task is only recorded while that task is still open (TaskEnded)."""

        def work(connection: sqlite3.Connection) -> None:
            _require_credentials(connection, presented, token.issued_at)
            if task is not None:
                connection.execute(_INSERT_TASK, _task_row(task))
            elif token.task_id is not None:
                _require_open(connection, token.task_id, token.issued_at)
            connection.execute(_INSERT_TOKEN, _token_row(token))
            connection.execute(_INSERT_AUDIT, _audit_row(event))

        await self._db.write(work, small=True)

    async def record_task(self, task: Task, event: AuditEvent, *, presented: Presented) -> None:
        """A task and its audit event; a delegated task only while its parent is still open (TaskEnded)."""

        def work(connection: sqlite3.Connection) -> None:
            _require_credentials(connection, presented, task.created_at)
            if task.parent_id is not None:
                _require_open(connection, task.parent_id, task.created_at)
            connection.execute(_INSERT_TASK, _task_row(task))
            connection.execute(_INSERT_AUDIT, _audit_row(event))

        await self._db.write(work, small=True)

    async def append_audit(self, event: AuditEvent) -> None:
        await self._db.write(lambda connection: connection.execute(_INSERT_AUDIT, _audit_row(event)), small=True)

    async def cutoffs(self, actor: ActorRef | None, *, user: tuple[str, str] | None, now: int
                      ) -> tuple[int | None, int | None]:
        return cutoffs_of(self._db.lookup(_CUTOFFS, _cutoff_params(actor, user, now)), actor, user)

    cached_cutoffs = cutoffs  # a local read costs no round trip: no copy to keep

    # Tasks and tokens
    async def task(self, task_id: str) -> Task | None:
        rows = self._db.lookup("SELECT * FROM tasks WHERE id = ?", (task_id,))
        return _task(rows[0]) if rows else None

    async def token(self, jti: str) -> TokenState | None:
        rows = self._db.lookup("SELECT * FROM issued_tokens WHERE jti = ?", (jti,))
        if not rows:
            return None
        row = rows[0]
        task = await self.task(row["task_id"]) if row["task_id"] else None
        return TokenState(_token_record(row), row["revoked_at"] is not None, task)

    async def end_tasks(self, roots: Sequence[str], *, state: str, reason: str, now: int,
                        event: AuditEvent | None = None, initiator: str = SYSTEM) -> Revocation | None:
        """End open tasks, all their descendants and every token minted under them, atomically."""
        ending = Ending(state, reason, now, initiator)
        return self._announce(await self._db.write(lambda c: _end_tasks(c, list(roots), ending, event)))

    async def end_matching(self, party: Party, *, reason: str, now: int,
                           event: AuditEvent | None = None) -> Revocation | None:
        """Revoke every open task of the party (with descendants and tokens), and refuse from now on the
        credentials (workload tokens, user tokens) of that party issued until now."""

        def work(connection: sqlite3.Connection) -> Revocation | None:
            connection.execute(  # credentials issued until now stop working too, not only the open tasks
                "INSERT INTO credential_cutoffs VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET issued_before ="
                " max(issued_before, excluded.issued_before)", (party.kind, party.id, party.domain or "", now))
            rows = connection.execute(*_open_tasks_of(party))
            return _end_tasks(connection, [r[0] for r in rows], Ending(REVOKED, reason, now, ADMIN, party), event)

        return self._announce(await self._db.write(work))

    async def revoke_token(self, jti: str, *, reason: str, now: int, event: AuditEvent | None = None,
                           initiator: str = SYSTEM) -> Revocation | None:
        def work(connection: sqlite3.Connection) -> Revocation | None:
            changed = connection.execute(
                "UPDATE issued_tokens SET revoked_at = ? WHERE jti = ? AND revoked_at IS NULL", (now, jti)
            ).rowcount
            if event is not None:
                connection.execute(_INSERT_AUDIT, _audit_row(event))
            if not changed:
                return None
            audience = connection.execute("SELECT audience FROM issued_tokens WHERE jti = ?", (jti,)).fetchone()
            return _revocation(connection, Ending(REVOKED, reason, now, initiator), [], [(jti, audience[0])])

        return self._announce(await self._db.write(work))

    # The revocation feed
    def _announce(self, revocation: Revocation | None) -> Revocation | None:
        """Wake this process's feed readers at once; other workers' readers find it at their next poll."""
        if revocation is not None:
            self._wake()
        return revocation

    async def revocations(self, since: int, limit: int, *, audiences: frozenset[str]) -> FeedPage:
        """The events up to the feed's head at the time of asking (every event up to it is committed:
        writers take sequence numbers one after another), narrowed to `audiences`."""
        head = max(since, self._db.lookup("SELECT coalesce(max(seq), 0) FROM revocations", ())[0][0])
        if head == since or not audiences:
            return FeedPage((), head)
        marks = ", ".join("?" * len(audiences))
        rows = await self._db.read(_FEED.format(marks=marks), (*audiences, since, head, limit, *audiences))
        events = _narrowed_events(rows)
        return FeedPage(events, events[-1].seq if len(events) == limit else head)

    async def follow(self, cursor: int, *, audiences: frozenset[str]) -> AsyncIterator[Revocation]:
        while True:
            page = await self.revocations(cursor, FEED_PAGE, audiences=audiences)
            for event in page.events:
                yield event
            cursor = page.next
            if not page.events:
                await self.wait_for_events(FEED_POLL_S)

    # Single-use values (proof jtis)
    async def first_use(self, namespace: str, value: str, *, expires_at: int) -> bool:
        """One INSERT on the `seen_once` primary key: whichever worker commits it first wins, any later
        one finds the row (WAL writers are serialized). A remembered value stays refused until purged."""

        def work(connection: sqlite3.Connection) -> bool:
            return bool(connection.execute("INSERT OR IGNORE INTO seen_once VALUES (?, ?, ?)",
                                           (namespace, value, expires_at)).rowcount == 1)

        return await self._db.write(work, small=True)

    # Maintenance
    async def expire_and_purge(self, *, now: int, retention: int, batch: int = SWEEP_BATCH) -> tuple[int, int]:
        """Mark tasks past their deadline expired (a feed event); delete what ended over `retention` ago,
        and single-use values past their `expires_at` (no retention: an expired proof is refused anyway).

        In transactions of at most `batch` rows each, so the write lock is never held for long and the
        token endpoint's writes go in between. Returns (tasks expired, root tasks purged)."""
        expired = await self._until_done(lambda c: _expire_batch(c, now, batch), batch)
        counts = [await self._until_done(_purge(sql, now - retention, batch), batch) for sql in _PURGES]
        await self._until_done(_purge(_PURGE_SEEN, now, batch), batch)
        return expired, counts[0]

    async def count_open_tasks(self) -> int:
        """Counted on the `tasks_open` partial index (a scan of the open tasks only), on the store's thread."""
        rows = await self._db.read("SELECT count(*) FROM tasks WHERE state = 'open'")
        return int(rows[0][0])

    async def _until_done(self, work: Callable[[sqlite3.Connection], int], batch: int) -> int:
        """Run `work` (one bounded batch, one transaction) until a batch comes back short; the total."""
        total = 0
        while (done := await self._db.write(work)) >= batch:
            total += done
        return total + done

    async def audit_before(self, before: int, limit: int) -> list[AuditRecord]:
        rows = await self._db.read("SELECT * FROM audit_events WHERE at < ? ORDER BY id LIMIT ?", (before, limit))
        return [AuditRecord(r["id"], _audit_event(r)) for r in rows]

    async def drop_audit(self, ids: Sequence[int]) -> int:
        marks = ", ".join("?" * len(ids))
        return int(await self._db.write(
            lambda c: c.execute(f"DELETE FROM audit_events WHERE id IN ({marks})", tuple(ids)).rowcount))

    def lead_sweeps(self) -> bool:
        """Whether this process is the one that sweeps: the first to take the sweep lock beside the database
        holds it until it exits (the lock then passes to another worker's next try)."""
        if self._sweep_lock is None:
            lock = open(self.path.with_name(self.path.name + ".sweeper"), "a")  # noqa: SIM115 (held open)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                return False
            self._sweep_lock = lock
        return True

    # Admin views
    async def tasks(self, query: TaskQuery) -> list[Task]:
        clauses, params = _filters(agent=query.agent, user_subject=query.user, state=query.state)
        rows = await self._db.read(
            f"SELECT * FROM tasks {clauses} ORDER BY created_at DESC, id LIMIT ?", (*params, query.limit)
        )
        return [_task(r) for r in rows]

    async def task_detail(self, task_id: str) -> TaskDetail | None:
        task = await self.task(task_id)
        if task is None:
            return None
        children = await self._db.read("SELECT id FROM tasks WHERE parent_id = ? ORDER BY created_at", (task_id,))
        tokens = await self._db.read("SELECT * FROM issued_tokens WHERE task_id = ? ORDER BY issued_at", (task_id,))
        views = tuple(TokenView(_token_record(r), r["revoked_at"]) for r in tokens)
        return TaskDetail(task, tuple(r["id"] for r in children), views)

    async def task_ids_with_prefix(self, prefix: str, *, limit: int = 2) -> list[str]:
        rows = await self._db.read("SELECT id FROM tasks WHERE id >= ? AND substr(id, 1, ?) = ? ORDER BY id LIMIT ?",
                                   (prefix, len(prefix), prefix, limit))
        return [r[0] for r in rows]

    async def seen(self, party: Party) -> bool:
        sql, params = _open_tasks_of(party)
        rows = await self._db.read(sql.replace("state = 'open' AND ", "") + " LIMIT 1", params)
        return bool(rows)

    # Blocks
    async def add_block(self, block: Block, event: AuditEvent) -> None:
        def work(connection: sqlite3.Connection) -> None:
            connection.execute(f"INSERT INTO blocks VALUES ({', '.join('?' * len(_BLOCK_COLUMNS))})",
                               _block_row(block))
            connection.execute(_INSERT_AUDIT, _audit_row(event))

        await self._db.write(work, small=True)

    async def blocks(self, *, now: int, include_inactive: bool = False) -> list[Block]:
        where = "" if include_inactive else "WHERE lifted_at IS NULL AND expires_at > ?"
        rows = await self._db.read(f"SELECT * FROM blocks {where} ORDER BY created_at DESC, id",
                                   () if include_inactive else (now,))
        return [_block(r) for r in rows]

    async def blocks_with_prefix(self, prefix: str, *, limit: int = 2) -> list[Block]:
        rows = await self._db.read("SELECT * FROM blocks WHERE substr(id, 1, ?) = ? ORDER BY id LIMIT ?",
                                   (len(prefix), prefix, limit))
        return [_block(r) for r in rows]

    async def lift_block(self, block_id: str, *, by: str, reason: str | None, now: int,
                         event: AuditEvent) -> Block | None:
        def work(connection: sqlite3.Connection) -> Block | None:
            row = connection.execute(
                "UPDATE blocks SET lifted_at = ?, lifted_by = ?, lift_reason = ? WHERE id = ? AND lifted_at IS NULL"
                " AND expires_at > ? RETURNING *", (now, by, reason, block_id, now)).fetchone()
            if row is not None:
                connection.execute(_INSERT_AUDIT, _audit_row(event))
            return _block(row) if row is not None else None

        return await self._db.write(work, small=True)

    async def audit_events(self, query: AuditQuery) -> list[AuditRecord]:
        clauses, params = _filters(task_id=query.task, agent=query.agent, user_subject=query.user)
        ranges = [(c, v) for c, v in (("at >= ?", query.since), ("at <= ?", query.until)) if v is not None]
        if ranges:
            clauses = (clauses + " AND " if clauses else "WHERE ") + " AND ".join(c for c, _ in ranges)
            params.extend(v for _, v in ranges)
        rows = await self._db.read(f"SELECT * FROM audit_events {clauses} ORDER BY id DESC LIMIT ?",
                                   (*params, query.limit))
        return [AuditRecord(r["id"], _audit_event(r)) for r in rows]


def _open_tasks_of(party: Party) -> tuple[str, tuple[str | None, ...]]:
    id_column, domain_column = _OPEN_TASKS_OF[party.kind]
    sql = f"SELECT id FROM tasks WHERE state = 'open' AND {id_column} = ?"
    if domain_column is None:
        return sql, (party.id,)
    return sql + f" AND coalesce(?, {domain_column}) = {domain_column}", (party.id, party.domain)


def _cutoff_params(actor: ActorRef | None, user: tuple[str, str] | None, now: int) -> tuple[str | int, ...]:
    """Parameters of `_CUTOFFS`; an absent party matches nothing (U+0000 is in no id)."""
    agent, domain = (actor.id, actor.domain) if actor is not None else ("\0", "\0")
    return agent, domain, user[1] if user is not None else "\0", now


def _require_credentials(connection: sqlite3.Connection, presented: Presented, now: int) -> None:
    """Inside the writing transaction: a revocation or block of the agent or user that committed first bars it."""
    rows = connection.execute(_CUTOFFS, _cutoff_params(presented.actor, presented.user, now)).fetchall()
    if refusal := barred(presented, cutoffs_of(rows, presented.actor, presented.user)):
        raise refusal


def _require_open(connection: sqlite3.Connection, task_id: str, now: int) -> None:
    """Inside the writing transaction: the check and the write cannot be split by an ending task."""
    row = connection.execute("SELECT state, deadline FROM tasks WHERE id = ?", (task_id,)).fetchone()
    if row is None or row["state"] != OPEN or row["deadline"] <= now:
        raise TaskEnded(f"task {task_id[:12]} has ended")


def _expire_batch(connection: sqlite3.Connection, now: int, batch: int) -> int:
    """Up to `batch` open tasks past their deadline: expired (a feed event, an audit event each)."""
    expired = connection.execute(
        "SELECT id, agent, agent_domain, user_issuer, user_subject FROM tasks WHERE state = 'open' AND deadline <= ?"
        " LIMIT ?",
        (now, batch)).fetchall()
    for row in expired:
        connection.execute(_INSERT_AUDIT, _audit_row(AuditEvent(
            decision_id=new_id(), at=now, action="expire", outcome="granted", agent=row["agent"],
            agent_domain=row["agent_domain"], user_issuer=row["user_issuer"], user_subject=row["user_subject"],
            task_id=row["id"], reasons=("task deadline passed",))))
    if expired:
        _end_tasks(connection, [r["id"] for r in expired], Ending(EXPIRED, "deadline passed", now, POLICY), None)
    return len(expired)


# Each purges at most `batch` rows (with a task, its descendants): ended before the cutoff, or, for tokens,
# expired before it and no longer under a kept task (a token's own revocation outlives its task's row).
_PURGES = (
    "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE state != 'open' AND ended_at < ?"
    " AND parent_id IS NULL LIMIT ?)",
    "DELETE FROM issued_tokens WHERE jti IN (SELECT jti FROM issued_tokens WHERE expires_at < ? AND"
    " (task_id IS NULL OR NOT EXISTS (SELECT 1 FROM tasks WHERE tasks.id = issued_tokens.task_id)) LIMIT ?)",
    "DELETE FROM revocations WHERE seq IN (SELECT seq FROM revocations WHERE at < ? LIMIT ?)",
)


_PURGE_SEEN = ("DELETE FROM seen_once WHERE (namespace, value) IN"  # WITHOUT ROWID: by its primary key
               " (SELECT namespace, value FROM seen_once WHERE expires_at < ? LIMIT ?)")


def _purge(sql: str, before: int, batch: int) -> Callable[[sqlite3.Connection], int]:
    return lambda connection: int(connection.execute(sql, (before, batch)).rowcount)


def _block_row(block: Block) -> tuple[Any, ...]:
    return (block.id, block.kind, block.target.kind, block.party, block.issuer or "", block.reason, block.created_at,
            block.expires_at, block.created_by, block.lifted_at, block.lifted_by, block.lift_reason)


def _block(row: sqlite3.Row) -> Block:
    return Block(row["id"], row["kind"], row["party"], row["issuer"] or None, row["reason"], row["created_at"],
                 row["expires_at"], row["created_by"], row["lifted_at"], row["lifted_by"], row["lift_reason"])


def _audit_row(event: AuditEvent) -> tuple[Any, ...]:
    return tuple(json.dumps(list(event.reasons)) if c == "reasons" else getattr(event, c) for c in _AUDIT_COLUMNS)


def _audit_event(row: sqlite3.Row) -> AuditEvent:
    fields: dict[str, Any] = {c: row[c] for c in _AUDIT_COLUMNS}
    return AuditEvent(**{**fields, "reasons": tuple(json.loads(row["reasons"]))})


def _token_record(row: sqlite3.Row) -> IssuedTokenRecord:
    return IssuedTokenRecord(*(row[c] for c in _TOKEN_COLUMNS))


def _token_row(token: IssuedTokenRecord) -> tuple[Any, ...]:
    return tuple(getattr(token, c) for c in _TOKEN_COLUMNS)


def _task_row(task: Task) -> tuple[Any, ...]:
    chain = [{"id": a.id, "kind": a.kind, "domain": a.domain} for a in task.chain]
    context = task.context
    context_json = json.dumps({"details": dict(context.details), "environment": dict(context.environment)}) \
        if context.details or context.environment else _NO_CONTEXT
    return (task.id, task.parent_id, task.root_id, json.dumps(chain), task.agent.id, task.agent.domain,
            task.user_issuer, task.user_subject, str(task.scope), json.dumps(list(task.audiences)), task.purpose,
            context_json, task.created_at, task.deadline, int(task.implicit), task.state, task.ended_at)


_NO_CONTEXT = json.dumps({"details": {}, "environment": {}})


def _task(row: sqlite3.Row) -> Task:
    context = json.loads(row["context"])
    return Task(
        id=row["id"], parent_id=row["parent_id"], root_id=row["root_id"],
        chain=tuple(ActorRef(a["id"], a["kind"], a["domain"]) for a in json.loads(row["chain"])),
        user_issuer=row["user_issuer"], user_subject=row["user_subject"], scope=Scope.from_claim(row["scope"]),
        audiences=tuple(json.loads(row["audiences"])), created_at=row["created_at"], deadline=row["deadline"],
        context=TaskContext(row["purpose"], MappingProxyType(context.get("details", {})),
                            MappingProxyType(context.get("environment", {}))),
        implicit=bool(row["implicit"]), state=row["state"], ended_at=row["ended_at"],
    )


def _filters(**equal: str | None) -> tuple[str, list[Any]]:
    names = [name for name, value in equal.items() if value is not None]
    params: list[Any] = [equal[name] for name in names]
    return ("WHERE " + " AND ".join(f"{n} = ?" for n in names) if names else ""), params


def _end_tasks(connection: sqlite3.Connection, roots: list[str], ending: Ending,
               event: AuditEvent | None) -> Revocation | None:
    if event is not None:
        connection.execute(_INSERT_AUDIT, _audit_row(event))
    if not roots:
        return None
    marks = ", ".join("?" * len(roots))
    tasks: dict[str, tuple[list[str], EndedTask]] = {}
    for r in connection.execute(
        f"""WITH RECURSIVE subtree(id, cause) AS (
                SELECT id, id FROM tasks WHERE id IN ({marks})
                UNION SELECT t.id, s.cause FROM tasks t JOIN subtree s ON t.parent_id = s.id)
            SELECT tasks.id, tasks.audiences, tasks.user_issuer, tasks.user_subject, subtree.cause
            FROM tasks JOIN subtree USING (id) WHERE tasks.state = ?""",
        (*roots, OPEN)):
        tasks.setdefault(r[0], (json.loads(r[1]), EndedTask(r[0], r[2], r[3], r[4])))
    if not tasks:
        return None
    ids = list(tasks)
    marks = ", ".join("?" * len(ids))
    connection.execute(f"UPDATE tasks SET state = ?, ended_at = ? WHERE id IN ({marks})",
                       (ending.state, ending.now, *ids))
    tokens = [(r[0], r[1]) for r in connection.execute(
        f"SELECT jti, audience FROM issued_tokens WHERE task_id IN ({marks}) AND revoked_at IS NULL"
        " AND expires_at > ?", (*ids, ending.now))]
    # Each token carries its own revocation too, so it stays revoked after its task's row is purged.
    connection.execute(f"UPDATE issued_tokens SET revoked_at = ? WHERE task_id IN ({marks}) AND revoked_at IS NULL",
                       (ending.now, *ids))
    return _revocation(connection, ending, list(tasks.values()), tokens)


def _revocation(connection: sqlite3.Connection, ending: Ending, tasks: Sequence[tuple[Sequence[str], EndedTask]],
                tokens: Sequence[tuple[str, str]]) -> Revocation:
    """A feed event, and for each audience concerned what it tells that audience's resource servers: the
    tasks that include the audience and the tokens issued for it."""
    task_ids, jtis = [task.id for _, task in tasks], [jti for jti, _ in tokens]
    party = json.dumps({"kind": ending.party.kind, "id": ending.party.id, "domain": ending.party.domain}) \
        if ending.party else None
    detail = json.dumps({t.id: [t.user_issuer, t.user_subject, t.cause] for _, t in tasks})
    cursor = connection.execute(
        "INSERT INTO revocations (at, reason, task_ids, jtis, initiator, party, tasks) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (ending.now, ending.reason, json.dumps(task_ids), json.dumps(jtis), ending.initiator, party, detail),
    )
    seq = int(cursor.lastrowid or 0)
    told = told_per_audience(tasks, tokens)
    connection.executemany("INSERT INTO revocation_audiences VALUES (?, ?, ?, ?)",
                           [(aud, seq, json.dumps(t), json.dumps(j)) for aud, (t, j) in told.items()])
    return Revocation(seq, ending.now, ending.reason, tuple(task_ids), tuple(jtis), tuple(t for _, t in tasks),
                      ending.party, ending.initiator)


def _narrowed_events(rows: Sequence[sqlite3.Row]) -> tuple[Revocation, ...]:
    """One event per `seq` from its rows for the reader's audiences: their task ids and jtis, each once."""
    events: dict[int, tuple[sqlite3.Row, dict[str, None], dict[str, None]]] = {}
    for row in rows:
        _, task_ids, jtis = events.setdefault(row["seq"], (row, {}, {}))
        task_ids.update(dict.fromkeys(json.loads(row["task_ids"])))
        jtis.update(dict.fromkeys(json.loads(row["jtis"])))
    return tuple(_event(seq, row, tuple(task_ids), tuple(jtis)) for seq, (row, task_ids, jtis) in events.items())


def _event(seq: int, row: sqlite3.Row, task_ids: tuple[str, ...], jtis: tuple[str, ...]) -> Revocation:
    detail = json.loads(row["tasks"])
    tasks = tuple(EndedTask(task_id, *detail[task_id]) for task_id in task_ids if task_id in detail)
    party = Party(**json.loads(row["party"])) if row["party"] else None
    return Revocation(seq, row["at"], row["reason"], task_ids, jtis, tasks, party, row["initiator"])
