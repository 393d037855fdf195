"""A test OPA: OPA's REST API (v1.x) on loopback, evaluated by a real Rego engine (regopy, rego-cpp).

The `opa` binary cannot be installed from this project's package sources, so Deputy's OPA-engine tests
and `bench/policy.py` run against this server. It follows `../shared/reference/opa-rest-api.md` (cited
as "item N") and OPA's server source (`v1/server/server.go`) for status codes, bodies and messages.

    running_opa(bundle=..., decision_logs=True)   # in process: uvicorn in a thread, a free port
    python -m tests.opa_server --addr 127.0.0.1:8181 [--bundle FILE] [--no-decision-logs]

To run the same tests against a real OPA, start one and name it; `opa_for_tests()` then yields its URL
(an `ExternalOpa`: no fault switches, and a `bundle` must be given to `opa run` instead):

    opa run -s --addr 127.0.0.1:8181 [-b bundle.tar.gz]
    DEPUTY_TEST_OPA_URL=http://127.0.0.1:8181 python -m pytest tests/...

The store and its regopy evaluation live in `tests/opa_store.py`, bundle reading in `tests/opa_bundles.py`,
OPA v1's parse checks that rego-cpp does not make in `tests/rego_v1.py`.

Known differences from OPA, where regopy gives no better: at `PUT /v1/policies` the checks are OPA v1's rule
body keywords, rego-cpp's parser and rule/data path conflicts, so an undefined function or an unsafe variable
is reported only when a query reaches it (500, not 400); policies carry no `ast`; evaluation errors carry no
`location`; `metrics`, `explain`, `instrument` and `pretty` are ignored; the Query, Compile, Config, Status
and v0 APIs, signed and delta bundles are not served.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import re
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.parse import unquote
from urllib.request import urlopen

import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.opa_bundles import read_bundle
from tests.opa_store import MISSING, VERSION, BundleError, LoadedBundle, OpaError, PolicyStore, bad_request

__all__ = ["BundleError", "ExternalOpa", "LoadedBundle", "OpaError", "OpaServer", "PolicyStore", "RunningOpa",
           "main", "opa_for_tests", "read_bundle", "running_opa"]

INPUT_MISSING = {"code": "api_usage_warning", "message": "'input' key missing from the request"}
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_INTEGER = re.compile(r"[+-]?\d+")


# ---- the HTTP API --------------------------------------------------------------------------------------


class OpaServer:
    """The state behind the API: the store, decision logging, and the fault switches tests flip.

    Faults apply to decisions only (`/v1/data` reads): `delay_s` answers after sleeping, `fail_with`
    answers with that status and an OPA error body, `garbage` answers 200 with a body that is not JSON.
    """

    def __init__(self, *, decision_logs: bool = True) -> None:
        self.store = PolicyStore()
        self.decision_logs = decision_logs
        self.decision_log: deque[dict[str, Any]] = deque(maxlen=10_000)  # item 24's fields, one per decision
        self.delay_s = 0.0
        self.fail_with: int | None = None
        self.garbage = False
        self.url = ""

    def app(self) -> Starlette:
        routes = [Route("/health", self._health, methods=METHODS),
                  Route("/v1/data", self._data, methods=METHODS),
                  Route("/v1/data/{path:path}", self._data, methods=METHODS),
                  Route("/v1/policies", self._policies, methods=METHODS),
                  Route("/v1/policies/{path:path}", self._policy, methods=METHODS)]
        return Starlette(routes=routes)

    async def _health(self, request: Request) -> Response:
        """Item 15: 200 `{}` (bundles are activated before the server listens)."""
        return JSONResponse({}) if request.method == "GET" else _not_allowed()

    async def _data(self, request: Request) -> Response:
        try:
            if request.method in ("GET", "POST"):
                return await self._decide(request)
            if request.method == "PUT":
                value = _json_body(await request.body(), "")
                written = self.store.put_data(_storage_path(request, "/v1/data"), value,
                                              if_none_match=request.headers.get("if-none-match") == "*")
                return Response(status_code=204 if written else 304)
            if request.method == "PATCH":
                self.store.patch_data(_storage_path(request, "/v1/data"), _json_body(await request.body(), ""))
                return Response(status_code=204)
            if request.method == "DELETE":
                self.store.delete_data(_storage_path(request, "/v1/data"))
                return Response(status_code=204)
            return _not_allowed()
        except OpaError as exc:
            return _error(exc)

    async def _decide(self, request: Request) -> Response:
        """Items 1-7: `data.<path>`; `result` left out when undefined; `decision_id` when logging."""
        path = ref_path(_after(request, "/v1/data"))
        document = await _request_input(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_with is not None:
            return _error(OpaError(self.fail_with, "internal_error", "injected failure (test OPA fault)"))
        if self.garbage:
            return Response(b"<html>this is not JSON", media_type="application/json")
        defined, value = self.store.evaluate(path, document, strict=bool_param(request, "strict-builtin-errors"))
        body: dict[str, Any] = {"result": value} if defined else {}
        if request.method == "POST" and document is MISSING:
            body["warning"] = INPUT_MISSING
        if bool_param(request, "provenance"):
            body["provenance"] = self.store.provenance()
        if self.decision_logs:
            body["decision_id"] = self._log(request, path, document, body)
        return JSONResponse(body)

    def _log(self, request: Request, path: tuple[str | int, ...], document: Any, body: Mapping[str, Any]) -> str:
        """Item 24: one decision-log event per decision; the decision id goes back to the caller."""
        event: dict[str, Any] = {"decision_id": str(uuid.uuid4()), "path": "/".join(map(str, path)),
                                 "bundles": self.store.revisions(), "labels": {"version": VERSION},
                                 "requested_by": request.client.host if request.client else "",
                                 "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if document is not MISSING:
            event["input"] = document
        if "result" in body:
            event["result"] = body["result"]
        self.decision_log.append(event)
        decision_id: str = event["decision_id"]
        return decision_id

    async def _policies(self, request: Request) -> Response:
        return JSONResponse({"result": self.store.policies()}) if request.method == "GET" else _not_allowed()

    async def _policy(self, request: Request) -> Response:
        """Items 8-10: PUT (text/plain Rego) → 200 `{}`, GET → `{"result": {"id", "raw"}}`, DELETE."""
        policy_id = unquote(_after(request, "/v1/policies").lstrip("/"))
        try:
            if request.method == "PUT":
                self.store.put_policy(policy_id, _text_body(await request.body()))
                return JSONResponse({})
            if request.method == "GET":
                return JSONResponse({"result": self.store.policy(policy_id)})
            if request.method == "DELETE":
                self.store.delete_policy(policy_id)
                return JSONResponse({})
            return _not_allowed()
        except OpaError as exc:
            return _error(exc)


def _error(exc: OpaError) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status)


def _not_allowed() -> Response:
    """Item 6: an unsupported method is 405 (OPA answers it with an empty body)."""
    return Response(status_code=405)


def _after(request: Request, prefix: str) -> str:
    """The still-escaped path after prefix, so `%2F` stays inside its segment."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    return raw.decode("latin-1").split("?", 1)[0][len(prefix):]


def ref_path(raw: str) -> tuple[str | int, ...]:
    """Item 6: the URL path as a ref under `data`; segments that parse as integers index arrays."""
    path: list[str | int] = []
    for segment in raw.split("/"):
        if not segment:
            continue
        text = unquote(segment)
        if '"' in text:  # OPA: makeRego's error, which writer.ErrorAuto turns into a 500
            raise OpaError(500, "internal_error", f"invalid_parameter: invalid path: invalid ref term '{text}'")
        path.append(int(text) if _INTEGER.fullmatch(text) else text)
    return tuple(path)


def _storage_path(request: Request, prefix: str) -> tuple[str, ...]:
    return tuple(unquote(segment) for segment in _after(request, prefix).split("/") if segment)


def bool_param(request: Request, name: str) -> bool:
    """Item 4 (OPA's getBoolParam): present without a value is true; else any value equal to `true`,
    ignoring case."""
    values = request.query_params.getlist(name)
    if not values:
        return False
    return values == [""] or any(value.lower() == "true" for value in values)


async def _request_input(request: Request) -> Any:
    """The input document (OPA's readInputPostV1 / readInputGetV1), or MISSING. 400 when malformed."""
    if request.method == "GET":
        values = request.query_params.getlist("input")
        return _json_body(values[-1].encode(), "parameter contains malformed input document: ") if values \
            else MISSING
    body = await request.body()
    if "gzip" in request.headers.get("content-encoding", ""):
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError) as exc:
            raise bad_request(f"could not decompress the body: {exc}") from exc
    if not body.strip():
        return MISSING
    if "yaml" in request.headers.get("content-type", ""):
        document = _yaml_body(body)
    else:
        document = _json_body(body, "body contains malformed input document: ")
    if not isinstance(document, dict):
        raise bad_request(f"body contains malformed input document: json: cannot unmarshal {_kind(document)} "
                          "into Go value of type types.DataRequestV1")
    return MISSING if document.get("input") is None else document["input"]  # `"input": null` is no input


def _json_body(body: bytes, prefix: str) -> Any:
    """One JSON value, as Go's json.Decoder reads it (trailing bytes are not looked at)."""
    try:
        value, _ = json.JSONDecoder().raw_decode(body.decode().lstrip())
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"{prefix}{exc if body.strip() else 'EOF'}") from exc
    return value


def _yaml_body(body: bytes) -> Any:
    try:
        return yaml.safe_load(body)
    except yaml.YAMLError as exc:
        raise bad_request(f"body contains malformed input document: {exc}") from exc


def _text_body(body: bytes) -> str:
    try:
        return body.decode()
    except UnicodeDecodeError as exc:
        raise bad_request(str(exc)) from exc


def _kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "bool", type(None): "null"}.get(type(value), "number")


# ---- runners -------------------------------------------------------------------------------------------


class RunningOpa(OpaServer):
    """The test OPA serving on a loopback port from a thread with its own event loop. `stop()` is OPA
    "down"; `start()` again serves the same store on the same port."""

    def __init__(self, *, decision_logs: bool = True) -> None:
        super().__init__(decision_logs=decision_logs)
        self._uvicorn: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        sock = _loopback_socket("127.0.0.1", int(self.url.rsplit(":", 1)[1]) if self.url else 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = _config(self.app())
        self._uvicorn = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._uvicorn.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name="test-opa")
        self._thread.start()
        _wait_until_healthy(self.url, self._thread)

    def stop(self) -> None:
        if self._uvicorn is not None and self._thread is not None:
            self._uvicorn.should_exit = True
            self._thread.join(timeout=10)
            self._uvicorn = None


@dataclass(frozen=True, slots=True)
class ExternalOpa:
    """A real OPA named by DEPUTY_TEST_OPA_URL: only its URL, no fault switches."""

    url: str


@contextmanager
def running_opa(*, bundle: Path | None = None, decision_logs: bool = True) -> Iterator[RunningOpa]:
    """The test OPA on a free loopback port until the block ends, serving `bundle` like `opa run -s -b`."""
    server = RunningOpa(decision_logs=decision_logs)
    if bundle is not None:
        server.store.activate(read_bundle(bundle, str(bundle)))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def opa_for_tests(*, bundle: Path | None = None, decision_logs: bool = True) -> Iterator[RunningOpa | ExternalOpa]:
    """The real OPA at DEPUTY_TEST_OPA_URL when it is set (started by hand, with any bundle given to
    `opa run -b`), else the test OPA from `running_opa`."""
    external = os.environ.get("DEPUTY_TEST_OPA_URL")
    if external:
        yield ExternalOpa(external.rstrip("/"))
        return
    with running_opa(bundle=bundle, decision_logs=decision_logs) as server:
        yield server


def _config(app: Starlette) -> uvicorn.Config:
    """Quiet, no lifespan; shutdown waits at most 1 s for requests in flight (a `delay_s` fault)."""
    return uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=1)


def _loopback_socket(host: str, port: int) -> socket.socket:
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"the test OPA listens on loopback only, not {host}")
    family = socket.AF_INET6 if host == "::1" else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _wait_until_healthy(url: str, thread: threading.Thread, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise RuntimeError("the test OPA stopped while starting")
        try:
            with urlopen(f"{url}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except (URLError, OSError):
            time.sleep(0.02)
    raise RuntimeError(f"the test OPA did not answer {url}/health within {timeout}s")


class _AnnouncingServer(uvicorn.Server):
    """Prints the URL once listening; uvicorn handles SIGTERM and SIGINT in the main thread."""

    def __init__(self, config: uvicorn.Config, url: str) -> None:
        super().__init__(config)
        self._url = url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            print(self._url, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tests.opa_server --addr 127.0.0.1:8181 [--bundle FILE] [--no-decision-logs]`."""
    parser = argparse.ArgumentParser(prog="python -m tests.opa_server", description=__doc__.split("\n")[0])
    parser.add_argument("--addr", default="127.0.0.1:8181", help="loopback HOST:PORT (port 0: any free port)")
    parser.add_argument("--bundle", action="append", default=[], help="a bundle tarball, as `opa run -b FILE`")
    parser.add_argument("--no-decision-logs", action="store_true", help="answer without decision_id")
    args = parser.parse_args(argv)
    host, _, port = args.addr.rpartition(":")
    server = OpaServer(decision_logs=not args.no_decision_logs)
    try:
        for file in args.bundle:
            server.store.activate(read_bundle(Path(file), file))
        sock = _loopback_socket(host.strip("[]") or "127.0.0.1", int(port))
    except (BundleError, ValueError, OSError) as exc:
        parser.exit(1, f"error: {exc}\n")
    shown = f"[{sock.getsockname()[0]}]" if sock.family == socket.AF_INET6 else sock.getsockname()[0]
    server.url = f"http://{shown}:{sock.getsockname()[1]}"
    config = _config(server.app())
    for signum in (signal.SIGTERM, signal.SIGINT):  # uvicorn re-raises the signal it stopped on: end with 0
        signal.signal(signum, lambda *_: None)
    _AnnouncingServer(config, server.url).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
