"""Several `deputy serve` replicas of one deployment sharing one PostgreSQL database and one key-encryption
key, each on its own loopback port with the same issuer, as behind a load balancer (issue 9)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx2

from tests.conftest import MAIL_AGENT, POLICY_DATA, Setup, make_setup, store_config
from tests.support import free_port, until

DOCS = "https://docs.example.com"
RS_DOCS = "spiffe://example.org/rs/docs"
HELPER = "spiffe://example.org/agents/helper"
RESOURCES = f"""
[[resources]]
audience = "{DOCS}"
scopes = ["docs.read"]
max_ttl = 300
clients = ["{RS_DOCS}"]
"""


def policy_data() -> str:
    data = json.loads(json.dumps(POLICY_DATA))
    access = next(iter(data.values()))
    access["grants"][MAIL_AGENT][DOCS] = ["docs.read"]
    access["grants"][HELPER] = {DOCS: ["docs.read"]}
    access.setdefault("subagents", {})[MAIL_AGENT] = [HELPER]
    return json.dumps(data)


ADMIN = "spiffe://example.org/ops/admin"


def replica_setup(directory: Path, store_url: str) -> Setup:
    """A deployment whose store is `store_url` and whose keys live in it, sealed with a fresh KEK."""
    extra = store_config(directory, store_url) + RESOURCES + f'\n[admin]\nspiffe_ids = ["{ADMIN}"]\n'
    return make_setup(directory, extra=extra, policy_files={"data.json": policy_data()})


def deputy(*arguments: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *arguments], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


@dataclass
class Replica:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    client: httpx2.Client

    def kill(self) -> None:
        """`kill -9` of the replica and its workers (its own process group)."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def ready(self) -> httpx2.Response:
        return self.client.get("/readyz")


@contextmanager
def started(setup: Setup, name: str, port: int, *, workers: int = 1) -> Iterator[Replica]:
    """`deputy serve --listen 127.0.0.1:PORT` in a process group of its own, until /readyz answers 200."""
    log = setup.directory / f"replica-{name}.log"
    url = f"http://127.0.0.1:{port}"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(setup.config), "--listen",
             f"127.0.0.1:{port}", "--workers", str(workers), "--log-level", "info"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    client = httpx2.Client(base_url=url, timeout=10)
    replica = Replica(name, url, process, log, client)
    try:
        until(lambda: _ready(replica), what=f"replica {name} ready", log=log)
        yield replica
    finally:
        client.close()
        if process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                replica.kill()


@contextmanager
def replicas(setup: Setup, count: int = 2) -> Iterator[list[Replica]]:
    """`count` replicas; the first listens on the setup's own port (its issuer), the others on free ports."""
    upgraded = deputy("db", "upgrade", "--config", str(setup.config))
    assert upgraded.returncode == 0, upgraded.stderr
    with ExitStack() as stack:
        ports = [setup.port] + [free_port() for _ in range(count - 1)]
        yield [stack.enter_context(started(setup, chr(ord("a") + i), port)) for i, port in enumerate(ports)]


def _ready(replica: Replica) -> bool:
    if replica.process.poll() is not None:
        raise AssertionError(f"replica {replica.name} exited:\n{replica.log.read_text(errors='replace')}")
    with suppress(httpx2.HTTPError):
        return replica.client.get("/readyz").status_code == 200
    return False
