"""The SQLite store on a real database file: schema versioning, atomic grants, cascading revocation,
expiry and retention."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from delegation.audit import AuditEvent
from delegation.records import IssuedTokenRecord, StoreError, TaskEnded
from delegation.stores.sqlite import SCHEMA_VERSION, SqliteStore
from delegation.tasks import Task
from token_exchange.scope import Scope

NOW = 1_800_000_000


def task(task_id: str, *, parent: Task | None = None, agent: str = "spiffe://example.org/a",
         deadline: int = NOW + 600) -> Task:
    return Task(id=task_id, parent_id=parent.id if parent else None, root_id=parent.root_id if parent else task_id,
                chain=(*(parent.chain if parent else ()), agent), user_issuer="https://idp", user_subject="alice",
                scope=Scope(frozenset({"mail.read"})), audiences=("https://mail",), purpose=None, created_at=NOW,
                deadline=deadline)


def token(jti: str, task_id: str, expires_at: int = NOW + 300) -> IssuedTokenRecord:
    return IssuedTokenRecord(jti, "https://idp", "alice", "spiffe://example.org/a", "https://mail", "mail.read",
                             NOW, expires_at, task_id)


def event(action: str = "exchange", task_id: str | None = None) -> AuditEvent:
    return AuditEvent(decision_id=f"d-{action}-{task_id}", at=NOW, action=action, outcome="granted",
                      task_id=task_id)


@pytest.fixture
async def store(tmp_path: Path) -> SqliteStore:
    opened = await SqliteStore.open(tmp_path / "deputy.db")
    yield opened
    await opened.close()


async def test_schema_is_versioned_and_a_newer_database_is_refused(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "deputy.db")
    await store.close()
    with sqlite3.connect(tmp_path / "deputy.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer"):
        await SqliteStore.open(tmp_path / "deputy.db")


async def test_database_file_is_private(tmp_path: Path, store: SqliteStore) -> None:
    assert (tmp_path / "deputy.db").stat().st_mode & 0o777 == 0o600


async def test_concurrent_grants_commit_together_and_a_duplicate_fails_alone(store: SqliteStore) -> None:
    root = task("t1")
    await store.record_task(root, event("open_task", "t1"))
    results = await asyncio.gather(
        *(store.record_grant(token(f"j{i}", "t1"), event(f"x{i}", "t1")) for i in range(50)),
        store.record_grant(token("j0", "t1"), event("dup", "t1")),
        return_exceptions=True,
    )
    assert sum(isinstance(r, StoreError) for r in results) == 1
    assert await store.issued_count() == 50
    # nothing half-written: the failed grant's audit event was rolled back with it
    actions = [e["action"] for e in await store.audit_events(task="t1", limit=1000)]
    assert "dup" not in actions and len(actions) == 51  # open_task + 50 grants


async def test_ending_a_task_ends_descendants_and_their_tokens_atomically(store: SqliteStore) -> None:
    root = task("root")
    child = task("child", parent=root, agent="spiffe://example.org/b")
    grandchild = task("grandchild", parent=child, agent="spiffe://example.org/c")
    other = task("other")
    for t in (root, child, grandchild, other):
        await store.record_task(t, event("open_task", t.id))
    for jti, owner in (("j-root", "root"), ("j-child", "child"), ("j-grand", "grandchild"), ("j-other", "other")):
        await store.record_grant(token(jti, owner), event("exchange", jti))
    revocation = await store.end_tasks(["root"], state="completed", reason="done", now=NOW + 1)
    assert revocation is not None
    assert set(revocation.task_ids) == {"root", "child", "grandchild"}
    assert set(revocation.jtis) == {"j-root", "j-child", "j-grand"}
    assert (await store.task("grandchild")).state == "completed"  # type: ignore[union-attr]
    assert (await store.task("other")).state == "open"  # type: ignore[union-attr]
    assert await store.end_tasks(["root"], state="completed", reason="again", now=NOW + 2) is None
    feed = await store.revocations(0, 10)
    assert [e.task_ids for e in feed] == [revocation.task_ids]


async def test_tasks_past_deadline_expire_with_an_audit_event_and_are_purged_after_retention(
        store: SqliteStore) -> None:
    await store.record_task(task("late", deadline=NOW + 10), event("open_task", "late"))
    await store.record_task(task("live", deadline=NOW + 10_000), event("open_task", "live"))
    expired, purged = await store.expire_and_purge(now=NOW + 11, retention=100)
    assert (expired, purged) == (1, 0)
    assert (await store.task("late")).state == "expired"  # type: ignore[union-attr]
    assert (await store.audit_events(task="late"))[0]["action"] == "expire"
    expired, purged = await store.expire_and_purge(now=NOW + 500, retention=100)
    assert (expired, purged) == (0, 1)
    assert await store.task("late") is None
    assert (await store.task("live")).state == "open"  # type: ignore[union-attr]


async def test_revoking_everything_of_a_trust_domain_spares_other_domains(store: SqliteStore) -> None:
    await store.record_task(task("mine"), event("open_task", "mine"))
    await store.record_task(task("theirs", agent="spiffe://example.org.evil/a"), event("open_task", "theirs"))
    revocation = await store.end_matching(trust_domain="example.org", reason="incident", now=NOW)
    assert revocation is not None and revocation.task_ids == ("mine",)
    assert (await store.task("theirs")).state == "open"  # type: ignore[union-attr]


async def test_revoking_a_user_without_issuer_covers_every_issuer_and_with_one_only_that(store: SqliteStore) -> None:
    other_idp = Task(id="elsewhere", parent_id=None, root_id="elsewhere", chain=("spiffe://example.org/a",),
                     user_issuer="https://other-idp", user_subject="alice", scope=Scope(frozenset({"x"})),
                     audiences=("https://mail",), purpose=None, created_at=NOW, deadline=NOW + 600)
    for t in (task("here"), other_idp):
        await store.record_task(t, event("open_task", t.id))
    one = await store.end_matching(user=("https://idp", "alice"), reason="incident", now=NOW)
    assert one is not None and one.task_ids == ("here",)
    every = await store.end_matching(user=(None, "alice"), reason="incident", now=NOW)
    assert every is not None and every.task_ids == ("elsewhere",)


async def test_nothing_is_written_under_a_task_that_ended_meanwhile(store: SqliteStore) -> None:
    parent = task("parent")
    await store.record_task(parent, event("open_task", "parent"))
    await store.end_tasks(["parent"], state="completed", reason="done", now=NOW + 1)
    child = task("late-child", parent=parent, agent="spiffe://example.org/b")
    with pytest.raises(TaskEnded):
        await store.record_task(child, event("delegate", "late-child"))
    with pytest.raises(TaskEnded):
        await store.record_grant(token("late-jti", "parent", expires_at=NOW + 300), event("exchange", "late"))
    assert await store.task("late-child") is None and await store.token("late-jti") is None


async def test_tokens_of_an_ended_task_stay_revoked_after_the_task_is_purged(store: SqliteStore) -> None:
    await store.record_task(task("short"), event("open_task", "short"))
    await store.record_grant(token("long-lived", "short", expires_at=NOW + 10_000), event("exchange", "ll"))
    await store.end_tasks(["short"], state="completed", reason="done", now=NOW + 1)
    await store.expire_and_purge(now=NOW + 500, retention=100)
    assert await store.task("short") is None
    found = await store.token("long-lived")
    assert found is not None and found[1] is True  # revoked on its own record


async def test_revoking_a_party_records_a_cutoff_for_its_credentials(store: SqliteStore) -> None:
    agent, domain = "spiffe://example.org/a", "example.org"
    assert await store.cutoffs(agent=agent, trust_domain=domain, user=("https://idp", "alice")) == (None, None)
    await store.end_matching(trust_domain=domain, reason="incident", now=NOW)
    await store.end_matching(agent=agent, reason="incident", now=NOW + 5)
    await store.end_matching(user=(None, "alice"), reason="incident", now=NOW + 7)  # every issuer
    assert await store.cutoffs(agent=agent, trust_domain=domain, user=("https://idp", "alice")) == (NOW + 5, NOW + 7)
    assert await store.cutoffs(agent="spiffe://other.org/b", trust_domain="other.org",
                               user=("https://idp", "bob")) == (None, None)
    await store.end_matching(agent=agent, reason="older", now=NOW + 1)  # a cutoff never moves back
    assert (await store.cutoffs(agent=agent, trust_domain=domain, user=None))[0] == NOW + 5
