"""How long the sweep holds SQLite's write lock, and what grants wait meanwhile (issue 7 item 9).

Fills a store file with N ended root tasks past retention, each with an expired token, and N open tasks
past their deadline; then runs one `expire_and_purge` (the sweep) while grants are committed every
millisecond, and reports the sweep's duration and the grants' commit latency (p50, p99, max). Before
the sweep was batched, a store of millions of rows held the lock for seconds and a grant waiting more
than 5 s failed with 503.

    python bench/sweep.py                  # 100,000 tasks of each kind
    python bench/sweep.py --tasks 500000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from delegation.audit import AuditEvent
from delegation.records import IssuedTokenRecord, Presented
from delegation.store import Store
from delegation.stores import open_store
from delegation.stores.sqlite import _TASK_COLUMNS as TASK_COLUMNS
from delegation.tasks import Task
from token_exchange.actors import ActorRef
from token_exchange.scope import Scope
from token_exchange.txn_tokens import TaskContext

AGENT = ActorRef("spiffe://example.org/agents/mail", "spiffe", "example.org")
NOW = 1_800_000_000


def fill(path: Path, count: int) -> None:
    """`count` ended tasks (ended long ago) with an expired token each, and `count` overdue open tasks."""
    with sqlite3.connect(path) as db:
        chain = json.dumps([{"id": AGENT.id, "kind": AGENT.kind, "domain": AGENT.domain}])
        rows = [(f"{state}-{i}", None, f"{state}-{i}", chain, AGENT.id, AGENT.domain, "https://idp", f"u{i}",
                 "mail.read", '["https://mail"]', None, "{}", NOW - 10**6, NOW - 10**6 + 300 if state == "ended"
                 else NOW - 10, 1, "completed" if state == "ended" else "open",
                 NOW - 10**6 if state == "ended" else None) for state in ("ended", "open") for i in range(count)]
        db.executemany(f"INSERT INTO tasks ({', '.join(TASK_COLUMNS)}) VALUES ({', '.join('?' * 17)})", rows)
        db.executemany("INSERT INTO issued_tokens VALUES (?, 'https://idp', ?, ?, 'https://mail', 'mail.read',"
                       " ?, ?, ?, ?, ?)", [(f"j{i}", f"u{i}", AGENT.id, NOW - 10**6, NOW - 10**6 + 300,
                                            f"ended-{i}", NOW - 10**6, AGENT.domain) for i in range(count)])


async def grants(store: Store, stop: asyncio.Event, latencies: list[float]) -> None:
    i = 0
    while not stop.is_set():
        task = Task.new_root(agent=AGENT, user_issuer="https://idp", user_subject=f"g{i}",
                             scope=Scope(frozenset({"mail.read"})), audiences=("https://mail",), context=TaskContext(),
                             created_at=NOW, deadline=NOW + 300, implicit=True)
        token = IssuedTokenRecord(f"g{i}", "https://idp", f"g{i}", AGENT.id, "https://mail", "mail.read", NOW,
                                  NOW + 300, task.id, AGENT.domain)
        event = AuditEvent(decision_id=f"g{i}", at=NOW, action="exchange", outcome="granted", task_id=task.id)
        started = time.perf_counter()
        await store.record_grant(token, event, presented=Presented(AGENT, NOW), task=task)
        latencies.append((time.perf_counter() - started) * 1000)
        i += 1
        await asyncio.sleep(0.001)


async def run(count: int) -> None:
    with tempfile.TemporaryDirectory(prefix="deputy-sweep-") as directory:
        path = Path(directory) / "deputy.db"
        await (await open_store(f"sqlite:///{path}")).close()  # the schema
        fill(path, count)
        store = await open_store(f"sqlite:///{path}")
        stop, latencies = asyncio.Event(), list[float]()
        granting = asyncio.create_task(grants(store, stop, latencies))
        started = time.perf_counter()
        expired, purged = await store.expire_and_purge(now=NOW, retention=86400)
        took = time.perf_counter() - started
        stop.set()
        await granting
        await store.close()
    ordered = sorted(latencies)
    print(f"sweep of {count:,} overdue and {count:,} ended tasks (+{count:,} tokens): {took:.1f} s, "
          f"expired {expired:,}, purged {purged:,}")
    print(f"{len(ordered):,} grants meanwhile: commit p50 {statistics.median(ordered):.2f} ms, "
          f"p99 {ordered[int(len(ordered) * 0.99)]:.2f} ms, max {ordered[-1]:.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    asyncio.run(run(parser.parse_args().tasks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
