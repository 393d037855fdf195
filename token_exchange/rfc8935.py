"""RFC 8935 push-based SET delivery: one SET POSTed to the receiver's endpoint, and what its answer means.

202 is delivered (§2.2). 400 is the receiver refusing this SET (§2.3, `{"err", "description"}`): sending it
again cannot help. Anything else (another status, a connection error, a timeout) may pass: try again later."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

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

    def __init__(self, client: httpx2.AsyncClient, *, timeout: float) -> None:
        self.client = client
        self.timeout = timeout

    async def __call__(self, url: str, token: str, *, authorization: str | None) -> PushResult:
        return await push(self.client, url, token, authorization=authorization, timeout=self.timeout)


async def push(client: httpx2.AsyncClient, url: str, token: str, *, authorization: str | None,
               timeout: float) -> PushResult:
    """§2.1: `Content-Type: application/secevent+jwt`, `Accept: application/json`, the stream's
    `authorization_header` (SSF §6.1.1) when it has one. Redirects are not followed."""
    headers = {"Content-Type": SET_MEDIA_TYPE, "Accept": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    try:
        async with client.stream("POST", url, content=token.encode(), headers=headers, timeout=timeout,
                                 follow_redirects=False) as answer:
            body = await _head_of(answer)
    except (httpx2.HTTPError, httpx2.InvalidURL) as exc:
        return PushResult("failed", f"{type(exc).__name__}: {exc}"[:200])
    if answer.status_code == 202:
        return PushResult("delivered", "202")
    if answer.status_code == 400:
        return PushResult("refused", _error(body))
    return PushResult("failed", f"HTTP {answer.status_code}")


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
