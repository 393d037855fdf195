"""`deputy serve`: several workers sharing the port, the store and the keys; embedded defaults; a busy port."""

from __future__ import annotations

import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import pytest

from tests.conftest import make_setup
from tests.support import deputy_command, gateway_process


def test_workers_share_port_store_and_keys(tmp_path: Path) -> None:
    setup = make_setup(tmp_path)
    try:
        with gateway_process(setup.config, workers=2) as url:
            def exchange(_: int) -> tuple[int, str]:
                # a fresh connection each time, so the kernel spreads them over both workers' sockets
                with httpx2.Client(base_url=url, timeout=10) as client:
                    form = {
                        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                        "subject_token": setup.idp.token("alice", audience=setup.issuer),
                        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
                        "actor_token": setup.domain.svid("/agents/mail", audience=setup.issuer),
                        "actor_token_type": "urn:ietf:params:oauth:token-type:jwt",
                        "resource": "https://mail.example.com", "scope": "mail.read",
                    }
                    response = client.post("/token", data=form)
                    kid = httpx2.get(url + "/.well-known/jwks.json").json()["keys"][0]["kid"]
                    return response.status_code, kid

            with ThreadPoolExecutor(8) as pool:
                results = list(pool.map(exchange, range(40)))
            assert {status for status, _ in results} == {200}
            assert len({kid for _, kid in results}) == 1  # one key, made before the workers started
            listeners = subprocess.run(["ss", "-Hltn", f"sport = :{setup.port}"], capture_output=True, text=True)
            if listeners.returncode == 0:
                assert len(listeners.stdout.strip().splitlines()) == 2  # a SO_REUSEPORT socket per worker
        time.sleep(0.5)
        with socket.socket() as probe:  # every worker stopped with the parent
            assert probe.connect_ex(("127.0.0.1", setup.port)) != 0
    finally:
        setup.jwks_server.close()


def test_a_busy_port_stops_start_up_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "deputy.toml").write_text(f'listen = "127.0.0.1:{port}"\n')
        for workers in ("1", "2"):
            result = subprocess.run(deputy_command("serve", "--config", str(tmp_path / "deputy.toml"),
                                                   "--workers", workers),
                                    capture_output=True, text=True, timeout=60, cwd=tmp_path)
            assert result.returncode == 2, result.stderr
            assert result.stderr.strip().splitlines() == [result.stderr.strip()]
            assert "listen: cannot bind" in result.stderr and "Traceback" not in result.stderr


def test_embedded_defaults_start_with_state_in_the_working_directory(tmp_path: Path) -> None:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8600)) == 0:
            pytest.skip("127.0.0.1:8600 is in use on this machine")
    process = subprocess.Popen(deputy_command("serve"), cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx2.get("http://127.0.0.1:8600/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        metadata = httpx2.get("http://127.0.0.1:8600/.well-known/oauth-authorization-server").json()
        assert metadata["issuer"] == "http://127.0.0.1:8600"
        keys = list((tmp_path / ".deputy" / "keys").glob("*.pem"))
        assert len(keys) == 1 and keys[0].stat().st_mode & 0o777 == 0o600
        assert (tmp_path / ".deputy" / "deputy.db").stat().st_mode & 0o777 == 0o600
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    assert "every exchange is refused" in output
