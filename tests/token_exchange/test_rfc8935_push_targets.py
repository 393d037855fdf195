"""RFC 8935 push targets: the transmitter POSTs only to public addresses unless private ones are allowed
(a stream's `endpoint_url` must not reach into the transmitter's own network), and a push is bounded as a
whole. Against a real receiver on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
import pytest

from token_exchange.rfc8935 import push


class Accepting(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Accepting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/events"
    server.shutdown()


async def test_rfc8935_2_a_loopback_receiver_is_pushed_to_only_where_private_addresses_are_allowed(
        receiver: str) -> None:
    async with httpx2.AsyncClient() as client:
        allowed = await push(client, receiver, "a.b.c", authorization=None, timeout=5, private=True)
        refused = await push(client, receiver, "a.b.c", authorization=None, timeout=5)
    assert allowed.outcome == "delivered"
    assert (refused.outcome, refused.detail) == (
        "failed", "127.0.0.1 resolves to 127.0.0.1, not a public address ([ssf] push_to_private_addresses)")


@pytest.mark.parametrize("url", [
    "https://169.254.169.254/latest/meta-data/",  # a cloud metadata service
    "https://10.0.0.1:8443/internal",
    "https://[::ffff:127.0.0.1]/x",  # loopback, written as an IPv4-mapped IPv6 address
    "https://[fd00::1]/x",
    "http://localhost:8181/v1/data/deputy",
])
async def test_rfc8935_2_no_push_goes_to_an_address_inside_the_network(url: str) -> None:
    async with httpx2.AsyncClient() as client:
        result = await push(client, url, "a.b.c", authorization="Bearer chosen-by-the-receiver", timeout=5)
    assert result.outcome == "failed" and "not a public address" in result.detail, result
