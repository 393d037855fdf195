"""The store contract: every store implementation, on a real database, passes the same cases (schema
versioning, atomic grants, cascading revocation, expiry and retention, credential cutoffs, checks made
inside the write's transaction, and a revocation feed told per audience whose cursors pass what a reader
is not told). Implementations: SQLite, and PostgreSQL (each case on a fresh database, see tests/postgres.py;
its own races and faults are in test_postgres_store.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from delegation.audit import AuditEvent
from delegation.records import (
    BLOCKED,
    Block,
    CredentialRevoked,
    IssuedTokenRecord,
    Party,
    Presented,
    StoreError,
    TaskEnded,
    barred,
)
from delegation.store import ENABLED, PAUSED, POLL, PUSH, AuditQuery, PendingSet, SealedRing, Store, Stream
from delegation.stores import open_store
from delegation.stores.sqlite_schema import MIGRATIONS, SCHEMA_VERSION
from delegation.tasks import ADMIN, POLICY, USER, EndedTask, Task
from token_exchange.actors import ActorRef
from token_exchange.scope import Scope

NOW = 1_800_000_000
IMPLEMENTATIONS = ["sqlite", "postgresql"]


def agent_ref(spiffe_id: str) -> ActorRef:
    return ActorRef(spiffe_id, "spiffe", spiffe_id.removeprefix("spiffe://").partition("/")[0])


A = agent_ref("spiffe://example.org/a")
PRESENTED = Presented(A, NOW)


def task(task_id: str, *, parent: Task | None = None, agent: str = "spiffe://example.org/a",
         deadline: int = NOW + 600) -> Task:
    return Task(id=task_id, parent_id=parent.id if parent else None, root_id=parent.root_id if parent else task_id,
                chain=(*(parent.chain if parent else ()), agent_ref(agent)), user_issuer="https://idp",
                user_subject="alice", scope=Scope(frozenset({"mail.read"})), audiences=("https://mail",),
                created_at=NOW, deadline=deadline)


def token(jti: str, task_id: str, expires_at: int = NOW + 300) -> IssuedTokenRecord:
    return IssuedTokenRecord(jti, "https://idp", "alice", A.id, "https://mail", "mail.read", NOW, expires_at,
                             task_id, A.domain)


def event(action: str = "exchange", task_id: str | None = None) -> AuditEvent:
    return AuditEvent(decision_id=f"d-{action}-{task_id}", at=NOW, action=action, outcome="granted",
                      task_id=task_id)


def store_url(implementation: str, directory: Path) -> str:
    assert implementation == "sqlite"
    return f"sqlite:///{directory / 'deputy.db'}"


def new_store_url(request: pytest.FixtureRequest, implementation: str, directory: Path) -> str:
    """A new, empty store's URL: a SQLite file in `directory`, or a fresh PostgreSQL database with the
    current schema (tests/postgres.py's `postgresql_url`, dropped after the test)."""
    if implementation == "postgresql":
        return str(request.getfixturevalue("postgresql_url"))
    return store_url(implementation, directory)


@pytest.fixture(params=IMPLEMENTATIONS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return new_store_url(request, request.param, tmp_path)


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    opened = await open_store(url)
    yield opened
    await opened.close()


async def row_count(url: str, table: str) -> int:
    """How many rows a table of the store's database holds (to see what a case cannot see through the store)."""
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
            return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    async with await psycopg.AsyncConnection.connect(url) as db:
        row = await (await db.execute(f"SELECT count(*) FROM {table}")).fetchone()
        return int(row[0]) if row else 0


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Whether `condition` holds within `timeout` seconds (what another replica learns at its next try)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def cutoffs(store: Store, actor: ActorRef | None, *, user: tuple[str, str] | None, now: int
                  ) -> tuple[int | None, int | None]:
    """The cutoffs as the store reads them, checked against what its `cached_cutoffs` (the token endpoint's
    check before the policy) holds: in one process, the same after every write."""
    read = await store.cutoffs(actor, user=user, now=now)
    assert await store.cached_cutoffs(actor, user=user, now=now) == read
    return read


async def record_task(store: Store, t: Task, e: AuditEvent) -> None:
    await store.record_task(t, e, presented=PRESENTED)


async def record_grant(store: Store, t: IssuedTokenRecord, e: AuditEvent) -> None:
    await store.record_grant(t, e, presented=PRESENTED)


async def issued_count(store: Store, task_id: str) -> int:
    detail = await store.task_detail(task_id)
    return len(detail.tokens) if detail else 0


async def test_schema_is_versioned_and_a_newer_database_is_refused(tmp_path: Path) -> None:
    store = await open_store(store_url("sqlite", tmp_path))
    await store.close()
    with sqlite3.connect(tmp_path / "deputy.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer"):
        await open_store(store_url("sqlite", tmp_path))


async def test_a_sqlite_path_that_cannot_be_made_is_a_store_error_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StoreError, match=r"^sqlite: .*a-file/deputy\.db: "):
        await open_store(f"sqlite:///{tmp_path / 'a-file' / 'deputy.db'}")


async def test_database_file_is_private(tmp_path: Path) -> None:
    store = await open_store(store_url("sqlite", tmp_path))  # SQLite only: PostgreSQL keeps no file of ours
    await store.close()
    assert (tmp_path / "deputy.db").stat().st_mode & 0o777 == 0o600


async def test_concurrent_grants_commit_together_and_a_duplicate_fails_alone(store: Store) -> None:
    root = task("t1")
    await record_task(store, root, event("open_task", "t1"))
    results = await asyncio.gather(
        *(record_grant(store, token(f"j{i}", "t1"), event(f"x{i}", "t1")) for i in range(50)),
        record_grant(store, token("j0", "t1"), event("dup", "t1")),
        return_exceptions=True,
    )
    assert sum(isinstance(r, StoreError) for r in results) == 1
    assert await issued_count(store, "t1") == 50
    # nothing half-written: the failed grant's audit event was rolled back with it (whichever of the two
    # grants of j0 committed first, the other failed)
    failed = "x0" if isinstance(results[0], StoreError) else "dup"
    assert isinstance(results[0 if failed == "x0" else 50], StoreError)
    actions = [e.event.action for e in await store.audit_events(AuditQuery(task="t1", limit=1000))]
    assert failed not in actions and len(actions) == 51  # open_task + 50 grants


async def test_ending_a_task_ends_descendants_and_their_tokens_atomically(store: Store) -> None:
    root = task("root")
    child = task("child", parent=root, agent="spiffe://example.org/b")
    grandchild = task("grandchild", parent=child, agent="spiffe://example.org/c")
    other = task("other")
    for t in (root, child, grandchild, other):
        await record_task(store, t, event("open_task", t.id))
    for jti, owner in (("j-root", "root"), ("j-child", "child"), ("j-grand", "grandchild"), ("j-other", "other")):
        await record_grant(store, token(jti, owner), event("exchange", jti))
    revocation = await store.end_tasks(["root"], state="completed", reason="done", now=NOW + 1)
    assert revocation is not None
    assert set(revocation.task_ids) == {"root", "child", "grandchild"}
    assert set(revocation.jtis) == {"j-root", "j-child", "j-grand"}
    assert (await store.task("grandchild")).state == "completed"  # type: ignore[union-attr]
    assert (await store.task("other")).state == "open"  # type: ignore[union-attr]
    assert await store.end_tasks(["root"], state="completed", reason="again", now=NOW + 2) is None
    feed = (await store.revocations(0, 10, audiences=frozenset({"https://mail"}))).events
    assert [e.task_ids for e in feed] == [revocation.task_ids]


async def test_tasks_past_deadline_expire_with_an_audit_event_and_are_purged_after_retention(
        store: Store) -> None:
    await record_task(store, task("late", deadline=NOW + 10), event("open_task", "late"))
    await record_task(store, task("live", deadline=NOW + 10_000), event("open_task", "live"))
    expired, purged = await store.expire_and_purge(now=NOW + 11, retention=100)
    assert (expired, purged) == (1, 0)
    assert (await store.task("late")).state == "expired"  # type: ignore[union-attr]
    assert (await store.audit_events(AuditQuery(task="late")))[0].event.action == "expire"
    expired, purged = await store.expire_and_purge(now=NOW + 500, retention=100)
    assert (expired, purged) == (0, 1)
    assert await store.task("late") is None
    assert (await store.task("live")).state == "open"  # type: ignore[union-attr]


async def test_issue8_5_open_tasks_are_counted_without_ended_or_expired_ones(store: Store) -> None:
    assert await store.count_open_tasks() == 0
    root = task("root")
    for t in (root, task("child", parent=root), task("other"), task("late", deadline=NOW + 10)):
        await record_task(store, t, event("open_task", t.id))
    implicit = replace(task("implicit"), implicit=True)
    await store.record_grant(token("j-implicit", "implicit"), event("exchange", "j-implicit"), presented=PRESENTED,
                             task=implicit)
    assert await store.count_open_tasks() == 5  # an implicit task is open until its token's end
    await store.end_tasks(["root"], state="completed", reason="done", now=NOW + 1)
    assert await store.count_open_tasks() == 3
    await store.expire_and_purge(now=NOW + 11, retention=100)
    assert await store.count_open_tasks() == 2


async def test_revoking_everything_of_a_trust_domain_spares_other_domains(store: Store) -> None:
    await record_task(store, task("mine"), event("open_task", "mine"))
    await record_task(store, task("theirs", agent="spiffe://example.org.evil/a"), event("open_task", "theirs"))
    revocation = await store.end_matching(Party("domain", "example.org"), reason="incident", now=NOW)
    assert revocation is not None and revocation.task_ids == ("mine",)
    assert (await store.task("theirs")).state == "open"  # type: ignore[union-attr]


async def test_revoking_a_user_without_issuer_covers_every_issuer_and_with_one_only_that(store: Store) -> None:
    other_idp = Task(id="elsewhere", parent_id=None, root_id="elsewhere", chain=(A,),
                     user_issuer="https://other-idp", user_subject="alice", scope=Scope(frozenset({"x"})),
                     audiences=("https://mail",), created_at=NOW, deadline=NOW + 600)
    for t in (task("here"), other_idp):
        await record_task(store, t, event("open_task", t.id))
    one = await store.end_matching(Party("user", "alice", "https://idp"), reason="incident", now=NOW)
    assert one is not None and one.task_ids == ("here",)
    every = await store.end_matching(Party("user", "alice"), reason="incident", now=NOW)
    assert every is not None and every.task_ids == ("elsewhere",)


async def test_nothing_is_written_under_a_task_that_ended_meanwhile(store: Store) -> None:
    parent = task("parent")
    await record_task(store, parent, event("open_task", "parent"))
    await store.end_tasks(["parent"], state="completed", reason="done", now=NOW + 1)
    child = task("late-child", parent=parent, agent="spiffe://example.org/b")
    with pytest.raises(TaskEnded):
        await record_task(store, child, event("delegate", "late-child"))
    with pytest.raises(TaskEnded):
        await record_grant(store, token("late-jti", "parent", expires_at=NOW + 300), event("exchange", "late"))
    assert await store.task("late-child") is None and await store.token("late-jti") is None


async def test_tokens_of_an_ended_task_stay_revoked_after_the_task_is_purged(store: Store) -> None:
    await record_task(store, task("short"), event("open_task", "short"))
    await record_grant(store, token("long-lived", "short", expires_at=NOW + 10_000), event("exchange", "ll"))
    await store.end_tasks(["short"], state="completed", reason="done", now=NOW + 1)
    await store.expire_and_purge(now=NOW + 500, retention=100)
    assert await store.task("short") is None
    found = await store.token("long-lived")
    assert found is not None and found[1] is True  # revoked on its own record


async def test_revoking_a_party_records_a_cutoff_for_its_credentials(store: Store) -> None:
    agent, domain = A.id, A.domain
    assert await cutoffs(store, A, user=("https://idp", "alice"), now=NOW) == (None, None)
    await store.end_matching(Party("domain", domain), reason="incident", now=NOW)
    await store.end_matching(Party("agent", agent), reason="incident", now=NOW + 5)
    await store.end_matching(Party("user", "alice"), reason="incident", now=NOW + 7)  # every issuer
    assert await cutoffs(store, A, user=("https://idp", "alice"), now=NOW) == (NOW + 5, NOW + 7)
    assert await cutoffs(store, agent_ref("spiffe://other.org/b"), user=("https://idp", "bob"), now=NOW) == (None, None)
    await store.end_matching(Party("agent", agent), reason="older", now=NOW + 1)  # a cutoff never moves back
    assert (await cutoffs(store, A, user=None, now=NOW))[0] == NOW + 5


async def test_a_grant_relying_on_an_agent_revoked_meanwhile_is_refused_inside_its_transaction(store: Store) -> None:
    await record_task(store, task("t"), event("open_task", "t"))
    await store.end_matching(Party("agent", A.id), reason="incident", now=NOW + 5)
    with pytest.raises(CredentialRevoked) as caught:
        await store.record_grant(token("stale", "t"), event("exchange", "stale"), presented=Presented(A, NOW))
    assert caught.value.which == "actor" and await store.token("stale") is None
    fresh = Presented(A, NOW + 6)  # a credential issued after the revocation works
    with pytest.raises(TaskEnded):  # ... but the revoked agent's open task ended with it
        await store.record_grant(token("fresh", "t"), event("exchange", "fresh"), presented=fresh)


async def test_a_task_relying_on_a_user_revoked_meanwhile_is_refused_inside_its_transaction(store: Store) -> None:
    await store.end_matching(Party("user", "alice", "https://idp"), reason="incident", now=NOW + 5)
    stale = Presented(A, NOW + 9, ("https://idp", "alice"), NOW)
    with pytest.raises(CredentialRevoked) as caught:
        await store.record_task(task("late"), event("open_task", "late"), presented=stale)
    assert caught.value.which == "user" and await store.task("late") is None
    await store.record_task(task("other-idp"), event("open_task", "x"),
                            presented=Presented(A, NOW + 9, ("https://other-idp", "alice"), NOW))
    assert await store.task("other-idp") is not None


async def test_a_revocation_committed_after_an_implicit_grant_covers_its_task_and_token(store: Store) -> None:
    implicit = task("implicit")
    await store.record_grant(token("one-shot", "implicit"), event("exchange", "implicit"), presented=PRESENTED,
                             task=implicit)
    revocation = await store.end_matching(Party("user", "alice"), reason="incident", now=NOW + 1)
    assert revocation is not None and revocation.task_ids == ("implicit",) and revocation.jtis == ("one-shot",)
    found = await store.token("one-shot")
    assert found is not None and found.task is not None and found.task.state == "revoked"


async def test_agents_of_other_kinds_are_revoked_by_id_within_their_domain(store: Store) -> None:
    pod = ActorRef("system:serviceaccount:mail:agent", "kubernetes", "https://cluster-a.example")
    twin = ActorRef("system:serviceaccount:mail:agent", "kubernetes", "https://cluster-b.example")
    for name, agent in (("pod", pod), ("twin", twin)):
        await store.record_task(replace(task(name), chain=(agent,)), event("open_task", name),
                                presented=Presented(agent, NOW))
    spared = await store.end_matching(Party("agent", pod.id, "https://cluster-c.example"), reason="x", now=NOW)
    assert spared is None
    one = await store.end_matching(Party("agent", pod.id, pod.domain), reason="x", now=NOW)
    assert one is not None and one.task_ids == ("pod",)
    domain = await store.end_matching(Party("domain", twin.domain), reason="x", now=NOW)
    assert domain is not None and domain.task_ids == ("twin",)
    assert (await store.task("twin")).chain == (twin,)  # type: ignore[union-attr]


def block(block_id: str, kind: str, party: str, issuer: str | None = None, *, until: int = NOW + 60) -> Block:
    return Block(block_id, kind, party, issuer, "incident", NOW, until, "spiffe://example.org/admin")


async def test_an_active_block_bars_every_credential_of_its_party_until_it_expires(store: Store) -> None:
    await store.add_block(block("b-agent", "agent", A.id), event("block"))
    agent, _ = await cutoffs(store, A, user=None, now=NOW)
    assert agent == BLOCKED + NOW + 60  # a cutoff no credential passes, that says until when
    refusal = barred(Presented(A, NOW + 30), (agent, None))
    assert refusal is not None and refusal.which == "actor" and refusal.blocked_until == NOW + 60
    assert await cutoffs(store, A, user=None, now=NOW + 60) == (None, None)  # expired by itself
    with pytest.raises(CredentialRevoked) as caught:  # checked again inside the write's transaction
        await record_task(store, task("while-blocked"), event("open_task", "while-blocked"))
    assert caught.value.blocked_until == NOW + 60 and await store.task("while-blocked") is None


async def test_blocks_of_a_domain_an_issuer_and_a_user_bar_their_parties_only(store: Store) -> None:
    pod = ActorRef("system:serviceaccount:mail:agent", "kubernetes", "https://cluster-a.example")
    await store.add_block(block("b-domain", "trust_domain", "other.org"), event("block"))
    await store.add_block(block("b-issuer", "workload_issuer", pod.domain), event("block"))
    await store.add_block(block("b-user", "user", "alice", "https://idp"), event("block"))
    assert (await cutoffs(store, agent_ref("spiffe://other.org/b"), user=None, now=NOW))[0] == BLOCKED + NOW + 60
    assert (await cutoffs(store, pod, user=None, now=NOW))[0] == BLOCKED + NOW + 60
    assert await cutoffs(store, A, user=("https://idp", "alice"), now=NOW) == (None, BLOCKED + NOW + 60)
    assert await cutoffs(store, A, user=("https://other-idp", "alice"), now=NOW) == (None, None)


async def test_blocks_are_listed_found_by_prefix_and_lifted_once(store: Store) -> None:
    await store.add_block(block("block-one", "agent", A.id), event("block"))
    await store.add_block(block("block-two", "user", "bob", until=NOW + 5), event("block"))
    assert [b.id for b in await store.blocks(now=NOW)] == ["block-one", "block-two"]
    assert [b.id for b in await store.blocks(now=NOW + 5)] == ["block-one"]  # expired: no longer active
    assert len(await store.blocks(now=NOW + 5, include_inactive=True)) == 2
    assert [b.id for b in await store.blocks_with_prefix("block-")] == ["block-one", "block-two"]
    lifted = await store.lift_block("block-one", by="admin", reason="false alarm", now=NOW + 1, event=event("unblock"))
    assert lifted is not None and (lifted.lifted_at, lifted.lifted_by, lifted.lift_reason) == (
        NOW + 1, "admin", "false alarm")
    assert await store.lift_block("block-one", by="admin", reason=None, now=NOW + 2, event=event("unblock")) is None
    assert await cutoffs(store, A, user=None, now=NOW + 2) == (None, None)
    assert [e.event.action for e in await store.audit_events(AuditQuery())] == ["unblock", "block", "block"]


async def test_task_ids_are_found_by_prefix_and_parties_by_their_tasks(store: Store) -> None:
    for name in ("abc-1", "abc-2", "abd"):
        await record_task(store, task(name), event("open_task", name))
    assert await store.task_ids_with_prefix("abc", limit=5) == ["abc-1", "abc-2"]
    assert await store.task_ids_with_prefix("abd") == ["abd"] and await store.task_ids_with_prefix("x") == []
    assert await store.seen(Party("agent", A.id)) and await store.seen(Party("user", "alice", "https://idp"))
    assert not await store.seen(Party("agent", "spiffe://example.org/nobody"))
    assert not await store.seen(Party("user", "alice", "https://other-idp"))


async def test_schema_1_tasks_are_migrated_to_actor_chains_and_domains(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "deputy.db") as db:
        db.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
        db.execute("INSERT INTO tasks VALUES ('old', NULL, 'old', ?, ?, 'https://idp', 'alice', 'mail.read', ?,"
                   " NULL, ?, ?, 0, 'open', NULL)",
                   ('["spiffe://example.org/a", "spiffe://example.org/b"]', "spiffe://example.org/b",
                    '["https://mail"]', NOW, NOW + 600))
        db.execute("INSERT INTO credential_cutoffs VALUES ('trust_domain', 'example.org', '', ?)", (NOW,))
    store = await open_store(store_url("sqlite", tmp_path))
    try:
        migrated = await store.task("old")
        assert migrated is not None and migrated.chain == (A, agent_ref("spiffe://example.org/b"))
        assert await cutoffs(store, A, user=None, now=NOW) == (NOW, None)
        revocation = await store.end_matching(Party("domain", "example.org"), reason="x", now=NOW + 1)
        assert revocation is not None and revocation.task_ids == ("old",)
    finally:
        await store.close()


MAIL_AUD, FILES_AUD = "https://mail", "https://files"
ONLY_MAIL, ONLY_FILES, BOTH = frozenset({MAIL_AUD}), frozenset({FILES_AUD}), frozenset({MAIL_AUD, FILES_AUD})


async def opened(store: Store, task_id: str, *audiences: str) -> Task:
    t = replace(task(task_id), audiences=audiences)
    await record_task(store, t, event("open_task", task_id))
    return t


async def granted(store: Store, jti: str, task_id: str, audience: str) -> None:
    await record_grant(store, replace(token(jti, task_id), audience=audience), event("exchange", jti))


async def feed(store: Store, audiences: frozenset[str], since: int = 0, limit: int = 100
               ) -> list[tuple[int, tuple[str, ...], tuple[str, ...]]]:
    page = await store.revocations(since, limit, audiences=audiences)
    return [(e.seq, e.task_ids, e.jtis) for e in page.events]


async def test_the_feed_tells_each_audience_only_of_its_tokens_and_the_tasks_that_include_it(store: Store) -> None:
    await opened(store, "both", MAIL_AUD, FILES_AUD)
    await granted(store, "j-mail", "both", MAIL_AUD)
    await granted(store, "j-files", "both", FILES_AUD)
    await opened(store, "files-only", FILES_AUD)
    await opened(store, "mail-only", MAIL_AUD)
    await granted(store, "j-lone", "mail-only", MAIL_AUD)
    first = await store.end_tasks(["both"], state="completed", reason="done", now=NOW + 1)
    second = await store.end_tasks(["files-only"], state="completed", reason="done", now=NOW + 1)
    third = await store.revoke_token("j-lone", reason="revoked", now=NOW + 1)
    assert first and second and third
    assert set(first.jtis) == {"j-mail", "j-files"}  # what the store returns is the whole event
    assert await feed(store, ONLY_MAIL) == [(first.seq, ("both",), ("j-mail",)), (third.seq, (), ("j-lone",))]
    assert await feed(store, ONLY_FILES) == [(first.seq, ("both",), ("j-files",)), (second.seq, ("files-only",), ())]
    merged = await feed(store, BOTH)
    assert [seq for seq, _, _ in merged] == [first.seq, second.seq, third.seq]
    assert merged[0][1] == ("both",) and set(merged[0][2]) == {"j-mail", "j-files"}  # one event, each id once
    nobody = await store.revocations(0, 100, audiences=frozenset({"https://calendar"}))
    assert nobody.events == () and nobody.next == third.seq  # nothing to tell, but the cursor reaches the head


async def test_feed_cursors_pass_events_the_reader_is_not_told_about_and_never_loop(store: Store) -> None:
    audiences = [MAIL_AUD, FILES_AUD, FILES_AUD, MAIL_AUD, FILES_AUD]
    seqs = []
    for i, audience in enumerate(audiences):
        await opened(store, f"t{i}", audience)
        revocation = await store.end_tasks([f"t{i}"], state="revoked", reason="x", now=NOW + 1)
        assert revocation is not None
        seqs.append(revocation.seq)
    for reader, limit in ((ONLY_MAIL, 1), (ONLY_FILES, 2), (BOTH, 3)):
        told, cursor, asked = [], 0, 0
        while asked < 10:  # a reader that looped would ask forever
            page = await store.revocations(cursor, limit, audiences=reader)
            asked += 1
            assert page.next >= cursor and len(page.events) <= limit
            told += [e.seq for e in page.events]
            if len(page.events) < limit:  # the end of the feed, as a paged reader concludes
                break
            cursor = page.next
        assert told == [s for s, a in zip(seqs, audiences, strict=True) if a in reader]
        assert page.next == seqs[-1]
    unfilled = await store.revocations(0, 10, audiences=ONLY_MAIL)
    assert [e.seq for e in unfilled.events] == [seqs[0], seqs[3]] and unfilled.next == seqs[-1]
    beyond = await store.revocations(seqs[-1] + 100, 10, audiences=ONLY_MAIL)
    assert beyond.events == () and beyond.next == seqs[-1] + 100  # a cursor never moves back


async def test_following_the_feed_gives_only_the_readers_events_as_they_commit(store: Store) -> None:
    await opened(store, "early", FILES_AUD)
    await store.end_tasks(["early"], state="revoked", reason="x", now=NOW + 1)
    followed = store.follow(0, audiences=ONLY_MAIL)
    pending = asyncio.ensure_future(anext(followed))
    await asyncio.sleep(0.2)
    assert not pending.done()  # the files event is not given to a mail reader
    await opened(store, "late", MAIL_AUD)
    await store.end_tasks(["late"], state="revoked", reason="y", now=NOW + 2)
    revocation = await asyncio.wait_for(pending, 5)
    assert revocation.task_ids == ("late",) and revocation.reason == "y"
    await followed.aclose()  # type: ignore[attr-defined]  # an async generator


async def test_purging_an_event_purges_what_it_told_each_audience(url: str, store: Store) -> None:
    await opened(store, "old", MAIL_AUD, FILES_AUD)
    await store.end_tasks(["old"], state="revoked", reason="x", now=NOW + 1)
    assert await row_count(url, "revocation_audiences") == 2
    await store.expire_and_purge(now=NOW + 500, retention=100)
    assert (await store.revocations(0, 10, audiences=BOTH)).events == ()
    assert await row_count(url, "revocation_audiences") == 0


async def test_schema_2_feed_events_are_told_per_audience_after_migration(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "deputy.db") as db:
        db.executescript(MIGRATIONS[0] + ";" + MIGRATIONS[1] + "; PRAGMA user_version = 2;")
        db.execute("INSERT INTO tasks (id, parent_id, root_id, chain, agent, user_issuer, user_subject, scope,"
                   " audiences, purpose, created_at, deadline, implicit, state, ended_at, agent_domain) VALUES"
                   " ('t', NULL, 't', ?, ?, 'https://idp', 'alice', 'mail.read', ?, NULL, ?, ?, 0, 'revoked', ?, ?)",
                   (f'[{{"id": "{A.id}", "kind": "spiffe", "domain": "{A.domain}"}}]', A.id,
                    json.dumps([MAIL_AUD, FILES_AUD]), NOW, NOW + 600, NOW + 1, A.domain))
        for jti, audience in (("j-mail", MAIL_AUD), ("j-files", FILES_AUD)):
            db.execute("INSERT INTO issued_tokens VALUES (?, 'https://idp', 'alice', ?, ?, 'x', ?, ?, 't', ?, ?)",
                       (jti, A.id, audience, NOW, NOW + 300, NOW + 1, A.domain))
        db.execute("INSERT INTO revocations VALUES (7, ?, 'done', ?, ?)",
                   (NOW + 1, json.dumps(["t"]), json.dumps(["j-mail", "j-files", "j-purged"])))
    store = await open_store(store_url("sqlite", tmp_path))
    try:
        assert await feed(store, ONLY_MAIL) == [(7, ("t",), ("j-mail",))]
        assert await feed(store, ONLY_FILES) == [(7, ("t",), ("j-files",))]
        assert await feed(store, frozenset({"https://calendar"})) == []
    finally:
        await store.close()


async def test_issue7_9_expiry_and_purge_run_in_bounded_transactions_and_reach_every_row(store: Store) -> None:
    for i in range(10):
        await record_task(store, task(f"late-{i}", deadline=NOW + 10), event("open_task", f"late-{i}"))
        await record_grant(store, token(f"j-{i}", f"late-{i}", expires_at=NOW + 20), event("exchange", f"j-{i}"))
    assert await store.expire_and_purge(now=NOW + 11, retention=100, batch=3) == (10, 0)  # type: ignore[call-arg]
    assert {(await store.task(f"late-{i}")).state for i in range(10)} == {"expired"}  # type: ignore[union-attr]
    assert await store.expire_and_purge(now=NOW + 500, retention=100, batch=3) == (0, 10)  # type: ignore[call-arg]
    assert [await store.token(f"j-{i}") for i in range(10)] == [None] * 10
    assert (await store.revocations(0, 100, audiences=frozenset({"https://mail"}))).events == ()


async def test_issue7_9_one_process_leads_the_sweeps_until_it_closes(url: str) -> None:
    first, second = [await open_store(url) for _ in range(2)]
    try:
        assert first.lead_sweeps() and first.lead_sweeps()  # held, and asking again keeps it
        assert not second.lead_sweeps()
        await first.close()
        assert await eventually(second.lead_sweeps)  # at once (SQLite), at its next try (PostgreSQL)
    finally:
        await second.close()


async def test_issue7_10_old_audit_events_are_read_oldest_first_and_dropped_by_id(store: Store) -> None:
    for i in range(5):
        await store.append_audit(AuditEvent(decision_id=f"d{i}", at=NOW + i, action="exchange", outcome="granted"))
    old = await store.audit_before(NOW + 3, 10)
    assert [r.event.decision_id for r in old] == ["d0", "d1", "d2"]
    assert [r.event.decision_id for r in await store.audit_before(NOW + 3, 2)] == ["d0", "d1"]
    assert await store.drop_audit([r.id for r in old]) == 3
    assert [r.event.decision_id for r in await store.audit_events(AuditQuery(limit=10))] == ["d4", "d3"]


# Single-use values (token_exchange.single_use): attestation PoP jtis now, DPoP proof jtis later.


async def test_abca_11_1_a_value_is_first_used_once_per_namespace(store: Store) -> None:
    assert await store.first_use("attestation-pop-jti", "v1", expires_at=NOW + 60)
    assert not await store.first_use("attestation-pop-jti", "v1", expires_at=NOW + 60)
    assert await store.first_use("dpop-jti", "v1", expires_at=NOW + 60)  # another namespace: another value
    assert await store.first_use("attestation-pop-jti", "v2", expires_at=NOW + 60)


async def test_abca_11_1_concurrent_uses_of_one_value_let_exactly_one_through(store: Store) -> None:
    results = await asyncio.gather(*(store.first_use("ns", "same", expires_at=NOW + 60) for _ in range(20)),
                                   *(store.first_use("ns", f"other-{i}", expires_at=NOW + 60) for i in range(20)))
    assert results[:20].count(True) == 1 and all(results[20:])


async def test_abca_11_1_every_process_on_the_store_sees_a_used_value(url: str) -> None:
    first, second = [await open_store(url) for _ in range(2)]
    try:
        outcomes = await asyncio.gather(first.first_use("ns", "shared", expires_at=NOW + 60),
                                        second.first_use("ns", "shared", expires_at=NOW + 60))
        assert sorted(outcomes) == [False, True]
        assert not await first.first_use("ns", "shared", expires_at=NOW + 60)
    finally:
        await first.close()
        await second.close()


async def test_abca_9_7_used_values_are_kept_until_they_expire_then_purged(store: Store) -> None:
    for i in range(7):
        assert await store.first_use("ns", f"v{i}", expires_at=NOW + 60)
    assert await store.first_use("ns", "later", expires_at=NOW + 600)
    await store.expire_and_purge(now=NOW + 60, retention=100, batch=3)  # type: ignore[call-arg]
    assert not await store.first_use("ns", "v0", expires_at=NOW + 60)  # not yet past expires_at: still refused
    await store.expire_and_purge(now=NOW + 61, retention=100, batch=3)  # type: ignore[call-arg]
    assert all([await store.first_use("ns", f"v{i}", expires_at=NOW + 120) for i in range(7)])  # purged, all 7
    assert not await store.first_use("ns", "later", expires_at=NOW + 600)


# Issue 9: what SSF SETs are made of, SSF streams and their queues, the sealed key ring.

async def test_issue9_feed_events_name_each_tasks_user_and_cause_the_party_and_the_initiator(store: Store) -> None:
    parent = await opened(store, "parent", MAIL_AUD)
    child = replace(task("child", parent=parent), audiences=(MAIL_AUD,))
    await record_task(store, child, event("delegate", "child"))
    await opened(store, "other", FILES_AUD)
    ended = await store.end_tasks(["parent"], state="completed", reason="done", now=NOW + 1, initiator=USER)
    assert ended is not None and ended.initiator == USER and ended.party is None
    assert {t.id: (t.user_issuer, t.user_subject, t.cause) for t in ended.tasks} == {
        "parent": ("https://idp", "alice", "parent"), "child": ("https://idp", "alice", "parent")}
    revoked = await store.end_matching(Party("user", "alice", "https://idp"), reason="admin", now=NOW + 2)
    assert revoked is not None and revoked.initiator == ADMIN
    assert revoked.party == Party("user", "alice", "https://idp") and revoked.task_ids == ("other",)
    page = await store.revocations(0, 10, audiences=ONLY_MAIL)
    assert [(e.seq, [t.id for t in e.tasks], e.initiator) for e in page.events] == [
        (ended.seq, list(ended.task_ids), USER)]  # the files event is not told to mail, nor its tasks
    told = (await store.revocations(0, 10, audiences=ONLY_FILES)).events
    assert [(e.party, e.tasks, e.initiator) for e in told] == [
        (revoked.party, (EndedTask("other", "https://idp", "alice", "other"),), ADMIN)]


async def test_issue9_expiry_is_initiated_by_policy_and_a_token_revocation_by_its_caller(store: Store) -> None:
    await opened(store, "short", MAIL_AUD)
    await granted(store, "j1", "short", MAIL_AUD)
    revoked = await store.revoke_token("j1", reason="revoked", now=NOW + 1, initiator=USER)
    assert revoked is not None and revoked.tasks == () and revoked.jtis == ("j1",) and revoked.initiator == USER
    await store.expire_and_purge(now=NOW + 601, retention=10_000)
    events = (await store.revocations(revoked.seq, 10, audiences=ONLY_MAIL)).events
    assert [(e.task_ids, e.initiator) for e in events] == [(("short",), POLICY)]


def stream(stream_id: str = "s1", *, client: str = "spiffe://example.org/mail-api", cursor: int = 0,
           delivery: str = POLL) -> Stream:
    return Stream(id=stream_id, client=client, audiences=(MAIL_AUD,), delivery=delivery, endpoint_url=None,
                  authorization_header=None, events_requested=("urn:a",), events_delivered=("urn:a",),
                  description=None, status=ENABLED, reason=None, cursor=cursor, created_at=NOW, touched_at=NOW)


async def test_issue9_ssf_streams_are_created_read_updated_and_deleted_with_their_queues(store: Store) -> None:
    await store.create_stream(stream("s1"))
    await store.create_stream(stream("s2", client="spiffe://example.org/files-api", delivery=PUSH))
    assert await store.stream("s1") == stream("s1")
    assert [s.id for s in await store.streams_of("spiffe://example.org/mail-api")] == ["s1"]
    changed = replace(stream("s1"), status=PAUSED, reason="maintenance", description="mail", cursor=99,
                      audiences=("https://else",), verified_at=NOW + 5)
    assert await store.update_stream(changed)
    assert await store.stream("s1") == replace(changed, cursor=0, audiences=(MAIL_AUD,))  # never those
    assert await store.enqueue_sets("s1", [PendingSet("v1", "set-v1")])
    assert await store.delete_stream("s1") and not await store.delete_stream("s1")
    assert await store.stream("s1") is None and not await store.update_stream(changed)
    assert not await store.enqueue_sets("s1", [PendingSet("v2", "set-v2")])
    assert await store.pending_sets("s1", 10) == ([], False)


async def test_issue9_sets_are_queued_once_by_whoever_advances_the_cursor_first(store: Store) -> None:
    await store.create_stream(stream("s1", cursor=3))
    first = [PendingSet("a", "set-a"), PendingSet("b", "set-b")]
    assert await store.advance_stream("s1", from_cursor=3, to_cursor=7, sets=first)
    assert not await store.advance_stream("s1", from_cursor=3, to_cursor=7, sets=[PendingSet("c", "set-c")])
    assert (await store.stream("s1") or stream()).cursor == 7
    await store.enqueue_sets("s1", [PendingSet("v", "set-v")])
    assert await store.pending_sets("s1", 2) == (first, True)  # oldest first, and more is queued
    assert await store.acknowledge("s1", ["a", "unknown"]) == 1
    assert await store.pending_sets("s1", 10) == ([PendingSet("b", "set-b"), PendingSet("v", "set-v")], False)
    await store.clear_stream("s1", cursor=5)  # a disabled stream holds nothing; its cursor never moves back
    assert await store.pending_sets("s1", 10) == ([], False) and (await store.stream("s1") or stream()).cursor == 7


async def test_issue9_push_streams_are_the_enabled_push_streams_with_sets_queued(store: Store) -> None:
    await store.create_stream(stream("poll"))
    await store.create_stream(stream("push", delivery=PUSH))
    await store.create_stream(stream("idle", delivery=PUSH))
    await store.create_stream(replace(stream("paused", delivery=PUSH), status=PAUSED))
    for stream_id in ("poll", "push", "paused"):
        await store.enqueue_sets(stream_id, [PendingSet(f"j-{stream_id}", "set")])
    assert [s.id for s in await store.push_streams()] == ["push"]


async def test_issue9_streams_untouched_past_the_inactivity_timeout_are_dropped(store: Store) -> None:
    await store.create_stream(stream("old"))
    await store.create_stream(stream("fresh"))
    await store.touch_stream("fresh", NOW + 100)
    await store.touch_stream("fresh", NOW + 50)  # a touch never moves back
    assert await store.drop_inactive_streams(NOW + 60) == 1
    assert await store.stream("old") is None and (await store.stream("fresh") or stream()).touched_at == NOW + 100


async def test_issue9_a_queued_set_wakes_a_waiter_at_once(store: Store) -> None:
    await store.create_stream(stream("s1"))
    waiter = asyncio.ensure_future(store.wait_for_events(30))
    await asyncio.sleep(0)
    await store.enqueue_sets("s1", [PendingSet("v", "set-v")])
    await asyncio.wait_for(waiter, 1)


async def test_issue9_the_sealed_key_ring_is_saved_by_compare_and_set(store: Store) -> None:
    assert await store.key_ring() is None and await store.key_ring_version() is None
    assert await store.save_key_ring(b"ring-1", replaces=None) == 1
    assert await store.save_key_ring(b"other", replaces=None) is None  # another process made one first
    assert await store.save_key_ring(b"ring-2", replaces=1) == 2
    assert await store.save_key_ring(b"stale", replaces=1) is None
    assert await store.key_ring() == SealedRing(2, b"ring-2") and await store.key_ring_version() == 2


async def test_issue9_a_single_process_store_is_always_in_sync(store: Store) -> None:
    assert store.revocation_sync_problem() is None
