"""What the key-source tests share: a fake monotonic clock, a loopback document server, an httpx2 client."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator

import httpx2
import pytest

from tests.support import JwksServer

T0 = 1000.0
TLS = ssl.create_default_context()  # made once: each client would otherwise load the CA store again


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def server() -> Iterator[JwksServer]:
    running = JwksServer()
    yield running
    running.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=5.0, follow_redirects=False, verify=TLS) as http:
        yield http
