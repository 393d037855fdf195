"""`deputy serve` as a child process, for the demo, the benches and the tests: started, awaited, stopped."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx2


class GatewayFailed(RuntimeError):
    """The gateway exited or did not answer /healthz in time; the message holds its output."""


@contextlib.contextmanager
def gateway_process(config: Path, url: str, *, workers: int = 1, log: Path | None = None,
                    timeout: float = 30.0, log_level: str = "warning") -> Iterator[subprocess.Popen[bytes]]:
    """Run `deputy serve --config CONFIG --workers N` until the block ends; output goes to `log`
    (default: `gateway.log` beside the config), never to a pipe nobody reads."""
    arguments = ["--config", str(config), "--workers", str(workers), "--log-level", log_level]
    with serving(arguments, url, log=log or config.parent / "gateway.log", timeout=timeout) as process:
        yield process


@contextlib.contextmanager
def serving(arguments: list[str], url: str, *, log: Path, cwd: Path | None = None,
            env: Mapping[str, str] | None = None, timeout: float = 30.0) -> Iterator[subprocess.Popen[bytes]]:
    """Run `deputy serve ARGUMENTS` (in `cwd`, with `env`) until `url`/healthz answers, then until the
    block ends; output goes to `log`. Raises GatewayFailed if it exits or stays silent."""
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", *arguments], cwd=cwd,
                                   stdout=out, stderr=subprocess.STDOUT,
                                   env={**(env if env is not None else os.environ), "PYTHONUNBUFFERED": "1"})
    try:
        _wait_healthy(process, url, log, timeout)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_healthy(process: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise GatewayFailed(f"the gateway exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(httpx2.HTTPError):
            if httpx2.get(url + "/healthz", timeout=0.5).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise GatewayFailed(f"{url}/healthz did not answer within {timeout:g} s")
        time.sleep(0.05)
