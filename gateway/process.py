"""`deputy serve` as a child process, for the demo, the benches and the tests: started, awaited, stopped."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2


class GatewayFailed(RuntimeError):
    """The gateway exited or did not answer /healthz in time; the message holds its output."""


@contextlib.contextmanager
def gateway_process(config: Path, url: str, *, workers: int = 1, log: Path | None = None,
                    timeout: float = 30.0, log_level: str = "warning") -> Iterator[subprocess.Popen[bytes]]:
    """Run `deputy serve --config CONFIG --workers N` until the block ends; output goes to `log`
    (default: `gateway.log` beside the config), never to a pipe nobody reads."""
    log = log or config.parent / "gateway.log"
    command = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--workers", str(workers),
               "--log-level", log_level]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise GatewayFailed(f"the gateway exited with {process.returncode}:\n"
                                    f"{log.read_text(errors='replace')}")
            with contextlib.suppress(httpx2.HTTPError):
                if httpx2.get(url + "/healthz", timeout=0.5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise GatewayFailed(f"{url}/healthz did not answer within {timeout:g} s")
            time.sleep(0.05)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
