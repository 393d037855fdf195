"""`deputy serve`: uvicorn on a socket bound first; with `--workers N`, N supervised processes, each with its own
SO_REUSEPORT socket on the shared port.

With one listening socket shared by all workers (uvicorn's `workers=`), whichever process wakes first
accepts a burst of keep-alive connections and the others sit idle. With a socket per process the kernel
spreads new connections across them by hash, as nginx's `reuseport` does. The database schema and the keys
are made by the parent before any worker starts, and every worker serves the parent's Settings.

A worker that ends without the parent asking (a signal, a crash, even exit status 0) is started again after
a backoff: 0.5 s doubling to 30 s, back to 0.5 s once a worker has stayed up for a minute. Five deaths within a
minute are a crash loop: the parent stops the others and exits 1, so that its own supervisor sees a failure.
SIGTERM or SIGINT stops every worker and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Scope

from delegation.records import StoreError

from .settings import ConfigError, Settings

log = logging.getLogger(__name__)
BACKLOG = 2048
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 30.0
STABLE_S = 60.0  # a worker that stayed up this long restarts after BACKOFF_FIRST_S again
CRASH_LOOP_DEATHS, CRASH_LOOP_WINDOW_S = 5, 60.0
EXIT_CRASH_LOOP = 1
EXIT_WORKER_START_FAILED = 2
STOP_GRACE_S = 10.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def uvicorn_config(app: ASGIApp, *, log_level: str, **where: Any) -> uvicorn.Config:
    """No access log (the audit trail is the record), X-Forwarded-* not trusted, no Server header."""
    return uvicorn.Config(app, log_level=log_level, access_log=False, proxy_headers=False, server_header=False,
                          **where)


def check_port_free(host: str, port: int) -> None:
    """Fail start-up cleanly if another program (or another Deputy) already listens on the port."""
    with socket.socket(address_family(host), socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: connections of a gateway that just stopped (TIME_WAIT) do not count, a listener does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise _cannot_bind(host, port, exc) from exc


def listening(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A socket bound to host:port and listening; ConfigError naming `listen` when it cannot bind."""
    sock = socket.socket(address_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise _cannot_bind(host, port, exc) from exc
    return sock


def address_family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _cannot_bind(host: str, port: int, exc: OSError) -> ConfigError:
    return ConfigError(f"listen: cannot bind {host}:{port}: {exc.strerror or exc}")


def serve(app: ASGIApp, sock: socket.socket, *, log_level: str, on_ready: Callable[[], None]) -> int:
    """Serve `app` on a listening socket: 0 once stopped by SIGTERM or SIGINT, 1 if the server ended on its own.

    `on_ready` runs once the app has started. The app's lifespan runs here, not in uvicorn (which logs a
    failed start-up as a traceback and exits 3), so a start-up failure raises its own exception."""
    server = uvicorn.Server(uvicorn_config(app, log_level=log_level, lifespan="off"))
    stops: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        # Before uvicorn's handlers are installed (during start-up), and when uvicorn re-raises the signal
        # that stopped it: take it as the request to stop, and never die of it before the lifespan ends.
        stops.append(signum)
        server.should_exit = True

    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
            runner.run(_serve(server, app, sock, on_ready))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0 if stops else 1


async def _serve(server: uvicorn.Server, app: ASGIApp, sock: socket.socket, on_ready: Callable[[], None]) -> None:
    lifespan = _Lifespan(app)
    try:
        await lifespan.startup()
    except (StoreError, OSError) as exc:  # the lifespan opens the store: read it as cli._migrate does
        raise ConfigError(f"store.url: {exc}") from exc
    try:
        on_ready()
        await server.serve(sockets=[sock])
    finally:
        await lifespan.shutdown()


class _Lifespan:
    """An ASGI app's lifespan (ASGI lifespan protocol 2.0), driven by Deputy: start-up, then shutdown."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Future[None] | None = None

    async def startup(self) -> None:
        scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        self._task = asyncio.ensure_future(self._app(scope, self._to_app.get, self._from_app.put))
        await self._phase(self._task, "startup")

    async def shutdown(self) -> None:
        if self._task is not None:
            await self._phase(self._task, "shutdown")
            await self._task

    async def _phase(self, task: asyncio.Future[None], phase: str) -> None:
        await self._to_app.put({"type": f"lifespan.{phase}"})
        reply = asyncio.ensure_future(self._from_app.get())
        either: set[asyncio.Future[Any]] = {task, reply}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if reply.done() and reply.result()["type"] == f"lifespan.{phase}.complete":
            return
        reply.cancel()
        await task  # a failed phase ends the app's lifespan with its exception (Starlette re-raises): raise it
        raise RuntimeError(f"the app's lifespan {phase} failed")


def run(workers: int, *, settings: Settings, log_level: str, on_ready: Callable[[], None],
        on_death: Callable[[int], None] = lambda pid: None) -> int:
    """Start the workers and supervise them: 0 after SIGTERM or SIGINT, 1 after a crash loop.

    `on_ready` runs once, when every worker has started serving; `on_death` with the pid of each worker
    that ended (the metrics drop its live gauges)."""
    return _Supervisor(workers, settings, log_level, on_ready, on_death).run()


@dataclass
class _Slot:
    """One of the N workers: its current process, and when a dead one starts again."""

    index: int
    process: BaseProcess | None = None
    ready: Connection | None = None  # until the process says it serves
    serving: bool = False
    started_at: float = 0.0
    backoff_s: float = 0.0
    restart_at: float | None = None


class _Supervisor:
    def __init__(self, workers: int, settings: Settings, log_level: str, on_ready: Callable[[], None],
                 on_death: Callable[[int], None]) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._slots = [_Slot(i) for i in range(workers)]
        self._settings, self._log_level, self._on_ready, self._on_death = settings, log_level, on_ready, on_death
        self._announced = False
        self._deaths: deque[float] = deque(maxlen=CRASH_LOOP_DEATHS)
        self._stop_signal: int | None = None
        self._wake_r, self._wake_w = os.pipe()  # written by the signal handler: a signal ends the wait
        os.set_blocking(self._wake_w, False)

    def run(self) -> int:
        previous = {signum: signal.signal(signum, self._request_stop) for signum in STOP_SIGNALS}
        try:
            for slot in self._slots:
                self._start(slot)
            exit_code = None
            while self._stop_signal is None and exit_code is None:
                exit_code = self._step()
            return exit_code or 0
        finally:
            self._stop_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _request_stop(self, signum: int, _frame: FrameType | None) -> None:
        self._stop_signal = signum
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\0")

    def _step(self) -> int | None:
        """Wait for a worker to serve or die, a restart to fall due, or a signal; EXIT_CRASH_LOOP to give up."""
        dying = {slot.process.sentinel: slot for slot in self._slots if slot.process is not None}
        readying = {slot.ready: slot for slot in self._slots if slot.ready is not None}
        due = [slot.restart_at for slot in self._slots if slot.restart_at is not None]
        timeout = max(0.0, min(due) - time.monotonic()) if due else None
        events = wait([self._wake_r, *dying, *readying], timeout)
        if self._stop_signal is not None:
            return None
        for event in events:
            if isinstance(event, Connection) and event in readying:
                self._serving(readying[event])
        for event in events:
            if isinstance(event, int) and event in dying and self._died(dying[event]):
                return EXIT_CRASH_LOOP
        for slot in self._slots:
            if slot.restart_at is not None and slot.restart_at <= time.monotonic():
                self._start(slot)
        return None

    def _start(self, slot: _Slot) -> None:
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(target=_worker, args=(self._settings, self._log_level, writer),
                                        name=f"deputy-worker-{slot.index}")
        process.start()
        writer.close()  # the worker holds the only writer: its death reads as end of file
        if slot.restart_at is not None:
            log.warning("workers.restarted", extra={"worker": slot.index, "pid": process.pid,
                                                    "after_s": slot.backoff_s})
        slot.process, slot.ready, slot.started_at, slot.restart_at = process, reader, time.monotonic(), None

    def _serving(self, slot: _Slot) -> None:
        assert slot.ready is not None
        with contextlib.suppress(EOFError):  # it died before serving: its sentinel tells the rest
            slot.ready.recv()
            slot.serving = True
        slot.ready.close()
        slot.ready = None
        if not self._announced and all(s.serving for s in self._slots):
            self._announced = True
            self._on_ready()

    def _died(self, slot: _Slot) -> bool:
        """Log the death and schedule the restart; True when it completes a crash loop."""
        assert slot.process is not None
        process, now = slot.process, time.monotonic()
        process.join()
        if process.pid is not None:
            self._on_death(process.pid)
        uptime_s = now - slot.started_at
        if slot.ready is not None:
            slot.ready.close()
        slot.process, slot.ready, slot.serving = None, None, False
        stable = uptime_s >= STABLE_S or not slot.backoff_s
        slot.backoff_s = BACKOFF_FIRST_S if stable else min(slot.backoff_s * 2, BACKOFF_MAX_S)
        slot.restart_at = now + slot.backoff_s
        self._deaths.append(now)
        crash_loop = len(self._deaths) == CRASH_LOOP_DEATHS and now - self._deaths[0] <= CRASH_LOOP_WINDOW_S
        log.error("workers.died", extra={"worker": slot.index, "pid": process.pid, **_how(process.exitcode),
                                         "uptime_s": round(uptime_s, 1),
                                         "restart_in_s": None if crash_loop else slot.backoff_s})
        if crash_loop:
            log.critical("workers.crash_loop", extra={
                "deaths": CRASH_LOOP_DEATHS, "within_s": CRASH_LOOP_WINDOW_S,
                "reason": f"{CRASH_LOOP_DEATHS} worker deaths within {CRASH_LOOP_WINDOW_S:g} s: stopping"})
        return crash_loop

    def _stop_all(self) -> None:
        """SIGTERM to every worker, SIGKILL to any still there after STOP_GRACE_S."""
        processes = [slot.process for slot in self._slots if slot.process is not None]
        for process in processes:
            process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        for slot in self._slots:
            if slot.ready is not None:
                slot.ready.close()
            slot.process, slot.ready, slot.restart_at = None, None, None


def _how(exitcode: int | None) -> dict[str, Any]:
    """A worker's end for the log: the signal that killed it, or its exit status."""
    if exitcode is not None and exitcode < 0:
        return {"signal": signal.Signals(-exitcode).name}
    return {"exit_code": exitcode}


def _worker(settings: Settings, log_level: str, ready: Connection) -> None:
    """One worker process: the app, its own SO_REUSEPORT socket, and `ready` told once it serves."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent stops us
    from . import logs, metrics
    from .app import build_app
    from .key_ring import KeyStoreError
    from .wiring import prepare

    logs.configure(log_level.upper())
    try:
        app = build_app(prepare(settings), metrics.worker_observer(settings.metrics.listen))
        with listening(settings.host, settings.port, reuse_port=True) as sock:
            exit_code = serve(app, sock, log_level=log_level, on_ready=lambda: ready.send(os.getpid()))
    except (ConfigError, KeyStoreError) as exc:
        log.error("workers.start_failed", extra={"pid": os.getpid(), "reason": str(exc)})
        exit_code = EXIT_WORKER_START_FAILED
    sys.exit(exit_code)
