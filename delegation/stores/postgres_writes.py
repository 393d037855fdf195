"""The PostgreSQL store's transactions that check before they write, and how they stay atomic when several
replicas write at once (READ COMMITTED, transaction-level advisory locks, keys `hashtextextended(name, 0)`).

- A write under a task tree (a grant under a task, a delegation) takes the shared lock of the tree's root,
  and every write takes the shared locks of the parties it relies on (the agent, its domain, the user), in a
  statement of its own BEFORE its checks (a batch: every row's, before any row's checks): in READ COMMITTED
  each statement sees what committed before it started, so checks made after the lock see every revocation
  that held it first (and a revocation that takes the lock after the write's finds what the write committed).
- Ending tasks takes the exclusive locks of their trees' roots before reading the subtree; an admin
  revocation takes its party's exclusive lock before recording the cutoff and reading the party's tasks.
  So an exchange racing a revocation either commits first, and its task and token are in the cascade, or
  waits and then sees the ended task or the cutoff.
- Locks are taken in one order, parties before trees, each set sorted, so writers never deadlock.
- Revocation feed cursors: readers read up to the head, so a sequence number must never commit after a
  higher one. Every feed event is inserted under one exclusive lock taken last in its transaction and held
  until it commits: sequence numbers are drawn and committed in one order, and once a reader sees seq N,
  every lower seq that will ever commit already has.
- Each such transaction also NOTIFYs `deputy_events` (delivered at commit) to wake every replica's readers.

The hot path (a grant, a task) is ONE statement for a batch of concurrent requests' writes (`WRITES`,
postgres_batch.py), one round trip, prepared, in its own (implicit) transaction: `deputy_checks` (a
PL/pgSQL function, postgres_schema.py) takes the shared locks of a lone row (its parties, sorted, then its
tree), or only tries those of a batch's rows (a row whose lock is held comes back busy, unwritten, and goes
again alone), then reads each row's cutoffs and task in a statement of its own, so with a fresh snapshot; a
row's INSERTs happen only if it is not busy and its checks pass, and the statement returns what they found,
row by row, so each caller raises the error that fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from token_exchange.rfc9068 import new_id

from ..audit import AuditEvent
from ..records import Block, Party, Presented, TaskEnded, barred
from ..tasks import ADMIN, EXPIRED, POLICY, REVOKED, EndedTask, Revocation
from .feed_events import Ending, told_per_audience
from .postgres_cutoffs import notice
from .postgres_db import Connection
from .postgres_listen import CHANNEL
from .postgres_rows import AUDIT_COLUMNS, TASK_COLUMNS, TOKEN_COLUMNS, audit_params, row_insert

FEED_LOCK = "deputy:feed"

LOCK_TREES = (
    "SELECT pg_advisory_xact_lock(hashtextextended('tree:' || root_id, 0)) FROM (SELECT root_id FROM tasks"
    ' WHERE id = ANY(%s::text[]) GROUP BY root_id ORDER BY root_id COLLATE "C") AS roots'
)
LOCK_ONE = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
NOTIFY_CUTOFFS = f"SELECT pg_notify('{CHANNEL}', %s)"  # a party's cutoffs changed (postgres_cutoffs.py)
_CHECKED = (  # per row: busy (a lock it needs was held, without `wait`), and the checks of `barred` and of an open task
    "WITH ok AS (SELECT ord, r, busy, agent_cutoff AS agent, user_cutoff AS usr, state, deadline, NOT busy"
    " AND (agent_cutoff IS NULL OR (r->>'actor_iat')::BIGINT > agent_cutoff)"
    " AND (user_cutoff IS NULL OR (r->>'user_iat')::BIGINT > user_cutoff)"
    " AND (r->>'under' IS NULL OR (state = 'open' AND deadline > (r->>'now')::BIGINT)) AS fine"
    " FROM deputy_checks(%(rows)s, %(wait)s)"
    " JOIN jsonb_array_elements(%(rows)s) WITH ORDINALITY AS e(r, ord) USING (ord))"
)


def _insert(table: str, name: str, columns: tuple[str, ...]) -> str:
    """The rows' `name` member into `table`, for the rows that passed their checks and carry one."""
    return (f", {table} AS ({row_insert(table, columns, f'ok.r->{name!r}', 'ok, ')}"
            f" WHERE ok.fine AND ok.r ? {name!r})")


WRITES = (_CHECKED + _insert("tasks", "task", TASK_COLUMNS) + _insert("issued_tokens", "token", TOKEN_COLUMNS)
          + _insert("audit_events", "audit", AUDIT_COLUMNS)
          + " SELECT busy, agent, usr, state, deadline, fine FROM ok ORDER BY ord")
INSERT_AUDIT = row_insert("audit_events", AUDIT_COLUMNS, "%(audit)s")


def party_keys(presented: Presented) -> list[str]:
    """The advisory lock names of the parties whose cutoffs a write relies on."""
    keys = [f"agent:{presented.actor.id}", f"domain:{presented.actor.domain}"] if presented.actor else []
    return keys + ([f"user:{presented.user[1]}"] if presented.user else [])


def checked_row(presented: Presented, *, under: str | None, now: int, **records: dict[str, Any]) -> dict[str, Any]:
    """One row of a batch of checked writes (`WRITES`): what to check, and the `records` (`task`, `token`,
    `audit`: postgres_rows.py) to insert if the checks pass."""
    actor, user = presented.actor, presented.user
    return {"keys": party_keys(presented), "under": under, "now": now,
            "agent": actor.id if actor else None, "domain": actor.domain if actor else None,
            "actor_iat": presented.actor_issued_at, "user_issuer": user[0] if user else None,
            "user_subject": user[1] if user else None, "user_iat": presented.user_issued_at, **records}


def raise_unless_written(row: DictRow | None, presented: Presented, under: str | None) -> None:
    """After a checked write: the error for the check that failed (then nothing was written)."""
    assert row is not None
    if refusal := barred(presented, (row["agent"], row["usr"])):
        raise refusal
    if not row["fine"]:
        raise TaskEnded(f"task {(under or '')[:12]} has ended")


async def end_tasks(connection: Connection, roots: Sequence[str], ending: Ending, event: AuditEvent | None
                    ) -> Revocation | None:
    """End the open tasks among `roots`, their open descendants and their tokens, under their trees' locks."""
    if event is not None:
        await connection.execute(INSERT_AUDIT, audit_params(event))
    if not roots:
        return None
    await connection.execute(LOCK_TREES, (list(roots),))
    row = await (await connection.execute(
        _CASCADE, {"roots": list(roots), "state": ending.state, "now": ending.now})).fetchone()
    assert row is not None
    tasks, tokens = row["tasks"] or [], row["tokens"] or []
    if not tasks:
        return None
    ended = [(t["audiences"], EndedTask(t["id"], t["user_issuer"], t["user_subject"], t["cause"])) for t in tasks]
    live = [(t["jti"], t["audience"]) for t in tokens if t["expires_at"] > ending.now]
    return await insert_revocation(connection, ending, ended, live)


# Each named root is its own cause; a descendant's is its nearest named ancestor (named tasks are not
# reached through another). Each token keeps its own revocation, so it stays revoked once its task is purged.
_CASCADE = """
WITH RECURSIVE subtree(id, cause, depth) AS (
    SELECT id, id, 0 FROM tasks WHERE id = ANY(%(roots)s::text[])
    UNION ALL SELECT t.id, s.cause, s.depth + 1 FROM tasks t JOIN subtree s ON t.parent_id = s.id
        WHERE NOT t.id = ANY(%(roots)s::text[])),
ended AS (UPDATE tasks SET state = %(state)s, ended_at = %(now)s FROM subtree
          WHERE tasks.id = subtree.id AND tasks.state = 'open'
          RETURNING tasks.id, tasks.audiences, tasks.user_issuer, tasks.user_subject, subtree.cause, subtree.depth),
revoked AS (UPDATE issued_tokens SET revoked_at = %(now)s WHERE task_id IN (SELECT id FROM ended)
            AND revoked_at IS NULL RETURNING jti, audience, expires_at)
SELECT (SELECT json_agg(ended ORDER BY depth, id) FROM ended) AS tasks,
       (SELECT json_agg(revoked ORDER BY jti) FROM revoked) AS tokens
"""
_INSERT_REVOCATION = f"""
WITH event AS (INSERT INTO revocations (at, reason, task_ids, jtis, initiator, party_kind, party_id, party_domain,
                                        tasks)
               VALUES (%(at)s, %(reason)s, %(task_ids)s::text[], %(jtis)s::text[], %(initiator)s, %(party_kind)s,
                       %(party_id)s, %(party_domain)s, %(tasks)s) RETURNING seq),
told AS (INSERT INTO revocation_audiences (audience, seq, task_ids, jtis)
         SELECT t.audience, event.seq, t.task_ids, t.jtis
         FROM event, jsonb_to_recordset(%(told)s) AS t(audience text, task_ids text[], jtis text[]))
SELECT seq, pg_notify('{CHANNEL}', seq::text) FROM event
"""


async def insert_revocation(connection: Connection, ending: Ending, tasks: Sequence[tuple[Sequence[str], EndedTask]],
                            tokens: Sequence[tuple[str, str]]) -> Revocation:
    """A feed event, and for each audience concerned what it tells that audience's resource servers: the
    tasks that include the audience and the tokens issued for it. Last in its transaction, under FEED_LOCK."""
    task_ids, jtis = [task.id for _, task in tasks], [jti for jti, _ in tokens]
    told = told_per_audience(tasks, tokens)
    party = ending.party
    await connection.execute(LOCK_ONE, (FEED_LOCK,))
    row = await (await connection.execute(_INSERT_REVOCATION, {
        "at": ending.now, "reason": ending.reason, "task_ids": task_ids, "jtis": jtis, "initiator": ending.initiator,
        "party_kind": party.kind if party else None, "party_id": party.id if party else None,
        "party_domain": party.domain if party else None,
        "tasks": Jsonb({t.id: [t.user_issuer, t.user_subject, t.cause] for _, t in tasks}),
        "told": Jsonb([{"audience": a, "task_ids": t, "jtis": j} for a, (t, j) in told.items()]),
    })).fetchone()
    assert row is not None
    return Revocation(row["seq"], ending.now, ending.reason, tuple(task_ids), tuple(jtis), tuple(t for _, t in tasks),
                      party, ending.initiator)


OPEN_TASKS_OF = {  # the open tasks of a party: its id, and its domain or issuer (None: any)
    "agent": "SELECT id FROM tasks WHERE state = 'open' AND agent = %(id)s"
             " AND coalesce(%(domain)s, agent_domain) = agent_domain",
    "domain": "SELECT id FROM tasks WHERE state = 'open' AND agent_domain = %(id)s",
    "user": "SELECT id FROM tasks WHERE state = 'open' AND user_subject = %(id)s"
            " AND coalesce(%(domain)s, user_issuer) = user_issuer",
}
_CUTOFF = (
    "INSERT INTO credential_cutoffs VALUES (%s, %s, %s, %s) ON CONFLICT (kind, subject, issuer)"
    " DO UPDATE SET issued_before = greatest(credential_cutoffs.issued_before, excluded.issued_before)"
)


async def end_matching(connection: Connection, party: Party, reason: str, now: int, event: AuditEvent | None
                       ) -> Revocation | None:
    """Under the party's exclusive lock: its cutoff, then its open tasks ended (under their trees' locks)."""
    await connection.execute(LOCK_ONE, (f"{party.kind}:{party.id}",))
    await connection.execute(_CUTOFF, (party.kind, party.id, party.domain or "", now))
    await connection.execute(NOTIFY_CUTOFFS, (notice(party.kind, party.id),))
    rows = await (await connection.execute(OPEN_TASKS_OF[party.kind], {"id": party.id, "domain": party.domain})
                  ).fetchall()
    return await end_tasks(connection, [r["id"] for r in rows], Ending(REVOKED, reason, now, ADMIN, party), event)


BLOCK_COLUMNS = ("id", "kind", "target", "party", "issuer", "reason", "created_at", "expires_at", "created_by",
                 "lifted_at", "lifted_by", "lift_reason")
_INSERT_BLOCK = f"INSERT INTO blocks VALUES ({', '.join(f'%({c})s' for c in BLOCK_COLUMNS)})"


async def add_block(connection: Connection, block: Block, event: AuditEvent) -> None:
    """Under the party's exclusive lock (as a revocation): a write that relies on the party either committed
    before, or checks after and finds the block."""
    target = block.target
    await connection.execute(LOCK_ONE, (f"{target.kind}:{target.id}",))
    await connection.execute(_INSERT_BLOCK, block_params(block))
    await connection.execute(NOTIFY_CUTOFFS, (notice(target.kind, target.id),))
    await connection.execute(INSERT_AUDIT, audit_params(event))


def block_params(block: Block) -> dict[str, Any]:
    return {**{c: getattr(block, c) for c in BLOCK_COLUMNS if c not in ("target", "issuer")},
            "target": block.target.kind, "issuer": block.issuer or ""}


def block(row: DictRow) -> Block:
    return Block(row["id"], row["kind"], row["party"], row["issuer"] or None, row["reason"], row["created_at"],
                 row["expires_at"], row["created_by"], row["lifted_at"], row["lifted_by"], row["lift_reason"])


async def revoke_token(connection: Connection, jti: str, ending: Ending, event: AuditEvent | None
                       ) -> Revocation | None:
    row = await (await connection.execute(
        "UPDATE issued_tokens SET revoked_at = %s WHERE jti = %s AND revoked_at IS NULL RETURNING audience",
        (ending.now, jti))).fetchone()
    if event is not None:
        await connection.execute(INSERT_AUDIT, audit_params(event))
    return None if row is None else await insert_revocation(connection, ending, [], [(jti, row["audience"])])


_EXPIRED = ("SELECT id, agent, agent_domain, user_issuer, user_subject FROM tasks"
            " WHERE state = 'open' AND deadline <= %s AND id = ANY(%s::text[])")


async def expire_batch(connection: Connection, now: int, batch: int) -> tuple[int, int]:
    """Up to `batch` open tasks past their deadline, expired (a feed event, an audit event each), looked at
    again once their trees are locked. (How many were looked at, how many expired.)"""
    candidates = [r["id"] for r in await (await connection.execute(
        "SELECT id FROM tasks WHERE state = 'open' AND deadline <= %s LIMIT %s", (now, batch))).fetchall()]
    if not candidates:
        return 0, 0
    await connection.execute(LOCK_TREES, (candidates,))
    expired = await (await connection.execute(_EXPIRED, (now, candidates))).fetchall()
    async with connection.cursor() as cursor:
        await cursor.executemany(INSERT_AUDIT, [audit_params(AuditEvent(
            decision_id=new_id(), at=now, action="expire", outcome="granted", agent=row["agent"],
            agent_domain=row["agent_domain"], user_issuer=row["user_issuer"], user_subject=row["user_subject"],
            task_id=row["id"], reasons=("task deadline passed",))) for row in expired])
    await end_tasks(connection, [r["id"] for r in expired], Ending(EXPIRED, "deadline passed", now, POLICY), None)
    return len(candidates), len(expired)


# Each purges at most `batch` rows (with a task, its descendants): ended before the cutoff, or, for tokens,
# expired before it and no longer under a kept task (a token's own revocation outlives its task's row).
PURGES = (
    "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE state <> 'open' AND ended_at < %s"
    " AND parent_id IS NULL LIMIT %s)",
    "DELETE FROM issued_tokens WHERE jti IN (SELECT jti FROM issued_tokens WHERE expires_at < %s AND"
    " (task_id IS NULL OR NOT EXISTS (SELECT 1 FROM tasks WHERE tasks.id = issued_tokens.task_id)) LIMIT %s)",
    "DELETE FROM revocations WHERE seq IN (SELECT seq FROM revocations WHERE at < %s LIMIT %s)",
)
PURGE_SEEN = ("DELETE FROM seen_once WHERE (namespace, value) IN"
              " (SELECT namespace, value FROM seen_once WHERE expires_at < %s LIMIT %s)")
