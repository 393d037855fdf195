"""How the PostgreSQL store talks to its server: a psycopg 3 connection pool over a libpq URL.

The URL goes to libpq as it is (every libpq option: Unix sockets with peer authentication, TLS client
certificates, service and password files); Deputy only adds `connect_timeout` and `application_name` when
the URL does not set them. Connecting and checking a connection out of the pool each give up after about
two seconds, so with PostgreSQL down a request fails fast; every driver error becomes `StoreError`. A
connection found broken is dropped by the pool. The pool's own reconnection backs off exponentially (a
minute-long outage would leave it waiting a minute more), so its attempts give up after two seconds and
the next caller starts a new one: the store recovers within seconds of the server's return, without
being reopened.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from ..records import StoreError

T = TypeVar("T")
Connection = psycopg.AsyncConnection[DictRow]
Params = Sequence[Any] | Mapping[str, Any]

CHECKOUT_TIMEOUT_S = 2.0
RECONNECT_TIMEOUT_S = 2.0  # a pool slot that cannot reconnect gives up this soon; the next caller tries anew
POOL_MIN, POOL_MAX = 2, 10  # a gateway worker's concurrent store calls; config-free
DEFAULTS = {"connect_timeout": "2", "application_name": "deputy"}  # libpq: connect_timeout is 2 s at least
# Each pooled session: a write waits at most 5 s for a lock (then fails closed, 503, rather than hang), and
# a replica that stops mid-transaction (frozen, cut off) holds its locks at most 30 s.
SESSION = "SET lock_timeout = '5s'; SET idle_in_transaction_session_timeout = '30s'"


def conninfo(url: str) -> str:
    """The libpq connection string for `url`, with Deputy's defaults where the URL sets none."""
    try:
        given = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise StoreError(f"not a valid PostgreSQL URL: {first_line(exc)}") from exc
    return make_conninfo(url, **{key: value for key, value in DEFAULTS.items() if key not in given})


def first_line(exc: BaseException) -> str:
    """A driver error in one line (psycopg's messages go on with DETAIL and HINT lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def store_error(exc: psycopg.Error) -> StoreError:
    return StoreError(f"postgresql: {first_line(exc)}")


async def _configure(connection: Connection) -> None:
    await connection.execute(SESSION)


class PostgresDatabase:
    """The pool of one store instance. Open with `await open()`; close with `await close()`."""

    def __init__(self, url: str) -> None:
        self.conninfo = conninfo(url)
        self._pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            self.conninfo, connection_class=Connection, kwargs={"autocommit": True, "row_factory": dict_row},
            configure=_configure, min_size=POOL_MIN, max_size=POOL_MAX, timeout=CHECKOUT_TIMEOUT_S,
            reconnect_timeout=RECONNECT_TIMEOUT_S, open=False, name="deputy")

    async def open(self) -> None:
        try:
            await self._pool.open(wait=True, timeout=CHECKOUT_TIMEOUT_S * 2)
        except psycopg.Error as exc:
            await self._pool.close()
            raise store_error(exc) from exc

    async def close(self) -> None:
        await self._pool.close()

    async def check(self) -> None:
        """Test the idle connections now and replace the broken ones (after the server came back)."""
        await self._pool.check()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled connection (autocommit: each statement its own transaction unless in `transaction`)."""
        try:
            async with self._pool.connection() as connection:
                yield connection
        except psycopg.Error as exc:
            raise store_error(exc) from exc

    async def fetch(self, query: str, params: Params = (), *, prepare: bool | None = None) -> list[DictRow]:
        async with self.connection() as connection:
            return await (await connection.execute(query, params, prepare=prepare)).fetchall()

    async def fetchone(self, query: str, params: Params = (), *, prepare: bool | None = None) -> DictRow | None:
        async with self.connection() as connection:
            return await (await connection.execute(query, params, prepare=prepare)).fetchone()

    async def transaction(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """`work(connection)` in one READ COMMITTED transaction: committed if it returns, else rolled back."""
        async with self.connection() as connection, connection.transaction():
            return await work(connection)
