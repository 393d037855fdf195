"""`deputy serve --workers N` supervises its workers: one killed is replaced while the others serve, workers
that cannot start again end the gateway with status 1 (never 0 after a crash), SIGTERM stops it with 0.
`workers.serve` reports a failed start-up as its own error, never as uvicorn's traceback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fastapi import FastAPI

from delegation.records import StoreError
from gateway import workers
from gateway.process import gateway_process
from gateway.settings import ConfigError
from tests.conftest import MAIL, Setup, make_setup
from tests.support import ACCESS_TOKEN, GRANT, JWT, gateway_log, until

BANNER = "Deputy listening on"


def worker_pids(parent: int) -> set[int]:
    """The parent's worker processes (multiprocessing's resource tracker is a child too, but no worker)."""
    children = " ".join(p.read_text() for p in Path(f"/proc/{parent}/task").glob("*/children")).split()
    pids = set()
    for pid in children:
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.add(int(pid))
        except FileNotFoundError:  # ended meanwhile
            pass
    return pids


def gone(pid: int) -> bool:
    """Ended: reaped, or a zombie (its sockets are closed either way)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def listeners(port: int) -> list[str] | None:
    """`ss` lines of the sockets listening on the port (with their pids when `ss -p` may show them)."""
    try:
        result = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        return None
    return result.stdout.strip().splitlines() if result.returncode == 0 else None


def log_events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def exchange(setup: Setup) -> int:
    """One token exchange over a fresh connection, so that the kernel picks a worker's socket each time."""
    form = {
        "grant_type": GRANT, "subject_token": setup.idp.token("alice", audience=setup.issuer),
        "subject_token_type": ACCESS_TOKEN, "actor_token": setup.domain.svid(audience=setup.issuer),
        "actor_token_type": JWT, "resource": MAIL, "scope": "mail.read",
    }
    with httpx2.Client(base_url=setup.issuer, timeout=10) as client:
        return client.post("/token", data=form).status_code


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    made = make_setup(tmp_path)
    yield made
    made.jwks_server.close()


def test_a_killed_worker_is_replaced_while_the_other_serves(setup: Setup) -> None:
    log = gateway_log(setup.config)
    with gateway_process(setup.config, setup.issuer, workers=2, log=log) as parent:
        until(lambda: BANNER in log.read_text(), what="the banner: every worker serves")
        before = worker_pids(parent.pid)
        assert len(before) == 2
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        until(lambda: gone(victim), what="the killed worker to end")
        statuses = []
        while len(worker_pids(parent.pid) - before) < 1:  # while it is down and restarting, the other serves
            statuses.append(exchange(setup))
        assert parent.poll() is None
        assert statuses and set(statuses) == {200}
        after = worker_pids(parent.pid)
        assert len(after) == 2 and victim not in after
        if listeners(setup.port) is not None:  # a SO_REUSEPORT socket per worker again, the new one's included
            until(lambda: len(listeners(setup.port) or []) == 2, what="two listening sockets")
            shown = " ".join(listeners(setup.port) or [])
            assert "pid=" not in shown or all(f"pid={pid}," in shown for pid in after)
        assert {exchange(setup) for _ in range(20)} == {200}
        events = log_events(log)
        died = [e for e in events if e["event"] == "workers.died"]
        assert [(e["pid"], e["signal"], e["restart_in_s"]) for e in died] == [(victim, "SIGKILL", 0.5)]
        restarted = [e for e in events if e["event"] == "workers.restarted"]
        assert [e["pid"] for e in restarted] == list(after - before)
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=20) == 0
    assert port_is_free(setup.port)
    assert all(gone(pid) for pid in before | after)
    assert "Traceback" not in log.read_text()


def test_workers_that_cannot_start_again_end_the_gateway_with_status_1(setup: Setup) -> None:
    log = gateway_log(setup.config)
    with gateway_process(setup.config, setup.issuer, workers=2, log=log) as parent:
        until(lambda: BANNER in log.read_text(), what="the banner: every worker serves")
        database = setup.directory / "state" / "deputy.db"
        database.rename(database.with_suffix(".moved"))
        database.mkdir()  # no new worker can open the store (the running ones keep theirs open)
        started = worker_pids(parent.pid)
        for pid in started:
            os.kill(pid, signal.SIGKILL)
        assert parent.wait(timeout=60) == 1
    events = log_events(log)
    failures = {e["reason"] for e in events if e["event"] == "workers.start_failed"}
    assert failures == {"store.url: sqlite: unable to open database file"}
    loop = [e for e in events if e["event"] == "workers.crash_loop"]
    assert len(loop) == 1 and loop[0]["level"] == "critical" and "worker deaths within" in loop[0]["reason"]
    assert len([e for e in events if e["event"] == "workers.died"]) == workers.CRASH_LOOP_DEATHS
    assert "Traceback" not in log.read_text()
    assert port_is_free(setup.port)
    assert all(gone(pid) for pid in started | {e["pid"] for e in events if e["event"] == "workers.restarted"})


def failing_lifespan(failure: Exception) -> Callable[[FastAPI], Any]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        raise failure
        yield

    return lifespan


@pytest.mark.parametrize(("failure", "raised", "message"), [
    (StoreError("sqlite: unable to open database file"), ConfigError,
     "store.url: sqlite: unable to open database file"),  # the store, as cli._migrate reports it
    (RuntimeError("a bug"), RuntimeError, "a bug"),  # anything else is a bug: raised as itself
])
def test_a_failed_start_up_raises_its_own_error_before_serving(
    failure: Exception, raised: type[Exception], message: str, capfd: pytest.CaptureFixture[str]
) -> None:
    handlers = {signum: signal.getsignal(signum) for signum in workers.STOP_SIGNALS}
    announced: list[bool] = []
    with workers.listening("127.0.0.1", 0) as sock, pytest.raises(raised) as error:
        workers.serve(FastAPI(lifespan=failing_lifespan(failure)), sock, log_level="warning",
                      on_ready=lambda: announced.append(True))
    assert str(error.value) == message
    assert announced == []
    assert capfd.readouterr().err == ""  # uvicorn logged no traceback, nor "Application startup failed"
    assert {signum: signal.getsignal(signum) for signum in workers.STOP_SIGNALS} == handlers
