"""`deputy serve --workers N`: N processes, each with its own SO_REUSEPORT socket on the shared port.

With one listening socket shared by all workers (uvicorn's `workers=`), whichever process wakes first
accepts a burst of keep-alive connections and the others sit idle. With a socket per process the kernel
spreads new connections across them by hash, as nginx's `reuseport` does. Keys and the database schema
are made by the parent before any worker starts.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Sequence
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from .settings import ConfigError

BACKLOG = 2048


def uvicorn_config(app: ASGIApp, *, log_level: str, **where: Any) -> uvicorn.Config:
    """No access log (the audit trail is the record), X-Forwarded-* not trusted, no Server header."""
    return uvicorn.Config(app, log_level=log_level, access_log=False, proxy_headers=False, server_header=False,
                          **where)


def check_port_free(host: str, port: int) -> None:
    """Fail start-up cleanly if another program (or another Deputy) already listens on the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: connections of a gateway that just stopped (TIME_WAIT) do not count, a listener does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"listen: cannot bind {host}:{port}: {exc.strerror or exc}") from exc


def run(workers: int, *, config: Path | None, host: str, port: int, log_level: str) -> int:
    """Start the workers and wait; a signal or one worker's exit stops them all."""
    check_port_free(host, port)
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker, args=(config, host, port, log_level), name=f"deputy-worker-{i}")
        for i in range(workers)
    ]
    for process in processes:
        process.start()

    def stop(signum: int, _frame: object) -> None:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    exit_code = _wait_first(processes)
    stop(signal.SIGTERM, None)
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
    return exit_code


def _wait_first(processes: Sequence[BaseProcess]) -> int:
    """Block until one worker exits; its exit code becomes the gateway's."""
    by_sentinel = {process.sentinel: process for process in processes}
    ready = wait(list(by_sentinel))
    first = ready[0]
    return int(by_sentinel[first].exitcode or 0) if isinstance(first, int) else 1


def _worker(config: Path | None, host: str, port: int, log_level: str) -> None:
    from . import keystore, logs
    from .app import build_app
    from .settings import load_settings
    from .wiring import prepare

    logs.configure(log_level.upper())
    settings = load_settings(config)
    app = build_app(prepare(settings), keystore.load(settings.state_dir))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    server = uvicorn.Server(uvicorn_config(app, log_level=log_level))
    server.run(sockets=[sock])
    sys.exit(0)
