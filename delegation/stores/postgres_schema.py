"""The PostgreSQL schema and its migrations, versioned in the `deputy_schema` table.

`deputy db upgrade` applies them (`upgrade`), under an advisory lock so that concurrent upgrades migrate
once. A store opened for serving never migrates: `check_version` refuses a schema older or newer than the
code, with one line naming what to do.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import tuple_row

from ..records import BLOCKED, StoreError
from .postgres_db import conninfo, store_error

# The tables and meaning of SQLite's schema (sqlite_schema.py), in PostgreSQL's types: times are BIGINT
# seconds, lists TEXT[], structured values JSONB. Every query the store runs has its index; the hot path's
# inserts (an implicit task, a token, an audit event per exchange) keep to the indexes those queries need.
# `deputy_checks` is what a batch of checked writes relies on (postgres_writes.py): it takes (or, for a
# batch, tries) the shared advisory locks of the rows' parties and of the trees written under, then reads
# their cutoffs and tasks in a statement of its own, so with a fresh snapshot (a VOLATILE function's
# statements each take one in READ COMMITTED). It is PL/pgSQL, whose statement plans are kept per session: a
# multi-statement SQL function is planned again on every call (about 250 us of the server's CPU per
# exchange, measured with pg_stat_statements).
# Feed events carry what SSF SETs are made of (SQLite's schema 5): the initiator, an admin revocation's
# party, and per task its user and cause (`tasks`: {id: [user_issuer, user_subject, cause]}).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        parent_id TEXT REFERENCES tasks (id) ON DELETE CASCADE,
        root_id TEXT NOT NULL,
        chain JSONB NOT NULL,
        agent TEXT NOT NULL,
        agent_domain TEXT NOT NULL,
        user_issuer TEXT NOT NULL,
        user_subject TEXT NOT NULL,
        scope TEXT NOT NULL,
        audiences TEXT[] NOT NULL,
        purpose TEXT,
        context JSONB,
        created_at BIGINT NOT NULL,
        deadline BIGINT NOT NULL,
        implicit BOOLEAN NOT NULL,
        state TEXT NOT NULL,
        ended_at BIGINT
    );
    CREATE INDEX tasks_open ON tasks (deadline) WHERE state = 'open';
    CREATE INDEX tasks_ended_roots ON tasks (ended_at) WHERE state <> 'open' AND parent_id IS NULL;
    CREATE INDEX tasks_children ON tasks (parent_id, created_at) WHERE parent_id IS NOT NULL;
    CREATE INDEX tasks_agent ON tasks (agent, created_at);
    CREATE INDEX tasks_user ON tasks (user_subject, created_at);
    CREATE INDEX tasks_open_domain ON tasks (agent_domain) WHERE state = 'open';
    CREATE INDEX tasks_created ON tasks (created_at);
    CREATE TABLE issued_tokens (
        jti TEXT PRIMARY KEY,
        user_issuer TEXT NOT NULL,
        user_subject TEXT NOT NULL,
        agent TEXT NOT NULL,
        agent_domain TEXT NOT NULL,
        audience TEXT NOT NULL,
        scope TEXT NOT NULL,
        issued_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        task_id TEXT,
        revoked_at BIGINT
    );
    CREATE INDEX issued_tokens_task ON issued_tokens (task_id, issued_at);
    CREATE INDEX issued_tokens_expiry ON issued_tokens (expires_at);
    CREATE TABLE audit_events (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        decision_id TEXT NOT NULL,
        at BIGINT NOT NULL,
        action TEXT NOT NULL,
        outcome TEXT NOT NULL,
        error TEXT,
        agent TEXT,
        agent_domain TEXT,
        user_issuer TEXT,
        user_subject TEXT,
        audience TEXT,
        requested_scope TEXT,
        granted_scope TEXT,
        reasons TEXT[] NOT NULL,
        policy_revision TEXT,
        jti TEXT,
        task_id TEXT,
        policy_engine TEXT,
        policy_latency_us BIGINT,
        policy_input TEXT,
        policy_result TEXT
    );
    CREATE INDEX audit_events_at ON audit_events (at);
    CREATE INDEX audit_events_task ON audit_events (task_id, id);
    CREATE INDEX audit_events_agent ON audit_events (agent, id);
    CREATE INDEX audit_events_user ON audit_events (user_subject, id);
    CREATE TABLE revocations (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at BIGINT NOT NULL,
        reason TEXT NOT NULL,
        task_ids TEXT[] NOT NULL,
        jtis TEXT[] NOT NULL,
        initiator TEXT NOT NULL,
        party_kind TEXT,
        party_id TEXT,
        party_domain TEXT,
        tasks JSONB NOT NULL
    );
    CREATE INDEX revocations_at ON revocations (at);
    CREATE TABLE revocation_audiences (
        audience TEXT NOT NULL,
        seq BIGINT NOT NULL REFERENCES revocations (seq) ON DELETE CASCADE,
        task_ids TEXT[] NOT NULL,
        jtis TEXT[] NOT NULL,
        PRIMARY KEY (audience, seq)
    );
    CREATE INDEX revocation_audiences_seq ON revocation_audiences (seq);
    CREATE TABLE credential_cutoffs (
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        issuer TEXT NOT NULL,
        issued_before BIGINT NOT NULL,
        PRIMARY KEY (kind, subject, issuer)
    );
    CREATE TABLE seen_once (
        namespace TEXT NOT NULL,
        value TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        PRIMARY KEY (namespace, value)
    );
    CREATE INDEX seen_once_expiry ON seen_once (expires_at);
    CREATE TABLE ssf_streams (
        id TEXT PRIMARY KEY,
        client TEXT NOT NULL,
        audiences TEXT[] NOT NULL,
        delivery TEXT NOT NULL,
        endpoint_url TEXT,
        authorization_header TEXT,
        events_requested TEXT[] NOT NULL,
        events_delivered TEXT[] NOT NULL,
        description TEXT,
        status TEXT NOT NULL,
        reason TEXT,
        cursor BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        touched_at BIGINT NOT NULL,
        verified_at BIGINT
    );
    CREATE INDEX ssf_streams_client ON ssf_streams (client, created_at);
    CREATE INDEX ssf_streams_touched ON ssf_streams (touched_at);
    CREATE INDEX ssf_streams_push ON ssf_streams (id) WHERE delivery = 'urn:ietf:rfc:8935' AND status = 'enabled';
    CREATE TABLE ssf_pending (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        stream_id TEXT NOT NULL REFERENCES ssf_streams (id) ON DELETE CASCADE,
        jti TEXT NOT NULL,
        token TEXT NOT NULL,
        UNIQUE (stream_id, jti)
    );
    CREATE INDEX ssf_pending_stream ON ssf_pending (stream_id, seq);
    CREATE TABLE signing_key_ring (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version BIGINT NOT NULL,
        sealed BYTEA NOT NULL
    );
    CREATE FUNCTION deputy_checks(p_keys TEXT[], p_under TEXT, p_agent TEXT, p_domain TEXT, p_user_issuer TEXT,
                                  p_user_subject TEXT)
        RETURNS TABLE (agent_cutoff BIGINT, user_cutoff BIGINT, state TEXT, deadline BIGINT)
        LANGUAGE plpgsql VOLATILE AS $checks$
        #variable_conflict use_column
        BEGIN
            PERFORM pg_advisory_xact_lock_shared(hashtextextended(key, 0)) FROM unnest(p_keys) AS key;
            IF p_under IS NOT NULL THEN
                PERFORM pg_advisory_xact_lock_shared(hashtextextended('tree:' || root_id, 0))
                    FROM tasks WHERE id = p_under;
            END IF;
            RETURN QUERY SELECT cut.agent, cut.usr, tasks.state, tasks.deadline FROM (SELECT
                max(issued_before) FILTER (WHERE kind = 'domain' OR kind = 'agent' AND issuer IN (p_domain, ''))
                    AS agent,
                max(issued_before) FILTER (WHERE kind = 'user' AND issuer IN (p_user_issuer, '')) AS usr
                FROM credential_cutoffs WHERE (kind = 'agent' AND subject = p_agent)
                OR (kind = 'domain' AND subject = p_domain) OR (kind = 'user' AND subject = p_user_subject)) AS cut
                LEFT JOIN tasks ON tasks.id = p_under;
        END
        $checks$;
    """,
    # 6: admin blocks (see sqlite_schema.py), checked by deputy_checks as cutoffs of BLOCKED + their expiry.
    f"""
    CREATE TABLE blocks (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        target TEXT NOT NULL,
        party TEXT NOT NULL,
        issuer TEXT NOT NULL,
        reason TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        created_by TEXT NOT NULL,
        lifted_at BIGINT,
        lifted_by TEXT,
        lift_reason TEXT
    );
    CREATE INDEX blocks_party ON blocks (target, party) WHERE lifted_at IS NULL;
    DROP FUNCTION deputy_checks(TEXT[], TEXT, TEXT, TEXT, TEXT, TEXT);
    CREATE FUNCTION deputy_checks(p_keys TEXT[], p_under TEXT, p_agent TEXT, p_domain TEXT, p_user_issuer TEXT,
                                  p_user_subject TEXT, p_now BIGINT)
        RETURNS TABLE (agent_cutoff BIGINT, user_cutoff BIGINT, state TEXT, deadline BIGINT)
        LANGUAGE plpgsql VOLATILE AS $checks$
        #variable_conflict use_column
        BEGIN
            PERFORM pg_advisory_xact_lock_shared(hashtextextended(key, 0)) FROM unnest(p_keys) AS key;
            IF p_under IS NOT NULL THEN
                PERFORM pg_advisory_xact_lock_shared(hashtextextended('tree:' || root_id, 0))
                    FROM tasks WHERE id = p_under;
            END IF;
            RETURN QUERY SELECT cut.agent, cut.usr, tasks.state, tasks.deadline FROM (SELECT
                max(issued_before) FILTER (WHERE kind = 'domain' OR kind = 'agent' AND issuer IN (p_domain, ''))
                    AS agent,
                max(issued_before) FILTER (WHERE kind = 'user' AND issuer IN (p_user_issuer, '')) AS usr
                FROM (SELECT kind, subject, issuer, issued_before FROM credential_cutoffs
                      UNION ALL SELECT target, party, issuer, {BLOCKED} + expires_at FROM blocks
                      WHERE lifted_at IS NULL AND expires_at > p_now) AS c
                WHERE (kind = 'agent' AND subject = p_agent)
                OR (kind = 'domain' AND subject = p_domain) OR (kind = 'user' AND subject = p_user_subject)) AS cut
                LEFT JOIN tasks ON tasks.id = p_under;
        END
        $checks$;
    """,
    # 7: the checked writes of concurrent requests go as one statement (postgres_batch.py): deputy_checks takes
    # the rows as one JSONB array, locks every party (sorted), then every tree (sorted), then checks each row.
    # Without p_wait it only tries each lock: a row that needs one held by a revocation comes back busy,
    # unwritten, so that a revocation in progress holds up its own rows, not the whole batch. Tasks are
    # looked up row by row (LATERAL ... LIMIT 1): a plan cached while the table was small would scan it.
    f"""
    DROP FUNCTION deputy_checks(TEXT[], TEXT, TEXT, TEXT, TEXT, TEXT, BIGINT);
    CREATE FUNCTION deputy_checks(p_rows JSONB, p_wait BOOLEAN)
        RETURNS TABLE (ord BIGINT, busy BOOLEAN, agent_cutoff BIGINT, user_cutoff BIGINT, state TEXT,
                       deadline BIGINT)
        LANGUAGE plpgsql VOLATILE AS $checks$
        #variable_conflict use_column
        DECLARE
            v_busy TEXT[];
        BEGIN
            IF p_wait THEN
                PERFORM pg_advisory_xact_lock_shared(hashtextextended(key, 0)) FROM (SELECT DISTINCT key
                    COLLATE "C" AS key FROM jsonb_array_elements(p_rows) AS r, jsonb_array_elements_text(r->'keys')
                    AS key ORDER BY 1) AS parties;
                PERFORM pg_advisory_xact_lock_shared(hashtextextended('tree:' || root_id, 0)) FROM (SELECT
                    DISTINCT t.root_id COLLATE "C" AS root_id FROM jsonb_array_elements(p_rows) AS r CROSS JOIN
                    LATERAL (SELECT root_id FROM tasks WHERE id = r->>'under' LIMIT 1) AS t ORDER BY 1) AS trees;
                v_busy := '{{}}';
            ELSE
                SELECT coalesce(array_agg(key), '{{}}') INTO v_busy FROM (SELECT DISTINCT key FROM
                    jsonb_array_elements(p_rows) AS r, jsonb_array_elements_text(r->'keys') AS key) AS parties
                    WHERE NOT pg_try_advisory_xact_lock_shared(hashtextextended(key, 0));
                SELECT v_busy || coalesce(array_agg('tree:' || root_id), '{{}}') INTO v_busy FROM (SELECT DISTINCT
                    t.root_id FROM jsonb_array_elements(p_rows) AS r CROSS JOIN LATERAL (SELECT root_id FROM tasks
                    WHERE id = r->>'under' LIMIT 1) AS t) AS trees
                    WHERE NOT pg_try_advisory_xact_lock_shared(hashtextextended('tree:' || root_id, 0));
            END IF;
            RETURN QUERY SELECT e.ord, coalesce('tree:' || t.root_id = ANY(v_busy), FALSE) OR EXISTS (SELECT FROM
                jsonb_array_elements_text(e.r->'keys') AS key WHERE key = ANY(v_busy)), cut.agent, cut.usr,
                t.state, t.deadline
                FROM jsonb_array_elements(p_rows) WITH ORDINALITY AS e(r, ord) CROSS JOIN LATERAL (SELECT
                max(issued_before) FILTER (WHERE kind = 'domain' OR kind = 'agent' AND issuer IN (e.r->>'domain', ''))
                    AS agent,
                max(issued_before) FILTER (WHERE kind = 'user' AND issuer IN (e.r->>'user_issuer', '')) AS usr
                FROM (SELECT kind, subject, issuer, issued_before FROM credential_cutoffs
                      UNION ALL SELECT target, party, issuer, {BLOCKED} + expires_at FROM blocks
                      WHERE lifted_at IS NULL AND expires_at > (e.r->>'now')::BIGINT) AS c
                WHERE (kind = 'agent' AND subject = e.r->>'agent') OR (kind = 'domain' AND subject = e.r->>'domain')
                OR (kind = 'user' AND subject = e.r->>'user_subject')) AS cut
                LEFT JOIN LATERAL (SELECT root_id, state, deadline FROM tasks WHERE id = e.r->>'under' LIMIT 1) AS t
                ON TRUE;
        END
        $checks$;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
UPGRADE_LOCK = "deputy:schema"  # advisory lock keys are hashtextextended(name, 0)
UPGRADE_COMMAND = "deputy db upgrade"


async def version_of(connection: psycopg.AsyncConnection[Any]) -> int:
    """The schema version of the connection's database: 0 when it has no Deputy schema."""
    async with connection.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute("SELECT to_regclass('deputy_schema') IS NOT NULL")
        found = await cursor.fetchone()
        if not found or not found[0]:
            return 0
        await cursor.execute("SELECT version FROM deputy_schema")
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


def check_version(version: int) -> None:
    """Refuse to serve on a schema other than this code's, saying which command brings them together."""
    if version < SCHEMA_VERSION:
        raise StoreError(f"the database schema is at version {version}, this Deputy needs {SCHEMA_VERSION}:"
                         f" run `{UPGRADE_COMMAND}`")
    if version > SCHEMA_VERSION:
        raise StoreError(f"the database schema (version {version}) is newer than this Deputy (version"
                         f" {SCHEMA_VERSION}): upgrade Deputy")


async def upgrade(url: str) -> tuple[int, int]:
    """Apply the pending migrations; (the version before, the version after). Raises StoreError."""
    try:
        async with await psycopg.AsyncConnection.connect(conninfo(url), autocommit=True) as connection:
            return await upgrade_connection(connection)
    except psycopg.Error as exc:
        raise store_error(exc) from exc


async def upgrade_connection(connection: psycopg.AsyncConnection[Any]) -> tuple[int, int]:
    """Each migration in its own transaction with the version it brings, all under a session advisory lock
    (so a concurrent upgrade waits, then finds nothing left to do; on an error, closing the connection
    releases it)."""
    await connection.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (UPGRADE_LOCK,))
    before = version = await version_of(connection)
    if version > SCHEMA_VERSION:
        check_version(version)
    while version < SCHEMA_VERSION:
        async with connection.transaction():
            if version == 0:
                await connection.execute("CREATE TABLE deputy_schema (version INTEGER NOT NULL);"
                                         " INSERT INTO deputy_schema VALUES (0)")
            await connection.execute(MIGRATIONS[version])
            version += 1
            await connection.execute("UPDATE deputy_schema SET version = %s", (version,))
    await connection.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (UPGRADE_LOCK,))
    return before, version
