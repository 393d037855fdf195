"""A throwaway PostgreSQL for the tests: the server named by `DEPUTY_TEST_POSTGRESQL` (a libpq URL of a server
where the tests may create databases; CI's, see .ci/postgres), else a private cluster started from Debian's
binaries for the session. Each test gets a fresh database, copied from a template that already holds the
migrated schema. Fault tests get a cluster of their own that they may stop and start.

Without PostgreSQL binaries the PostgreSQL tests are skipped with the reason, or fail when
`DEPUTY_REQUIRE_POSTGRESQL=1` (CI).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from delegation.stores.postgres_schema import upgrade
from tests.support import free_port

_names = itertools.count()


def _bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin that has initdb (Debian's layout)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return found[-1].parent if found else None


def _unavailable(reason: str) -> None:
    if os.environ.get("DEPUTY_REQUIRE_POSTGRESQL") == "1":
        pytest.fail(f"DEPUTY_REQUIRE_POSTGRESQL=1 but {reason}")
    pytest.skip(reason)


class Cluster:
    """A private cluster in a temporary directory: TCP on 127.0.0.1 (trust), a Unix socket in its own
    directory (peer authentication), no fsync. Run as the `postgres` OS user when we are root (initdb
    refuses root)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.base = Path(tempfile.mkdtemp(prefix="deputy-pg-"))
        self.data, self.socket_dir = self.base / "data", self.base / "socket"
        self.port = free_port()
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for path in (self.base, self.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8",
                  "--locale=C")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.socket_dir}'\nfsync = off\n"
                       "full_page_writes = off\nmax_connections = 300\n")
        (self.data / "pg_hba.conf").write_text("local all all peer\nhost all all 127.0.0.1/32 trust\n")

    @property
    def url(self) -> str:
        """The superuser's URL over TCP, to its `postgres` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.base / "log"), "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def database(self, name: str = "deputy", *, owner: str = "postgres") -> str:
        """A new, empty database (owned by `owner`, a role made if need be); its TCP URL."""
        with psycopg.connect(self.url, autocommit=True) as admin:
            if owner != "postgres":
                admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(owner)))
            admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(owner)))
        return f"postgresql://{owner}@127.0.0.1:{self.port}/{name}"

    def configure(self, settings: str, *, hba_first: str = "") -> None:
        """Append `settings` to postgresql.conf, put `hba_first` before the pg_hba.conf rules, and restart."""
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(settings)
        hba = self.data / "pg_hba.conf"
        hba.write_text(hba_first + hba.read_text())
        self.stop()
        self.start()

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.base)


class Server:
    """A server where tests make databases: fresh copies of a migrated template, or empty ones."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.template = f"deputy_template_{os.getpid()}"
        self._execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.template)))
        self._execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.template)))
        with ThreadPoolExecutor(1) as thread:  # first asked for by an async fixture, maybe: a loop of its own
            thread.submit(asyncio.run, upgrade(self.database_url(self.template))).result()

    def database_url(self, name: str) -> str:
        return _with_dbname(self.url, name)

    def create(self, *, migrated: bool = True) -> str:
        """A new database (with the schema when `migrated`); its URL."""
        name = f"deputy_test_{os.getpid()}_{next(_names)}"
        template = sql.SQL(" TEMPLATE {}").format(sql.Identifier(self.template)) if migrated else sql.SQL("")
        self._execute(sql.SQL("CREATE DATABASE {}{}").format(sql.Identifier(name), template))
        return self.database_url(name)

    def drop(self, url: str) -> None:
        name = conninfo_to_dict(url)["dbname"]
        self._execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name))))

    def close(self) -> None:
        self._execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.template)))

    def _execute(self, statement: sql.Composable) -> None:
        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(statement)


def _with_dbname(url: str, name: str) -> str:
    """The libpq URI `url` with its database path replaced by `name` (query parameters kept)."""
    head, _, query = url.partition("?")
    scheme, _, rest = head.partition("://")
    authority = rest.partition("/")[0]
    return f"{scheme}://{authority}/{name}" + (f"?{query}" if query else "")


def private_cluster() -> Cluster:
    bindir = _bindir()
    if bindir is None:
        _unavailable("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    assert bindir is not None
    cluster = Cluster(bindir)
    cluster.start()
    return cluster


@pytest.fixture(scope="session")
def postgresql_server() -> Iterator[Server]:
    """The server every PostgreSQL test makes its databases on."""
    cluster = None
    url = os.environ.get("DEPUTY_TEST_POSTGRESQL")
    if not url:
        cluster = private_cluster()
        url = cluster.url
    server = Server(url)
    yield server
    server.close()
    if cluster is not None:
        cluster.remove()


@pytest.fixture
def postgresql_url(postgresql_server: Server) -> Iterator[str]:
    """A fresh database with the current schema, dropped after the test."""
    url = postgresql_server.create()
    yield url
    postgresql_server.drop(url)


@pytest.fixture
def postgresql_cluster() -> Iterator[Cluster]:
    """A cluster of the test's own, which it may stop and start (fault tests)."""
    cluster = private_cluster()
    yield cluster
    cluster.remove()
