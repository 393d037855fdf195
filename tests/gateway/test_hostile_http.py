"""Found by a fuzz sweep: a client that closes the connection mid-body is refused, never a server error
with a traceback in the log; a path with a trailing slash is not an endpoint (no redirect built from the
client's Host header)."""

from __future__ import annotations

import socket
import time

import pytest

from tests.conftest import Deployment


def send_and_close(url: str, raw: bytes) -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        connection.sendall(raw)
    time.sleep(0.2)  # let the gateway notice the closed connection


@pytest.mark.parametrize("raw", [
    b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    b"Content-Length: 100\r\n\r\na=b",
    b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
], ids=["closed_mid_body", "broken_chunks"])
def test_a_body_cut_short_is_a_refusal_not_a_server_error(deployment: Deployment, raw: bytes) -> None:
    send_and_close(deployment.url, raw)
    assert deployment.client.get("/healthz").status_code == 200
    log = deployment.log()
    assert "server_error" not in log and "Traceback" not in log, log[-2000:]


@pytest.mark.parametrize(("method", "path"), [("POST", "/token/"), ("GET", "/admin/tasks/"),
                                              ("POST", "/tasks/x/complete/")])
def test_a_trailing_slash_is_no_endpoint_and_no_redirect(deployment: Deployment, method: str, path: str) -> None:
    response = deployment.client.request(method, path, headers={"Host": "evil.example"})
    assert response.status_code in (404, 405) and "location" not in response.headers
    assert response.json()["error"] in ("not_found", "invalid_request")
