"""`deputy demo` runs the whole story from a fresh install (issue 3: a test runs the demo)."""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx2

from gateway.process import serving
from tests.support import deputy_command, free_port


def test_deputy_demo_runs_the_whole_story() -> None:
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "demo"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "DEMO ONLY" in out
    assert "GET /inbox     200" in out  # the sub-agent reads within its task
    assert "400 invalid_scope" in out  # widening refused
    assert "POST /send     403" in out  # a mail.read token cannot send
    assert "GET /inbox     401" in out  # rejected after the task completed
    assert "the task has ended" in out
    assert out.rstrip().splitlines()[-1].startswith("Done in")


def test_serve_dev_prints_commands_that_work(tmp_path: Path) -> None:
    """`deputy serve --dev`, then the printed `deputy dev ...` commands and exchange, as the README says."""
    port = free_port()
    log, url = tmp_path / "serve.log", f"http://127.0.0.1:{port}"
    with serving(["--dev", "--listen", f"127.0.0.1:{port}"], url, log=log, cwd=tmp_path):
        def dev(*args: str) -> str:
            result = subprocess.run(deputy_command("dev", *args), cwd=tmp_path, capture_output=True, text=True,
                                    timeout=60)
            assert result.returncode == 0, result.stderr
            return result.stdout.strip()

        banner = log.read_text()
        assert "DEMO ONLY" in banner and "deputy dev user-token alice" in banner
        response = exchange_as_printed(url, dev)
        assert response.status_code == 200, response.text


def test_issue7_14_deputy_dev_finds_the_dev_gateway_from_any_directory(tmp_path: Path) -> None:
    """`deputy dev user-token|svid` work from another directory than the one `serve --dev` runs in."""
    port, served, elsewhere = free_port(), tmp_path / "served", tmp_path / "elsewhere"
    served.mkdir()
    elsewhere.mkdir()
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    url = f"http://127.0.0.1:{port}"
    with serving(["--dev", "--listen", f"127.0.0.1:{port}"], url, log=tmp_path / "serve.log", cwd=served, env=env):
        def dev(*args: str) -> str:
            result = subprocess.run(deputy_command("dev", *args), cwd=elsewhere, env=env, capture_output=True,
                                    text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            return result.stdout.strip()

        response = exchange_as_printed(url, dev)
        assert response.status_code == 200, response.text
        assert not (elsewhere / ".deputy-dev").exists()
    missing = subprocess.run(deputy_command("dev", "user-token", "alice"), cwd=elsewhere, capture_output=True,
                             text=True, timeout=60, env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "none")})
    assert missing.returncode == 2 and "serve --dev" in missing.stderr


def exchange_as_printed(url: str, dev: Callable[..., str]) -> httpx2.Response:
    """The exchange the dev banner prints, with tokens from `deputy dev`."""
    return httpx2.post(url + "/token", data={
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": dev("user-token", "alice"),
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "actor_token": dev("svid", "spiffe://demo.test/agent/mail"),
        "actor_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "resource": "https://mail.demo.test", "scope": "mail.read"})
