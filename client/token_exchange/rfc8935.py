"""RFC 8935 push-based SET delivery: one SET POSTed to the receiver's endpoint, and what its answer means.

202 is delivered (§2.2). 400 is the receiver refusing this SET (§2.3, `{"err", "description"}`): sending it
again cannot help. Anything else (another status, a connection error, a timeout) may pass: try again later.

A push is bounded as a whole (`timeout` covers connecting, sending and the answer: a receiver that trickles
its answer cannot hold the transmitter), and goes only to public addresses unless private ones are allowed:
the host is resolved first and every address it resolves to must be global, so a stream's `endpoint_url`
cannot make the transmitter POST into its own network (link-local metadata services, RFC 1918 hosts,
loopback). The check and the connection resolve separately: DNS rebinding between them is not covered."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import httpx2

from .ssf import SET_MEDIA_TYPE

MAX_ANSWER_BYTES = 4096
Outcome = Literal["delivered", "refused", "failed"]


@dataclass(frozen=True, slots=True)
class PushResult:
    outcome: Outcome
    detail: str  # the receiver's err and description, the HTTP status, or the transport error


class Pusher:
    """`push` with one client and timeout, as the transmitter's delivery calls it."""

    def __init__(self, client: httpx2.AsyncClient, *, timeout: float, private: bool = False) -> None:
        self.client = client
        self.timeout = timeout
        self.private = private

    async def __call__(self, url: str, token: str, *, authorization: str | None) -> PushResult:
        return await push(self.client, url, token, authorization=authorization, timeout=self.timeout,
                          private=self.private)


async def push(client: httpx2.AsyncClient, url: str, token: str, *, authorization: str | None,
               timeout: float, private: bool = False) -> PushResult:
    """§2.1: `Content-Type: application/secevent+jwt`, `Accept: application/json`, the stream's
    `authorization_header` (SSF §6.1.1) when it has one. Redirects are not followed; `private` allows
    addresses that are not global (development, or receivers inside the network by configuration)."""
    headers = {"Content-Type": SET_MEDIA_TYPE, "Accept": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    try:
        async with asyncio.timeout(timeout):
            if not private and (problem := await _not_public(url)):
                return PushResult("failed", problem)
            return await _post(client, url, token.encode(), headers)
    except TimeoutError:
        return PushResult("failed", f"no complete answer within {timeout:g} s")
    except (httpx2.HTTPError, httpx2.InvalidURL) as exc:
        return PushResult("failed", f"{type(exc).__name__}: {exc}"[:200])


async def _post(client: httpx2.AsyncClient, url: str, body: bytes, headers: dict[str, str]) -> PushResult:
    async with client.stream("POST", url, content=body, headers=headers, follow_redirects=False) as answer:
        if answer.status_code == 202:  # delivered: whatever else the receiver sends is not read
            return PushResult("delivered", "202")
        if answer.status_code == 400:
            return PushResult("refused", _error(await _head_of(answer)))
        return PushResult("failed", f"HTTP {answer.status_code}")


async def _not_public(url: str) -> str | None:
    """Why `url`'s host is not to be pushed to (it resolves to an address that is not global), or None."""
    host = urlsplit(url).hostname or ""
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"cannot resolve {host[:100]}: {exc.strerror or exc}"
    for *_, sockaddr in found:
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not address.is_global:
            return f"{host[:100]} resolves to {address}, not a public address ([ssf] push_to_private_addresses)"
    return None


async def _head_of(answer: httpx2.Response) -> bytes:
    """At most MAX_ANSWER_BYTES of the answer: a receiver cannot make the transmitter read without end."""
    body = bytearray()
    async for chunk in answer.aiter_bytes():
        body += chunk
        if len(body) >= MAX_ANSWER_BYTES:
            break
    return bytes(body[:MAX_ANSWER_BYTES])


def _error(body: bytes) -> str:
    """§2.3: `err` (§2.4 codes) and `description`, as far as the body holds them."""
    try:
        error = json.loads(body)
    except (ValueError, RecursionError):
        return "HTTP 400 without an error object"
    if not isinstance(error, dict):
        return "HTTP 400 without an error object"
    return f"{str(error.get('err', ''))[:64]}: {str(error.get('description', ''))[:200]}"
