"""psycopg 3 against asyncpg on the PostgreSQL store's hot path, on this machine.

Four operations, each with the store's own SQL on a throwaway database with the store's schema:
- grant: record_grant under an existing task, as a lone request sends it: a batch of one checked write
  (postgres_batch.py), one statement in its own transaction (`deputy_checks`' shared advisory locks of the
  parties and the task's tree, then its fresh look at the cutoffs and the task, then the INSERTs of the
  token and the audit event if the checks pass);
- one_shot: record_grant of a one-shot exchange (the same, with its implicit task inserted too);
- one_shot_x8: eight of those in one statement, as concurrent requests' writes go (figures per write);
- lookup: the task lookup (`SELECT * FROM tasks WHERE id = ...`).

Both drivers send each as one prepared statement, one round trip: psycopg as the store does
(`prepare=True`), asyncpg with its own statement cache. Both pools hold 2 to 10 connections. Each row runs
`--seconds` with N concurrent callers, drivers alternating, `--rounds` times. CPU is per write (per
operation for the lookup): this process's (the client's), since the gateway's two cores are what the
driver competes for, and the PostgreSQL server's (its processes on this machine, `/proc`).

    pip install -e '.[bench]'                          # asyncpg
    python bench/postgres_driver.py                    # a private cluster (Debian's binaries)
    python bench/postgres_driver.py --url postgresql://postgres@127.0.0.1:54329/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import psycopg
from psycopg.types.json import Jsonb

from delegation.audit import AuditEvent
from delegation.records import IssuedTokenRecord, Presented
from delegation.stores import postgres_writes as writes
from delegation.stores.postgres import PostgresStore
from delegation.stores.postgres_db import PostgresDatabase
from delegation.stores.postgres_rows import written_records
from delegation.stores.postgres_schema import upgrade
from delegation.tasks import Task
from token_exchange.actors import ActorRef
from token_exchange.scope import Scope

NOW = int(time.time())
AGENT = ActorRef("spiffe://example.org/agent", "spiffe", "example.org")
PRESENTED = Presented(AGENT, NOW - 10, ("https://idp.example", "alice"), NOW - 10)
TASK = Task(id="bench-task", parent_id=None, root_id="bench-task", chain=(AGENT,), user_issuer="https://idp.example",
            user_subject="alice", scope=Scope(frozenset({"mail.read"})), audiences=("https://mail",),
            created_at=NOW, deadline=NOW + 86_400)
Op = Callable[[int], Awaitable[None]]


def grant_params(i: int, *, implicit: bool = False, rows: int = 1) -> dict[str, Any]:
    """What record_grant sends: `rows` checked writes under TASK, or (`implicit`) each with a new implicit task;
    alone, waiting for its locks, or as a batch, trying them (postgres_batch.py)."""
    return {"rows": Jsonb([grant_row(f"{i}-{n}", implicit=implicit) for n in range(rows)]), "wait": rows == 1}


def grant_row(i: str, *, implicit: bool) -> dict[str, Any]:
    unique = f"{os.getpid()}-{i}-{time.monotonic_ns()}"
    task = replace(TASK, id=f"task-{unique}", root_id=f"task-{unique}", implicit=True) if implicit else TASK
    token = IssuedTokenRecord(f"jti-{unique}", "https://idp.example", "alice", AGENT.id, "https://mail", "mail.read",
                              NOW, NOW + 300, task.id, AGENT.domain)
    event = AuditEvent(decision_id=token.jti, at=NOW, action="exchange", outcome="granted", agent=AGENT.id,
                       audience="https://mail", granted_scope="mail.read", jti=token.jti, task_id=task.id,
                       reasons=("granted",))
    return writes.checked_row(PRESENTED, under=None if implicit else TASK.id, now=NOW,
                              **written_records(event, token=token, task=task if implicit else None))


def positional(sql: str) -> tuple[str, list[str]]:
    """psycopg's %(name)s placeholders as asyncpg's $n, and the names in their order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    return re.sub(r"%\((\w+)\)s", number, sql), names


class Psycopg:
    def __init__(self, url: str) -> None:
        self.url = url

    async def __aenter__(self) -> Psycopg:
        self.db = PostgresDatabase(self.url)
        await self.db.open()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.db.close()

    async def grant(self, i: int) -> None:
        await self._write(grant_params(i))

    async def one_shot(self, i: int) -> None:
        await self._write(grant_params(i, implicit=True))

    async def one_shot_x8(self, i: int) -> None:
        await self._write(grant_params(i, implicit=True, rows=8))

    async def _write(self, params: dict[str, Any]) -> None:
        rows = await self.db.fetch(writes.WRITES, params, prepare=True)
        assert rows and all(row["fine"] for row in rows)

    async def lookup(self, i: int) -> None:
        assert await self.db.fetchone("SELECT * FROM tasks WHERE id = %s", (TASK.id,), prepare=True) is not None


class Asyncpg:
    def __init__(self, url: str) -> None:
        self.url = url
        self.statement = positional(writes.WRITES)

    async def __aenter__(self) -> Asyncpg:
        self.pool = await asyncpg.create_pool(self.url, min_size=2, max_size=10)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.pool.close()

    async def grant(self, i: int) -> None:
        await self._write(grant_params(i))

    async def one_shot(self, i: int) -> None:
        await self._write(grant_params(i, implicit=True))

    async def one_shot_x8(self, i: int) -> None:
        await self._write(grant_params(i, implicit=True, rows=8))

    async def _write(self, given: dict[str, Any]) -> None:
        sql, names = self.statement
        params = {name: json.dumps(v.obj) if isinstance(v, Jsonb) else v for name, v in given.items()}
        async with self.pool.acquire() as connection:
            rows = await connection.fetch(sql, *(params[n] for n in names))
        assert rows and all(row["fine"] for row in rows)

    async def lookup(self, i: int) -> None:
        async with self.pool.acquire() as connection:
            assert await connection.fetchrow("SELECT * FROM tasks WHERE id = $1", TASK.id) is not None


async def run(op: Op, callers: int, seconds: float, writes_per_op: int = 1) -> dict[str, float]:
    """`callers` calling `op` in a loop for `seconds`: rate and CPU per write, latency per call."""
    latencies: list[float] = []
    stop = time.monotonic() + seconds
    counter = iter(range(10**9))

    async def caller() -> None:
        while time.monotonic() < stop:
            started = time.perf_counter()
            await op(next(counter))
            latencies.append(time.perf_counter() - started)

    cpu, server = resource.getrusage(resource.RUSAGE_SELF), server_cpu_s()
    began = time.monotonic()
    await asyncio.gather(*(caller() for _ in range(callers)))
    elapsed = time.monotonic() - began
    after, server_after = resource.getrusage(resource.RUSAGE_SELF), server_cpu_s()
    used = (after.ru_utime + after.ru_stime) - (cpu.ru_utime + cpu.ru_stime)
    latencies.sort()
    done = len(latencies) * writes_per_op
    return {"ops": done / elapsed, "p50": statistics.median(latencies) * 1000,
            "p99": latencies[int(len(latencies) * 0.99)] * 1000, "cpu_us": used / done * 1e6,
            "server_us": (server_after - server) / done * 1e6}


def server_cpu_s() -> float:
    """CPU seconds used so far by this machine's PostgreSQL processes (the server under test is local)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # a process that ended
        name, fields = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        if name.startswith("postgres"):
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


async def bench(url: str, seconds: float, callers: list[int], rounds: int) -> None:
    store = await PostgresStore.open(url)
    await store.record_task(TASK, AuditEvent(decision_id="open", at=NOW, action="open_task", outcome="granted"),
                            presented=PRESENTED)
    await store.close()
    results: dict[tuple[str, int, str], list[dict[str, float]]] = {}
    for _ in range(rounds):
        for operation, per_op in (("grant", 1), ("one_shot", 1), ("one_shot_x8", 8), ("lookup", 1)):
            for n in callers:
                for name, driver in (("psycopg", Psycopg(url)), ("asyncpg", Asyncpg(url))):
                    async with driver:
                        op = getattr(driver, operation)
                        await run(op, n, min(1.0, seconds))  # warm-up: connections, prepared statements
                        results.setdefault((operation, n, name), []).append(await run(op, n, seconds, per_op))
    print(f"medians of {rounds} rounds of {seconds:g} s; rates and CPU per write (per lookup)\n")
    print(f"{'operation':11} {'callers':>7} {'driver':8} {'ops/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'client µs/op':>13}"
          f" {'server µs/op':>13}")
    for (operation, n, name), rows in results.items():
        m = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        print(f"{operation:11} {n:>7} {name:8} {m['ops']:>7.0f} {m['p50']:>7.2f} {m['p99']:>7.2f} {m['cpu_us']:>13.0f}"
              f" {m['server_us']:>13.0f}")


@contextmanager
def database(server: str | None) -> Iterator[str]:
    """A throwaway database with the store's schema, on `server` or on a private cluster."""
    cluster = None
    if server is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' cluster helper
        from tests.postgres import private_cluster

        cluster = private_cluster()
        server = cluster.url
    name = f"deputy_bench_{os.getpid()}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = server.rsplit("/", 1)[0] + f"/{name}"
    try:
        asyncio.run(upgrade(url))
        yield url
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        if cluster is not None:
            cluster.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a server where the bench may create a database (default: a private one)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--callers", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with database(args.url) as url:
        asyncio.run(bench(url, args.seconds, args.callers, args.rounds))


if __name__ == "__main__":
    main()
