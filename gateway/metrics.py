"""Prometheus metrics (issue 8 §5): the `Observer` seam counted with prometheus-client, served at `/metrics`
on the management listener `[metrics] listen`, never on the public port.

One process (`--workers 1`) counts in memory and serves its own registry from a thread. With workers,
each worker counts in prometheus-client's multiprocess files (one mmap file per process and metric type)
in a directory the parent makes fresh before they start (`PROMETHEUS_MULTIPROC_DIR`, inherited by the
spawned workers) and removes at exit; the parent serves the files summed (`MultiProcessCollector`) and,
when a worker dies, drops its live gauges (`mark_process_dead`). A dead worker's counters stay in its
file, so sums never go backwards when a worker is replaced.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import socketserver
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, make_wsgi_app
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from delegation.audit import AuditEvent
from delegation.observe import NoObserver, Observer

from .settings import ConfigError
from .workers import address_family

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client reads it when a worker first imports it
PATH = "/metrics"
# An embedded Rego decision takes ≈150 µs, an OPA server a few ms, and its default timeout is 250 ms.
DECISION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_WORD = re.compile(r"[a-z0-9_]{0,40}")  # what a label value may be: never a SPIFFE ID, subject or token
OTHER = "other"
M = TypeVar("M", bound=MetricWrapperBase)


class PrometheusObserver:
    """The `Observer` seam as Prometheus metrics, in `registry` (None: not registered for collection, as in a
    worker, whose values the parent reads from the multiprocess files)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self._exchanges = _children(Counter(
            "deputy_exchanges", "Token requests answered, by flow action, outcome and OAuth error code.",
            ("action", "outcome", "error"), registry=registry))
        self._decisions = _children(Histogram(
            "deputy_policy_decision_seconds", "Time the policy engine took to decide (allow or deny).",
            ("engine",), buckets=DECISION_BUCKETS, registry=registry))
        self._policy_failures = _children(Counter(
            "deputy_policy_failures", "Policy decisions that failed (no usable answer), by engine and cause.",
            ("engine", "cause"), registry=registry))
        self._revoked = _children(Counter(
            "deputy_revoked", "Tasks ended by revocation, completion or expiry, by kind (kind token: access "
            "tokens revoked on their own).", ("kind",), registry=registry))
        self._store_errors = _children(Counter(
            "deputy_store_errors", "Store calls that failed, by operation.", ("operation",), registry=registry))
        self._tasks_open = Gauge("deputy_tasks_open", "Open tasks (implicit ones included), as of the last sweep.",
                                 multiprocess_mode="livemostrecent", registry=registry)

    def decided(self, event: AuditEvent) -> None:
        self._exchanges(event.action, event.outcome, event.error or "").inc()

    def policy_decided(self, engine: str, seconds: float) -> None:
        self._decisions(engine).observe(seconds)

    def policy_failed(self, engine: str, cause: str) -> None:
        self._policy_failures(engine, cause).inc()

    def revoked(self, kind: str, count: int) -> None:
        self._revoked(kind).inc(count)

    def store_failed(self, operation: str) -> None:
        self._store_errors(operation).inc()

    def tasks_open(self, count: int) -> None:
        self._tasks_open.set(count)


def _children(metric: M) -> Callable[..., M]:
    """`metric.labels(*values)`, looked up once per label values (`labels` locks and validates each call);
    a value that is not a short lower-case word is counted as `other`."""

    @functools.lru_cache(maxsize=256)
    def child(*values: str) -> M:
        return metric.labels(*(value if _WORD.fullmatch(value) else OTHER for value in values))

    return child


class MetricsListener:
    """`GET /metrics` on the management listener, served by a thread of its own (prometheus-client's WSGI
    app on a threading HTTP server); any other path is 404. It has no authentication."""

    def __init__(self, listen: tuple[str, int], registry: CollectorRegistry) -> None:
        host, port = listen
        try:
            self._server = _Server(listen, _only_metrics(make_wsgi_app(registry)))
        except OSError as exc:
            raise ConfigError(f"metrics.listen: cannot bind {host}:{port}: {exc.strerror or exc}") from exc
        self._thread = threading.Thread(target=self._server.serve_forever, name="deputy-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def __init__(self, listen: tuple[str, int], app: Callable[..., Iterable[bytes]]) -> None:
        self.address_family = address_family(listen[0])
        super().__init__(listen, _QuietHandler)
        self.set_app(app)

    def server_bind(self) -> None:
        """Bind, without HTTPServer's reverse DNS lookup of the host (`getfqdn`), which may hang start-up."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "deputy-metrics", self.server_address[1]
        self.setup_environ()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _only_metrics(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: metrics are at /metrics\n"]
        return app(environ, start_response)

    return serve


@contextmanager
def in_process(listen: tuple[str, int] | None) -> Iterator[Observer]:
    """One process that serves: its metrics in memory, served by a thread of it on `listen` (None: none)."""
    if listen is None:
        yield NoObserver()
        return
    disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series, as with workers
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry)
    listener = MetricsListener(listen, registry)
    try:
        yield observer
    finally:
        listener.close()


@contextmanager
def for_workers(listen: tuple[str, int] | None) -> Iterator[Callable[[int], None]]:
    """The supervising parent's part: a fresh multiprocess directory for the workers it starts in the
    block, their sum served on `listen` (None: none). Yields what to call with a dead worker's pid."""
    if listen is None:
        yield lambda pid: None
        return
    directory = tempfile.mkdtemp(prefix="deputy-metrics-")
    os.environ[MULTIPROC_DIR] = directory  # before any worker starts: spawned workers inherit it
    try:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        listener = MetricsListener(listen, registry)
        try:
            yield lambda pid: mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
        finally:
            listener.close()
    finally:
        os.environ.pop(MULTIPROC_DIR, None)
        shutil.rmtree(directory, ignore_errors=True)


def worker_observer(listen: tuple[str, int] | None) -> Observer:
    """A worker's metrics: written to the multiprocess directory its parent made and serves."""
    return PrometheusObserver(None) if listen is not None else NoObserver()
