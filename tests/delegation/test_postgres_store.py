"""What only the PostgreSQL store has to prove, on a real server (tests/postgres.py): several replicas
(store instances) on one database racing check-and-writes against revocations, feed cursors under
concurrent revocations, LISTEN/NOTIFY between replicas and the loss of the listener, PostgreSQL stopped
and started again, the schema versions and `deputy db upgrade`, the sweeper's lead, and connections
without a password (a Unix socket with peer authentication, a TLS client certificate)."""

from __future__ import annotations

import asyncio
import datetime
import getpass
import ipaddress
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from psycopg.rows import dict_row

from delegation.records import BLOCKED, Block, CredentialRevoked, Party, Presented, StoreError, TaskEnded
from delegation.store import PendingSet, Store
from delegation.stores import open_store, postgres_cutoffs, postgres_listen, upgrade_store
from delegation.stores import postgres_writes as writes
from delegation.stores.postgres_batch import FLUSHES
from delegation.stores.postgres_listen import NOT_YET, Listener, Wakeup
from delegation.stores.postgres_schema import SCHEMA_VERSION, upgrade
from delegation.tasks import SYSTEM, EndedTask, Revocation, Task
from tests.delegation.test_store_contract import (
    MAIL_AUD,
    NOW,
    ONLY_MAIL,
    PRESENTED,
    A,
    agent_ref,
    event,
    eventually,
    opened,
    stream,
    task,
    token,
)
from tests.postgres import Cluster, Server
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def replicas(url: str, count: int = 2) -> AsyncIterator[list[Store]]:
    """`count` store instances on one database, as `count` gateway replicas have."""
    stores = [await open_store(url) for _ in range(count)]
    try:
        yield stores
    finally:
        for store in stores:
            await store.close()


def admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url, autocommit=True)


async def hammer(attempt: Callable[[int], Awaitable[None]], *, revoke: Callable[[], Awaitable[Revocation | None]],
                 workers: int = 8, after: int = 40) -> tuple[list[int], list[BaseException], Revocation | None]:
    """Writers attempt writes without pause while a revocation commits in the middle of them; each goes on
    for `after` attempts once it has seen the revocation answer. (The writes that succeeded, the errors,
    the revocation.)"""
    done, errors, numbers, revoked = [], [], iter(range(10**6)), asyncio.Event()

    async def writer() -> None:
        left = after
        while left > 0:
            n = next(numbers)
            try:
                await attempt(n)
                done.append(n)
            except (TaskEnded, CredentialRevoked) as exc:
                errors.append(exc)
            left -= revoked.is_set()

    async def revoker() -> Revocation | None:
        while len(done) < 20:
            await asyncio.sleep(0.001)
        try:
            return await revoke()
        finally:
            revoked.set()

    *_, revocation = await asyncio.gather(*(writer() for _ in range(workers)), revoker())
    return done, errors, revocation


async def test_an_exchange_racing_a_task_revocation_on_another_replica_is_in_the_cascade_or_refused(
        postgresql_url: str) -> None:
    async with replicas(postgresql_url) as (a, b):
        root = await opened(a, "root", MAIL_AUD)
        child = task("child", parent=root, agent="spiffe://example.org/b")
        await a.record_task(child, event("delegate", "child"), presented=PRESENTED)

        async def grant(n: int) -> None:
            await a.record_grant(token(f"j{n}", ("root", "child")[n % 2]), event("x", f"j{n}"), presented=PRESENTED)

        done, errors, revocation = await hammer(
            grant, revoke=lambda: b.end_tasks(["root"], state="revoked", reason="race", now=NOW + 1))
        assert revocation is not None and errors and all(isinstance(e, TaskEnded) for e in errors)
        assert {f"j{n}" for n in done} == set(revocation.jtis)  # every token recorded is in the cascade
        for jti in revocation.jtis:
            state = await a.token(jti)
            assert state is not None and state.revoked


async def test_a_delegation_racing_a_tree_revocation_on_another_replica_is_in_the_cascade_or_refused(
        postgresql_url: str) -> None:
    async with replicas(postgresql_url) as (a, b):
        root = await opened(a, "root", MAIL_AUD)
        made: dict[int, Task] = {}

        async def delegate(n: int) -> None:
            parent = made.get(n // 4, root)  # deeper and deeper: children of the children made so far
            child = replace(task(f"c{n}", parent=parent, agent="spiffe://example.org/b"), audiences=(MAIL_AUD,))
            await a.record_task(child, event("delegate", child.id), presented=PRESENTED)
            made[n] = child

        done, errors, revocation = await hammer(
            delegate, revoke=lambda: b.end_tasks(["root"], state="revoked", reason="race", now=NOW + 1))
        assert revocation is not None and errors and all(isinstance(e, TaskEnded) for e in errors)
        assert {"root", *(f"c{n}" for n in done)} == set(revocation.task_ids)
        assert {(t.id, t.cause) for t in revocation.tasks} == {(i, "root") for i in revocation.task_ids}
        with admin(postgresql_url) as db:
            left = db.execute("SELECT id FROM tasks WHERE root_id = 'root' AND state = 'open'").fetchall()
        assert left == []  # nothing open under the ended tree


async def test_a_grant_racing_an_admin_revocation_of_its_agent_is_in_the_cascade_or_refused(
        postgresql_url: str) -> None:
    async with replicas(postgresql_url) as (a, b):
        async def one_shot(n: int) -> None:  # each a new implicit task of the agent, nothing under a tree
            implicit = replace(task(f"i{n}"), implicit=True)
            await a.record_grant(token(f"j{n}", implicit.id), event("x", f"j{n}"), presented=PRESENTED,
                                 task=implicit)

        party = Party("agent", PRESENTED.actor.id)  # type: ignore[union-attr]
        done, errors, revocation = await hammer(one_shot, revoke=lambda: b.end_matching(party, reason="x", now=NOW))
        assert revocation is not None and errors
        assert all(isinstance(e, CredentialRevoked) and e.which == "actor" for e in errors)
        assert set(revocation.task_ids) == {f"i{n}" for n in done}  # every task it let through, it ended
        assert set(revocation.jtis) == {f"j{n}" for n in done}


async def test_grants_racing_a_revocation_of_two_trees_at_once_are_in_the_cascade_or_refused_never_deadlocked(
        postgresql_url: str) -> None:
    """Batches hold the shared locks of several trees, the revocation the exclusive locks of both: both take
    them sorted, so neither waits for the other in a cycle (PostgreSQL would abort one: a StoreError)."""
    async with replicas(postgresql_url) as (a, b):
        await opened(a, "root-1", MAIL_AUD)
        await opened(a, "root-2", MAIL_AUD)

        async def grant(n: int) -> None:
            under = ("root-2", "root-1")[n % 2]
            await a.record_grant(token(f"j{n}", under), event("x", f"j{n}"), presented=PRESENTED)

        done, errors, revocation = await hammer(
            grant, revoke=lambda: b.end_tasks(["root-2", "root-1"], state="revoked", reason="race", now=NOW + 1))
        assert revocation is not None and errors and all(isinstance(e, TaskEnded) for e in errors)
        assert {f"j{n}" for n in done} == set(revocation.jtis)


TREE_LOCK = ("SELECT pid, granted FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1"
             " AND ((classid::bigint << 32) | objid::bigint) = hashtextextended(%s, 0)")


async def test_a_revocation_of_two_trees_takes_their_locks_in_sorted_order(postgresql_url: str) -> None:
    """The ordering the race above relies on, seen directly: with the later tree's lock held elsewhere, the
    revocation already holds the earlier tree's lock while it waits (taken the other way round, it would hold
    nothing)."""
    async with replicas(postgresql_url, 1) as (store,):
        await opened(store, "root-1", MAIL_AUD)
        await opened(store, "root-2", MAIL_AUD)
        with admin(postgresql_url) as stuck, admin(postgresql_url) as observer:

            def waiting_for(lock: str) -> list[int]:
                return [pid for pid, granted in observer.execute(TREE_LOCK, (lock,)) if not granted]

            stuck.execute("BEGIN")
            stuck.execute("SELECT pg_advisory_xact_lock(hashtextextended('tree:root-2', 0))")
            revocation = asyncio.create_task(
                store.end_tasks(["root-2", "root-1"], state="revoked", reason="order", now=NOW + 1))
            assert await eventually(lambda: bool(waiting_for("tree:root-2")))
            (revoking,) = waiting_for("tree:root-2")
            assert observer.execute(TREE_LOCK, ("tree:root-1",)).fetchall() == [(revoking, True)]
            stuck.execute("COMMIT")
            ended = await asyncio.wait_for(revocation, 5)
        assert ended is not None and set(ended.task_ids) == {"root-1", "root-2"}


def count_batches(store: Store) -> list[int]:
    """The sizes of the batches of checked writes `store` sends from now on (its real statements)."""
    batches = store._writes  # type: ignore[attr-defined]
    sizes: list[int] = []
    send = batches._send

    async def counted(rows: list[dict[str, object]], *, wait: bool) -> object:
        sizes.append(len(rows))
        return await send(rows, wait=wait)

    batches._send = counted
    return sizes


async def test_concurrent_checked_writes_go_as_few_statements_and_each_request_gets_its_own_outcome(
        postgresql_url: str) -> None:
    async with replicas(postgresql_url, 1) as (store,):
        await opened(store, "open", MAIL_AUD)
        await opened(store, "ended", MAIL_AUD)
        await store.end_tasks(["ended"], state="completed", reason="done", now=NOW)
        cut_off = Presented(agent_ref("spiffe://example.org/cut"), NOW - 10)
        await store.end_matching(Party("agent", cut_off.actor.id), reason="incident", now=NOW)  # type: ignore[union-attr]
        sizes = count_batches(store)
        writes_ = [store.record_grant(token(f"ok-{n}", "open"), event("x", f"ok-{n}"), presented=PRESENTED)
                   for n in range(30)]
        writes_.insert(7, store.record_grant(token("under-ended", "ended"), event("x", "under-ended"),
                                             presented=PRESENTED))
        implicit = replace(task("cut-task"), implicit=True)
        writes_.insert(19, store.record_grant(token("cut", implicit.id), event("x", "cut"), presented=cut_off,
                                              task=implicit))
        outcomes = await asyncio.gather(*writes_, return_exceptions=True)
        assert isinstance(outcomes[7], TaskEnded) and isinstance(outcomes[19], CredentialRevoked)
        assert sum(o is None for o in outcomes) == 30
        assert sum(sizes) == 32 and max(sizes) > 1 and len(sizes) < 32  # batched, every write sent once
        for n in range(30):
            assert await store.token(f"ok-{n}") is not None
        assert await store.token("under-ended") is None and await store.token("cut") is None
        assert await store.task("cut-task") is None
        with admin(postgresql_url) as db:
            audited = {row[0] for row in db.execute("SELECT task_id FROM audit_events WHERE action = 'x'")}
        assert audited == {f"ok-{n}" for n in range(30)}  # a refused row's audit event is not written either


async def test_a_batch_that_fails_as_a_whole_is_retried_row_by_row_so_a_bad_row_fails_only_its_own_request(
        postgresql_url: str) -> None:
    """PostgreSQL refuses a JSON string holding U+0000 (whatever let one through): the batch holding it
    writes nothing, then each row goes alone, and only the request that brought it fails (503)."""
    async with replicas(postgresql_url, 1) as (store,):
        await opened(store, "root", MAIL_AUD)
        sizes = count_batches(store)
        good = [store.record_grant(token(f"j{n}", "root"), event("x", f"j{n}"), presented=PRESENTED)
                for n in range(10)]
        bad = store.record_grant(token("bad", "root"), replace(event("x", "bad"), reasons=("nul \0 here",)),
                                 presented=PRESENTED)
        outcomes = await asyncio.gather(*good[:5], bad, *good[5:], return_exceptions=True)
        assert isinstance(outcomes[5], StoreError) and "postgresql" in str(outcomes[5])
        assert all(o is None for i, o in enumerate(outcomes) if i != 5)
        alone, batched = FLUSHES, 11 - FLUSHES  # the first go alone; the rest, the bad row among them, together
        assert sizes == [1] * alone + [batched] + [1] * batched  # the batch failed: each of its rows alone
        assert await store.token("bad") is None
        for n in range(10):
            assert await store.token(f"j{n}") is not None


async def test_a_revocation_holding_a_tree_holds_up_only_that_tree_s_writes_in_a_batch(postgresql_url: str) -> None:
    """A batch only tries its locks: the row under the locked tree comes back busy and waits alone, and the
    batch's other rows are written without waiting for the revocation."""
    async with replicas(postgresql_url, 1) as (store,):
        await opened(store, "held", MAIL_AUD)
        await opened(store, "free", MAIL_AUD)
        sizes = count_batches(store)
        with admin(postgresql_url) as stuck:
            stuck.execute("BEGIN")
            stuck.execute("SELECT pg_advisory_xact_lock(hashtextextended('tree:held', 0))")
            free = [asyncio.create_task(store.record_grant(token(f"j{n}", "free"), event("x", f"j{n}"),
                                                           presented=PRESENTED)) for n in range(10)]
            held = asyncio.create_task(store.record_grant(token("h", "held"), event("x", "h"), presented=PRESENTED))
            await asyncio.wait_for(asyncio.gather(*free), 2)  # long before the lock timeout (5 s)
            await asyncio.sleep(0.2)
            assert not held.done()
            assert sizes == [1] * FLUSHES + [11 - FLUSHES, 1]  # some alone, a batch, then its busy row alone
            stuck.execute("COMMIT")
            await asyncio.wait_for(held, 2)
        for jti in ("h", *(f"j{n}" for n in range(10))):
            assert await store.token(jti) is not None


async def test_a_checked_write_whose_request_is_cancelled_is_still_written_once_queued(postgresql_url: str) -> None:
    async with replicas(postgresql_url, 1) as (store,):
        await opened(store, "root", MAIL_AUD)
        sizes = count_batches(store)
        writes_ = [asyncio.create_task(store.record_grant(token(f"j{n}", "root"), event("x", f"j{n}"),
                                                          presented=PRESENTED)) for n in range(FLUSHES + 2)]
        await asyncio.sleep(0)  # every write on its way or queued
        writes_[-1].cancel()  # a queued one
        outcomes = await asyncio.gather(*writes_, return_exceptions=True)
        assert isinstance(outcomes[-1], asyncio.CancelledError) and sizes == [1] * FLUSHES + [2]
        for n in range(FLUSHES + 2):
            assert await store.token(f"j{n}") is not None  # recorded, as a moment later it would have been


async def test_a_write_behind_a_stuck_revocation_fails_closed_after_the_lock_timeout(postgresql_url: str) -> None:
    """A replica frozen in the middle of a revocation holds its tree's lock: a grant under the tree waits at
    most lock_timeout (5 s), then fails with StoreError (503), recording nothing."""
    async with replicas(postgresql_url, 1) as (store,):
        await opened(store, "root", MAIL_AUD)
        with admin(postgresql_url) as stuck, stuck.transaction():
            stuck.execute("SELECT pg_advisory_xact_lock(hashtextextended('tree:root', 0))")
            started = time.monotonic()
            with pytest.raises(StoreError, match="lock timeout"):
                await store.record_grant(token("j", "root"), event("x", "j"), presented=PRESENTED)
            assert 4.5 < time.monotonic() - started < 8
        assert await store.token("j") is None


async def test_a_single_use_value_used_on_two_replicas_at_once_is_let_through_once(postgresql_url: str) -> None:
    async with replicas(postgresql_url) as (a, b):
        for round_ in range(10):
            uses = [store.first_use("pop", f"v{round_}", expires_at=NOW + 60) for _ in range(5) for store in (a, b)]
            assert (await asyncio.gather(*uses)).count(True) == 1


async def test_concurrent_revocations_on_two_replicas_reach_a_follower_and_a_pager_once_each_in_order(
        postgresql_url: str) -> None:
    async with replicas(postgresql_url) as (a, b):
        for i in range(60):
            await opened(a, f"t{i}", MAIL_AUD)
        followed: list[int] = []

        async def follow() -> None:
            async for revocation in a.follow(0, audiences=ONLY_MAIL):
                followed.append(revocation.seq)

        async def page_reader() -> list[int]:
            seen, cursor = [], 0
            while len(seen) < 60:
                page = await b.revocations(cursor, 2, audiences=ONLY_MAIL)
                seen += [e.seq for e in page.events]
                cursor = page.next
            return seen

        follower = asyncio.ensure_future(follow())
        reader = asyncio.ensure_future(page_reader())
        ended = await asyncio.gather(*(store.end_tasks([f"t{i}"], state="revoked", reason="x", now=NOW + 1)
                                       for i in range(60) for store in [(a, b)[i % 2]]))
        seqs = sorted(r.seq for r in ended if r is not None)
        assert len(seqs) == 60
        assert await asyncio.wait_for(reader, 10) == seqs
        assert await eventually(lambda: len(followed) >= 60) and followed == seqs
        follower.cancel()


async def test_a_feed_reader_never_passes_an_event_that_commits_after_a_later_one(postgresql_url: str) -> None:
    """A revocation that drew its sequence number and has not committed yet holds FEED_LOCK: the next one
    waits for it, so a reader reading to the head meanwhile sees neither, then both in order."""
    async with replicas(postgresql_url, 1) as (store,):
        await opened(store, "t", MAIL_AUD)
        slow = await psycopg.AsyncConnection.connect(postgresql_url, autocommit=True, row_factory=dict_row)
        try:
            async with slow.transaction():  # another replica's revocation, between its INSERT and its COMMIT
                first = await writes.insert_revocation(slow, writes.Ending("revoked", "slow", NOW, SYSTEM),
                                                       [((MAIL_AUD,), EndedTask("x", "https://idp", "alice", "x"))], [])
                later = asyncio.ensure_future(store.end_tasks(["t"], state="revoked", reason="fast", now=NOW + 1))
                await asyncio.sleep(0.5)
                page = await store.revocations(0, 10, audiences=ONLY_MAIL)
                assert page.events == () and not later.done()  # the later one waits; the reader passes nothing
            second = await asyncio.wait_for(later, 5)
        finally:
            await slow.close()
        assert second is not None and second.seq > first.seq
        told = await store.revocations(page.next, 10, audiences=ONLY_MAIL)
        assert [e.reason for e in told.events] == ["slow", "fast"]


async def test_a_revocation_on_one_replica_wakes_the_others_feed_readers_and_long_polls_at_once(
        postgresql_url: str) -> None:
    async with replicas(postgresql_url) as (a, b):
        await opened(b, "t", MAIL_AUD)
        await b.create_stream(stream("s1"))
        followed = a.follow(0, audiences=ONLY_MAIL)
        pending = asyncio.ensure_future(anext(followed))
        await asyncio.sleep(0.3)  # the follower has looked, found nothing, and waits
        started = time.monotonic()
        await b.end_tasks(["t"], state="revoked", reason="x", now=NOW + 1)
        assert (await asyncio.wait_for(pending, 5)).task_ids == ("t",)
        assert time.monotonic() - started < 1.0  # notified, not found at a poll (every 5 s while listening)
        waiter = asyncio.ensure_future(a.wait_for_events(30))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await b.enqueue_sets("s1", [PendingSet("v", "set-v")])
        await asyncio.wait_for(waiter, 5)
        assert time.monotonic() - started < 1.0
        await followed.aclose()  # type: ignore[attr-defined]


def terminate_listeners(db: psycopg.Connection[tuple[object, ...]], dbname: str) -> int:
    """End the LISTEN sessions of every store instance on `dbname` (as a network cut or a restart would)."""
    rows = db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
                      " AND application_name LIKE '%% listener'", (dbname,)).fetchall()
    return len(rows)


async def test_a_replica_that_loses_its_listen_connection_says_so_until_it_has_caught_up(
        postgresql_server: Server, postgresql_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres_cutoffs, "MAX_AGE_S", 3600.0)  # only the reconnection refreshes a's copy
    dbname = postgresql_url.rsplit("/", 1)[1]
    async with replicas(postgresql_url) as (a, b):
        await opened(b, "t", MAIL_AUD)
        assert a.revocation_sync_problem() is None
        assert await a.cached_cutoffs(None, user=MALLORY, now=NOW) == (None, None)  # its copy, loaded
        followed = a.follow(0, audiences=ONLY_MAIL)
        pending = asyncio.ensure_future(anext(followed))
        with admin(postgresql_server.url) as db:
            db.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')  # it cannot come back yet
            try:
                assert terminate_listeners(db, dbname) == 2
                assert await eventually(lambda: None not in (a.revocation_sync_problem(), b.revocation_sync_problem()))
                problem = a.revocation_sync_problem()
                assert problem is not None and problem.startswith("lost its PostgreSQL LISTEN connection: ")
                assert "\n" not in problem and not a.lead_sweeps() and not b.lead_sweeps()
                await b.end_tasks(["t"], state="revoked", reason="while a was deaf", now=NOW + 1)
                await b.end_matching(Party("user", "mallory"), reason="while a was deaf", now=NOW + 1)
                # deaf, a reads the cutoffs from the tables rather than from its copy (loaded before the cut)
                assert await a.cached_cutoffs(None, user=MALLORY, now=NOW + 2) == (None, NOW + 1)
                await asyncio.sleep(0.5)
                assert a.revocation_sync_problem() is not None
            finally:
                db.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
        assert await eventually(lambda: a.revocation_sync_problem() is None, timeout=15)
        assert (await asyncio.wait_for(pending, 5)).reason == "while a was deaf"  # caught up by its cursor
        # and its copy was loaded again on reconnecting: the cutoff's notification was missed
        assert await a.cached_cutoffs(None, user=MALLORY, now=NOW + 2) == (None, NOW + 1)
        assert await eventually(lambda: a.lead_sweeps() != b.lead_sweeps())  # one of them leads again
        await followed.aclose()  # type: ignore[attr-defined]


MALLORY = ("https://idp", "mallory")


async def copied(store: Store, user: tuple[str, str], expected: int | None, timeout: float = 2.0) -> bool:
    """Whether `store`'s copy of the cutoffs (`cached_cutoffs`) holds `expected` for `user` within `timeout`."""
    deadline = time.monotonic() + timeout
    while (await store.cached_cutoffs(None, user=user, now=NOW))[1] != expected:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_a_cutoff_or_block_recorded_on_one_replica_reaches_the_others_copy_by_its_notification(
        postgresql_url: str) -> None:
    async with replicas(postgresql_url) as (a, b):
        assert await b.cached_cutoffs(None, user=MALLORY, now=NOW) == (None, None)  # b's copy, loaded
        await a.end_matching(Party("user", "mallory"), reason="incident", now=NOW)
        assert await copied(b, MALLORY, NOW)
        await a.add_block(Block("b-1", "user", "eve", None, "incident", NOW, NOW + 60, "admin"), event("block"))
        assert await copied(b, ("https://idp", "eve"), BLOCKED + NOW + 60)
        await a.lift_block("b-1", by="admin", reason=None, now=NOW, event=event("unblock"))
        assert await copied(b, ("https://idp", "eve"), None)


def deaf(store: Store) -> None:
    """`store` no longer hears of changed cutoffs (a notification not yet arrived, or lost)."""
    store._listener._on_cutoffs = lambda payload: None  # type: ignore[attr-defined]


async def test_a_process_s_own_cutoffs_and_blocks_reach_its_copy_without_waiting_for_the_notification(
        postgresql_url: str) -> None:
    async with replicas(postgresql_url, 1) as (a,):
        assert await a.cached_cutoffs(A, user=MALLORY, now=NOW) == (None, None)
        deaf(a)
        await a.end_matching(Party("user", "mallory"), reason="incident", now=NOW)
        assert await a.cached_cutoffs(A, user=MALLORY, now=NOW) == (None, NOW)
        await a.add_block(Block("b-1", "agent", A.id, None, "incident", NOW, NOW + 60, "admin"), event("block"))
        assert await a.cached_cutoffs(A, user=MALLORY, now=NOW) == (BLOCKED + NOW + 60, NOW)
        await a.lift_block("b-1", by="admin", reason=None, now=NOW, event=event("unblock"))
        assert await a.cached_cutoffs(A, user=MALLORY, now=NOW) == (None, NOW)


async def test_a_copy_that_missed_a_change_reads_the_party_again_once_its_entry_is_old(
        postgresql_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres_cutoffs, "MAX_AGE_S", 0.3)
    async with replicas(postgresql_url) as (a, b):
        assert await b.cached_cutoffs(None, user=MALLORY, now=NOW) == (None, None)
        deaf(b)
        await a.end_matching(Party("user", "mallory"), reason="incident", now=NOW)
        assert await b.cached_cutoffs(None, user=MALLORY, now=NOW) == (None, None)  # a moment behind
        await asyncio.sleep(0.4)
        assert await b.cached_cutoffs(None, user=MALLORY, now=NOW) == (None, NOW)


async def test_a_copy_behind_another_replica_s_revocation_only_moves_the_refusal_to_the_write(
        postgresql_url: str) -> None:
    async with replicas(postgresql_url) as (a, b):
        assert await b.cached_cutoffs(A, user=None, now=NOW) == (None, None)
        deaf(b)
        await a.end_matching(Party("agent", A.id), reason="incident", now=NOW + 1)
        assert await b.cached_cutoffs(A, user=None, now=NOW + 1) == (None, None)  # behind: the policy is asked
        with pytest.raises(CredentialRevoked):
            await b.record_task(task("t-behind"), event("open_task", "t-behind"), presented=PRESENTED)
        with pytest.raises(CredentialRevoked):
            await b.record_grant(token("j-behind", "t-implicit"), event(), presented=PRESENTED, task=task("t-implicit"))
        assert await b.task("t-behind") is None and await b.task("t-implicit") is None
        assert await b.token("j-behind") is None


async def test_a_read_of_the_cutoffs_overlapping_a_change_is_used_once_and_not_kept(postgresql_url: str) -> None:
    async with replicas(postgresql_url) as (a, b):
        copy = a._cutoff_copy  # type: ignore[attr-defined]
        read, reads = copy._db.fetch, []

        async def fetch_then_change(*args: object, **kwargs: object) -> object:
            rows = await read(*args, **kwargs)
            reads.append(rows)
            if len(reads) == 1:  # b revokes after a's read, and a hears of it before the read is kept
                await b.end_matching(Party("user", "mallory"), reason="incident", now=NOW)
                copy.notified(postgres_cutoffs.notice("user", "mallory"))
            return rows

        copy._db.fetch = fetch_then_change
        assert await a.cached_cutoffs(None, user=MALLORY, now=NOW) == (None, None)  # what the read saw
        assert await a.cached_cutoffs(None, user=MALLORY, now=NOW) == (None, NOW)  # read again, not kept
        assert len(reads) == 2


async def test_a_read_of_the_cutoffs_that_fails_fails_the_check_and_the_next_check_reads_again(
        postgresql_url: str) -> None:
    async with replicas(postgresql_url, 1) as (a,):
        copy = a._cutoff_copy  # type: ignore[attr-defined]
        read = copy._db.fetch

        async def failing(*args: object, **kwargs: object) -> object:
            raise StoreError("postgresql: connection refused")

        copy._db.fetch = failing
        with pytest.raises(StoreError):
            await a.cached_cutoffs(None, user=MALLORY, now=NOW)
        copy._db.fetch = read
        await a.end_matching(Party("user", "mallory"), reason="incident", now=NOW)
        assert await a.cached_cutoffs(None, user=MALLORY, now=NOW) == (None, NOW)


def test_a_notice_names_its_party_unless_too_long_for_postgresql_then_it_says_every_party() -> None:
    assert postgres_cutoffs.notice("agent", "spiffe://example.org/a:b") == "cutoffs:agent:spiffe://example.org/a:b"
    assert postgres_cutoffs.notice("user", "x" * 8000) == "cutoffs"


class FreezableProxy:
    """TCP on a loopback port to `target`; `frozen` stops forwarding both ways while every socket stays
    open, as a network that drops packets does (a half-open connection)."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        up_reader, up_writer = await asyncio.open_connection(*self._target)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while data := await source.read(65536):
                await self.flowing.wait()
                sink.write(data)
                await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)


async def test_a_listen_connection_that_stops_answering_is_taken_for_lost_and_opened_again(
        postgresql_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres_listen, "CHECK_TIMEOUT_S", 0.5)
    port = int(postgresql_url.split("@127.0.0.1:", 1)[1].split("/", 1)[0])
    proxy = FreezableProxy("127.0.0.1", port)
    async with proxy as proxied, replicas(postgresql_url.replace(f":{port}/", f":{proxied}/"), 1) as (a,):
        assert a.revocation_sync_problem() is None
        proxy.flowing.clear()
        # 0.5 s, then psycopg's own attempt to cancel the check (about 10 s, measured 11.5 s in all)
        assert await eventually(lambda: a.revocation_sync_problem() is not None, timeout=30)
        assert a.revocation_sync_problem() == ("lost its PostgreSQL LISTEN connection: the connection did not"
                                               " answer a check within 0.5 s")
        proxy.flowing.set()
        assert await eventually(lambda: a.revocation_sync_problem() is None, timeout=15)


async def test_a_store_that_never_listened_says_it_is_not_yet_listening() -> None:
    listener = Listener("postgresql://deputy@127.0.0.1:1/deputy?connect_timeout=2", Wakeup(), asyncio.sleep,
                        lambda: None)
    await listener.start(wait=0.2)
    try:
        assert listener.problem is not None and listener.problem.startswith(NOT_YET)
        assert await eventually(lambda: "refused" in (listener.problem or ""))
    finally:
        await listener.close()


async def test_one_replica_of_three_leads_the_sweeps_and_another_takes_over_when_it_loses_its_session(
        postgresql_url: str) -> None:
    async with replicas(postgresql_url, 3) as stores:
        assert await eventually(lambda: sum(s.lead_sweeps() for s in stores) == 1)
        leader = next(s for s in stores if s.lead_sweeps())
        with admin(postgresql_url) as db:
            held = db.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted").fetchall()
            assert len(held) == 1
            db.execute("SELECT pg_terminate_backend(%s)", held[0])
        assert await eventually(lambda: not leader.lead_sweeps())
        assert await eventually(lambda: sum(s.lead_sweeps() for s in stores) == 1)
        await asyncio.sleep(1.5)  # every one not leading has tried again meanwhile
        assert sum(s.lead_sweeps() for s in stores) == 1


async def test_with_postgresql_stopped_calls_fail_fast_and_the_store_recovers_when_it_is_back(
        postgresql_cluster: Cluster) -> None:
    url = postgresql_cluster.database()
    await upgrade(url)
    store = await open_store(url)
    try:
        await opened(store, "before", MAIL_AUD)
        postgresql_cluster.stop()
        for call in (lambda: store.task("before"), lambda: opened(store, "during", MAIL_AUD),
                     lambda: store.end_tasks(["before"], state="revoked", reason="x", now=NOW + 1)):
            started = time.monotonic()
            with pytest.raises(StoreError):
                await call()
            assert time.monotonic() - started < 5  # the connect and checkout timeouts, not a hang
        assert await eventually(lambda: store.revocation_sync_problem() is not None)
        postgresql_cluster.start()

        async def works() -> bool:
            try:
                return await store.task("before") is not None
            except StoreError:
                return False

        deadline = time.monotonic() + 30
        while not await works():
            assert time.monotonic() < deadline, "the store did not recover"
            await asyncio.sleep(0.2)
        await opened(store, "after", MAIL_AUD)
        assert await eventually(lambda: store.revocation_sync_problem() is None, timeout=15)
        assert await store.task("during") is None  # what failed left nothing behind
    finally:
        await store.close()


async def test_a_schema_older_than_the_code_is_refused_in_one_line_naming_the_command(
        postgresql_server: Server) -> None:
    empty = postgresql_server.create(migrated=False)
    try:
        with pytest.raises(StoreError) as refused:
            await open_store(empty)
        assert str(refused.value) == (f"the database schema is at version 0, this Deputy needs {SCHEMA_VERSION}:"
                                      " run `deputy db upgrade`")
    finally:
        postgresql_server.drop(empty)


async def test_a_schema_newer_than_the_code_is_refused_and_not_upgraded(postgresql_url: str) -> None:
    with admin(postgresql_url) as db:
        db.execute("UPDATE deputy_schema SET version = %s", (SCHEMA_VERSION + 1,))
    for attempt in (open_store, upgrade_store):
        with pytest.raises(StoreError) as refused:
            await attempt(postgresql_url)  # type: ignore[operator]
        assert str(refused.value) == (f"the database schema (version {SCHEMA_VERSION + 1}) is newer than this Deputy"
                                      f" (version {SCHEMA_VERSION}): upgrade Deputy")


async def test_upgrade_is_idempotent_and_concurrent_upgrades_migrate_once(postgresql_server: Server) -> None:
    empty = postgresql_server.create(migrated=False)
    try:
        results = await asyncio.gather(*(upgrade(empty) for _ in range(4)))
        assert sorted(results) == [(0, SCHEMA_VERSION)] + [(SCHEMA_VERSION, SCHEMA_VERSION)] * 3
        assert await upgrade_store(empty) == (SCHEMA_VERSION, SCHEMA_VERSION)
        store = await open_store(empty)
        await store.close()
    finally:
        postgresql_server.drop(empty)


def deputy(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "DEPUTY_CONFIG": ""})


def test_deputy_serve_on_an_old_schema_exits_2_with_one_line_and_db_upgrade_fixes_it(
        postgresql_server: Server, tmp_path: Path) -> None:
    empty = postgresql_server.create(migrated=False)
    try:
        kek = tmp_path / "kek"
        kek.write_text("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n")
        kek.chmod(0o600)
        config = tmp_path / "deputy.toml"
        config.write_text(f'[store]\nurl = "{empty}"\n\n[keys]\nencryption_key_file = "{kek}"\n')
        served = deputy("serve", "--config", str(config), "--listen", f"127.0.0.1:{free_port()}")
        assert served.returncode == 2
        assert served.stderr == ("deputy: store.url: the database schema is at version 0, this Deputy needs"
                                 f" {SCHEMA_VERSION}: run `deputy db upgrade`\n")
        first, again = (deputy("db", "upgrade", "--config", str(config)) for _ in range(2))
        assert (first.returncode, first.stdout) == (
            0, f"database schema: upgraded from version 0 to {SCHEMA_VERSION}\n")
        assert (again.returncode, again.stdout) == (0, f"database schema: already at version {SCHEMA_VERSION}\n")
    finally:
        postgresql_server.drop(empty)


def test_deputy_db_upgrade_with_postgresql_unreachable_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "deputy.toml"
    config.write_text('[store]\nurl = "postgresql://deputy@127.0.0.1:1/deputy"\n\n[keys]\n'
                      f'encryption_key_file = "{tmp_path / "kek"}"\n')
    (tmp_path / "kek").write_text("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n")
    (tmp_path / "kek").chmod(0o600)
    done = deputy("db", "upgrade", "--config", str(config))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith("deputy: store.url: postgresql: connection failed:")


async def test_a_unix_socket_with_peer_authentication_needs_no_password(postgresql_cluster: Cluster) -> None:
    user = getpass.getuser()
    postgresql_cluster.database("peer", owner=user)
    url = f"postgresql:///peer?host={postgresql_cluster.socket_dir}&port={postgresql_cluster.port}"  # the OS user
    assert "password" not in url and "@" not in url
    await upgrade(url)
    store = await open_store(url)
    try:
        await opened(store, "t", MAIL_AUD)
        assert (await store.task("t")) is not None and store.revocation_sync_problem() is None
    finally:
        await store.close()
    with admin(postgresql_cluster.url) as db:
        methods = db.execute("SELECT DISTINCT auth_method FROM pg_hba_file_rules WHERE type = 'local'").fetchall()
    assert methods == [("peer",)]



def issue(name: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
          *, ca: bool = False, san: x509.GeneralName | None = None) -> x509.Certificate:
    """A certificate for `name` (self-signed when `issuer` is None), valid for a day."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signer = issuer or (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([san]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def write_pem(path: Path, item: x509.Certificate | ec.EllipticCurvePrivateKey) -> Path:
    if isinstance(item, x509.Certificate):
        path.write_bytes(item.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(item.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    path.chmod(0o600)  # libpq and the server refuse a private key others can read
    return path


async def test_a_tls_client_certificate_needs_no_password(postgresql_cluster: Cluster, tmp_path: Path) -> None:
    """sslmode=verify-full: the client checks the server's certificate and name; the server accepts the
    client by its certificate alone (pg_hba `cert`), its CN being the role."""
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = issue("deputy test CA", ca_key, None, ca=True)
    server = issue("127.0.0.1", server_key, (ca.subject, ca_key), san=x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    client = issue("deputy_tls", client_key, (ca.subject, ca_key))
    files = postgresql_cluster.data
    for name, item in (("server.crt", server), ("server.key", server_key), ("root.crt", ca)):
        write_pem(files / name, item)
        if os.geteuid() == 0:
            shutil.chown(files / name, "postgres", "postgres")
    postgresql_cluster.database("tls", owner="deputy_tls")
    postgresql_cluster.configure(
        "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'root.crt'\n",
        hba_first="hostssl tls deputy_tls 127.0.0.1/32 cert\nhost tls all 127.0.0.1/32 reject\n")
    url = (f"postgresql://deputy_tls@127.0.0.1:{postgresql_cluster.port}/tls?sslmode=verify-full"
           f"&sslrootcert={write_pem(tmp_path / 'root.crt', ca)}&sslcert={write_pem(tmp_path / 'client.crt', client)}"
           f"&sslkey={write_pem(tmp_path / 'client.key', client_key)}")
    await upgrade(url)
    store = await open_store(url)
    try:
        await opened(store, "t", MAIL_AUD)
        assert (await store.task("t")) is not None and store.revocation_sync_problem() is None
    finally:
        await store.close()
    without = url.split("&sslcert=")[0]  # the same URL without the client certificate is refused
    with pytest.raises(StoreError, match="connection requires a valid client certificate"):
        await upgrade(without)
