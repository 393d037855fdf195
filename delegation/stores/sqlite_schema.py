"""The SQLite schema and its migrations, versioned by `PRAGMA user_version`."""

from __future__ import annotations

import sqlite3

from ..records import StoreError

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
    # 2: agents are workloads of any kind, named by id within a domain (a SPIFFE trust domain or an
    # issuer); a task keeps its chain as {id, kind, domain} objects and its context (draft tctx/rctx).
    """
    ALTER TABLE tasks ADD COLUMN agent_domain TEXT NOT NULL DEFAULT '';
    ALTER TABLE tasks ADD COLUMN context TEXT NOT NULL DEFAULT '{}';
    UPDATE tasks SET agent_domain = substr(agent, 10, instr(substr(agent, 10) || '/', '/') - 1)
        WHERE agent LIKE 'spiffe://%';
    UPDATE tasks SET chain = (
        SELECT json_group_array(json_object('id', value, 'kind', 'spiffe',
                                            'domain', substr(value, 10, instr(substr(value, 10) || '/', '/') - 1)))
        FROM json_each(tasks.chain));
    ALTER TABLE issued_tokens ADD COLUMN agent_domain TEXT NOT NULL DEFAULT '';
    UPDATE issued_tokens SET agent_domain = substr(agent, 10, instr(substr(agent, 10) || '/', '/') - 1)
        WHERE agent LIKE 'spiffe://%';
    UPDATE credential_cutoffs SET kind = 'domain' WHERE kind = 'trust_domain';
    """,
    # 3: the feed tells each resource server only about its own tokens and tasks: per event, per audience,
    # the jtis of that audience's tokens and the ids of the tasks that include it. Events recorded before
    # are filled in from the tasks and tokens still kept (anything purged has outlived its tokens).
    """
    CREATE TABLE revocation_audiences (
        audience TEXT NOT NULL,
        seq INTEGER NOT NULL REFERENCES revocations (seq) ON DELETE CASCADE,
        task_ids TEXT NOT NULL,
        jtis TEXT NOT NULL,
        PRIMARY KEY (audience, seq)
    ) WITHOUT ROWID;
    CREATE INDEX revocation_audiences_seq ON revocation_audiences (seq);
    INSERT INTO revocation_audiences (audience, seq, task_ids, jtis)
        SELECT audience, seq, json_group_array(task_id) FILTER (WHERE task_id IS NOT NULL),
               json_group_array(jti) FILTER (WHERE jti IS NOT NULL)
        FROM (SELECT r.seq AS seq, a.value AS audience, t.value AS task_id, NULL AS jti
                  FROM revocations r, json_each(r.task_ids) t JOIN tasks ON tasks.id = t.value,
                       json_each(tasks.audiences) a
              UNION ALL
              SELECT r.seq, i.audience, NULL, j.value
                  FROM revocations r, json_each(r.jtis) j JOIN issued_tokens i ON i.jti = j.value)
        GROUP BY audience, seq;
    """,
    # 4: the audit trail names the agent's domain and carries the decision log (engine, latency, input,
    # result); single-use values (attestation PoP and DPoP proof jtis) are remembered until they expire.
    """
    ALTER TABLE audit_events ADD COLUMN agent_domain TEXT;
    ALTER TABLE audit_events ADD COLUMN policy_engine TEXT;
    ALTER TABLE audit_events ADD COLUMN policy_latency_us INTEGER;
    ALTER TABLE audit_events ADD COLUMN policy_input TEXT;
    ALTER TABLE audit_events ADD COLUMN policy_result TEXT;
    CREATE TABLE seen_once (
        namespace TEXT NOT NULL,
        value TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, value)
    ) WITHOUT ROWID;
    CREATE INDEX seen_once_expiry ON seen_once (expires_at);
    """,
    # 5: feed events name who ended them, the party of an admin revocation and, per task, its user and the
    # task the cascade started from (what SSF SETs carry); SSF streams with their queued SETs; the signing
    # key ring, sealed, for a gateway whose keys live in the store. Events recorded before are filled in
    # from the tasks still kept (each its own cause).
    """
    ALTER TABLE revocations ADD COLUMN initiator TEXT NOT NULL DEFAULT 'system';
    ALTER TABLE revocations ADD COLUMN party TEXT;
    ALTER TABLE revocations ADD COLUMN tasks TEXT NOT NULL DEFAULT '{}';
    UPDATE revocations SET tasks = coalesce((
        SELECT json_group_object(t.value, json_array(tasks.user_issuer, tasks.user_subject, t.value))
        FROM json_each(revocations.task_ids) t JOIN tasks ON tasks.id = t.value), '{}');
    CREATE TABLE ssf_streams (
        id TEXT PRIMARY KEY,
        client TEXT NOT NULL,
        audiences TEXT NOT NULL,
        delivery TEXT NOT NULL,
        endpoint_url TEXT,
        authorization_header TEXT,
        events_requested TEXT NOT NULL,
        events_delivered TEXT NOT NULL,
        description TEXT,
        status TEXT NOT NULL,
        reason TEXT,
        cursor INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        touched_at INTEGER NOT NULL,
        verified_at INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX ssf_streams_client ON ssf_streams (client);
    CREATE INDEX ssf_streams_touched ON ssf_streams (touched_at);
    CREATE TABLE ssf_pending (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        stream_id TEXT NOT NULL REFERENCES ssf_streams (id) ON DELETE CASCADE,
        jti TEXT NOT NULL,
        token TEXT NOT NULL,
        UNIQUE (stream_id, jti)
    );
    CREATE TABLE signing_key_ring (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL,
        sealed BLOB NOT NULL
    );
    """,
    # 6: admin blocks: a party (`target`: agent, domain or user, as cutoffs name it; '' issuer: any) is
    # refused every exchange until `expires_at` or until lifted.
    """
    CREATE TABLE blocks (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        target TEXT NOT NULL,
        party TEXT NOT NULL,
        issuer TEXT NOT NULL,
        reason TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        lifted_at INTEGER,
        lifted_by TEXT,
        lift_reason TEXT
    ) WITHOUT ROWID;
    CREATE INDEX blocks_party ON blocks (target, party) WHERE lifted_at IS NULL;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


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
