"""`deputy serve`: several workers sharing the port, the store and the keys; embedded defaults; a busy port;
`--listen`; the banner only once the port serves; a second `serve --dev` that touches nothing."""

from __future__ import annotations

import queue
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import pytest

from gateway.settings import load_settings
from tests.conftest import make_setup
from tests.support import deputy_command, free_port, gateway_process


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
        assert len(keys) == 2 and all(key.stat().st_mode & 0o777 == 0o600 for key in keys)  # token and event keys
        assert (tmp_path / ".deputy" / "deputy.db").stat().st_mode & 0o777 == 0o600
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    assert "every exchange is refused" in output


def _first_line(process: subprocess.Popen[str], timeout: float = 30.0) -> str:
    """The first line the process prints (read on a thread, so that a silent process fails the test)."""
    lines: queue.Queue[str] = queue.Queue()
    stdout = process.stdout
    assert stdout is not None
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"nothing printed within {timeout:g} s") from None


def _stopped_cleanly(process: subprocess.Popen[str]) -> str:
    """SIGTERM, then status 0 and no traceback; returns the rest of the output."""
    process.terminate()
    output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output
    assert "Traceback" not in output, output
    return output


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_listen_without_a_config_is_announced_once_the_port_serves(tmp_path: Path, workers: int) -> None:
    port = free_port()
    process = subprocess.Popen(deputy_command("serve", "--listen", f"127.0.0.1:{port}", "--workers", str(workers)),
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = _first_line(process)
        assert banner.startswith(f"Deputy listening on http://127.0.0.1:{port} ({workers} worker")
        # no retry: once the banner is out, the port serves (every worker's, with --workers)
        assert httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        listeners = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True)
        if listeners.returncode == 0:
            assert len(listeners.stdout.strip().splitlines()) == workers
        metadata = httpx2.get(f"http://127.0.0.1:{port}/.well-known/oauth-authorization-server", timeout=5).json()
        assert metadata["issuer"] == f"http://127.0.0.1:{port}"  # the default issuer follows --listen
    finally:
        if process.poll() is None:
            _stopped_cleanly(process)


def test_serve_listen_overrides_the_config_listen(tmp_path: Path) -> None:
    port, configured = free_port(), free_port()
    (tmp_path / "deputy.toml").write_text(f'listen = "127.0.0.1:{configured}"\nstate_dir = "state"\n')
    process = subprocess.Popen(deputy_command("serve", "--config", str(tmp_path / "deputy.toml"),
                                              "--listen", f"127.0.0.1:{port}"),
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert _first_line(process).startswith(f"Deputy listening on http://127.0.0.1:{port} ")
        metadata = httpx2.get(f"http://127.0.0.1:{port}/.well-known/oauth-authorization-server", timeout=5).json()
        assert metadata["issuer"] == f"http://127.0.0.1:{port}"
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", configured)) != 0
    finally:
        if process.poll() is None:
            _stopped_cleanly(process)


@pytest.mark.parametrize(("config", "issuer"), [
    ("", "http://127.0.0.1:9001"),  # no issuer set: it follows --listen, and so do the subject audiences
    ('issuer = "https://deputy.example.com"\n', "https://deputy.example.com"),  # set: it stays
])
def test_listen_override_applies_before_the_issuer_is_derived(tmp_path: Path, config: str, issuer: str) -> None:
    (tmp_path / "deputy.toml").write_text(f'listen = "127.0.0.1:9000"\n{config}'
                                          '[[subject_issuers]]\nissuer = "https://idp.example.com"\n'
                                          'jwks_file = "idp.jwks.json"\n')
    settings = load_settings(tmp_path / "deputy.toml", listen="127.0.0.1:9001")
    assert (settings.host, settings.port, settings.issuer) == ("127.0.0.1", 9001, issuer)
    assert settings.subject_issuers[0].audience == issuer


def test_a_bad_listen_option_stops_start_up_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(deputy_command("serve", "--listen", "nowhere"), capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (2, "deputy: listen: must be host:port, e.g. 127.0.0.1:8600\n")
    assert not (tmp_path / ".deputy").exists()  # nothing made


def test_a_second_serve_dev_on_a_taken_port_leaves_the_running_demo_alone(tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    url = f"http://{listen}"

    def demo_files() -> dict[Path, tuple[bytes, int]]:  # the demo keys, JWKS, config and the gateway's keys
        return {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in (tmp_path / ".deputy-dev").rglob("*")
                if path.is_file() and not path.name.startswith("deputy.db")}

    def dev(*args: str) -> str:
        result = subprocess.run(deputy_command("dev", *args), cwd=tmp_path, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    with open(tmp_path / "serve.log", "wb") as out:
        first = subprocess.Popen(deputy_command("serve", "--dev", "--listen", listen), cwd=tmp_path, stdout=out,
                                 stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while b"Deputy listening on" not in (tmp_path / "serve.log").read_bytes():
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.05)
        user_token, svid = dev("user-token", "alice"), dev("svid", "spiffe://demo.test/agent/mail")
        before = demo_files()
        assert tmp_path / ".deputy-dev" / "idp.pem" in before
        for workers in ("1", "2"):
            second = subprocess.run(deputy_command("serve", "--dev", "--listen", listen, "--workers", workers),
                                    cwd=tmp_path, capture_output=True, text=True, timeout=60)
            assert second.returncode == 2, second.stderr
            assert second.stderr.startswith(f"deputy: listen: cannot bind {listen}: ")
            assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
        assert demo_files() == before
        response = httpx2.post(url + "/token", timeout=10, data={
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": user_token, "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "actor_token": svid, "actor_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "resource": "https://mail.demo.test", "scope": "mail.read"})
        assert response.status_code == 200, response.text
    finally:
        first.terminate()
        first.wait(timeout=20)


def test_issue11_4_a_gateway_serving_the_console_refuses_several_workers_with_one_line(tmp_path: Path) -> None:
    """Console sessions live in the serving process: with workers, a logout could land on a worker that does
    not hold the session and leave it live on the other, so start-up stops instead (fail closed)."""
    result = subprocess.run(deputy_command("serve", "--dev", "--listen", f"127.0.0.1:{free_port()}", "--workers", "2"),
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("deputy: --workers: the web console ([console]) keeps its sessions")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
