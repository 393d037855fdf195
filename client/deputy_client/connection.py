"""Talking to the gateway: its RFC 8414 metadata, and POSTs retried only when the failure is transient.

A 503 or a connection error is retried a bounded number of times with exponential backoff and jitter,
honouring a short `Retry-After` (RFC 9110 §10.2.3); any other answer, 4xx above all, is final.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2

from token_exchange.oidc_discovery import is_loopback
from token_exchange.rfc8414 import metadata_url

from .errors import DiscoveryError, GatewayUnavailable, from_response

log = logging.getLogger("deputy_client")

MAX_RETRY_AFTER = 5.0
"""A `Retry-After` longer than this is not waited for: the attempt budget is spent instead."""


@dataclass(frozen=True, slots=True)
class Retries:
    """At most `attempts` tries; the n-th retry waits about `backoff * 2**n` seconds, plus up to 50% jitter."""

    attempts: int = 3
    backoff: float = 0.2

    def delay(self, attempt: int, response: httpx2.Response | None) -> float:
        after = response.headers.get("retry-after", "") if response is not None else ""
        if after.isdigit() and int(after) <= MAX_RETRY_AFTER:
            return float(after)
        base: float = self.backoff * 2**attempt
        return base + random.uniform(0, base / 2)


@dataclass(frozen=True, slots=True)
class Metadata:
    """What the SDK uses of the gateway's RFC 8414 metadata (§2)."""

    issuer: str
    token_endpoint: str

    @classmethod
    def parse(cls, document: Any, expected_issuer: str) -> Metadata:
        """§3.3: the `issuer` must be the one the metadata was fetched for."""
        if not isinstance(document, dict) or document.get("issuer") != expected_issuer:
            raise DiscoveryError(f"the metadata at {metadata_url(expected_issuer)} is not issuer {expected_issuer}'s")
        endpoint = document.get("token_endpoint")
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            raise DiscoveryError("the metadata has no token_endpoint URL")
        return cls(expected_issuer, secure(endpoint, "the metadata's token_endpoint"))

    def endpoint(self, path: str) -> str:
        """An endpoint of the gateway's that the metadata does not list (`/tasks/{id}/complete`)."""
        return self.token_endpoint.rpartition("/token")[0] + path


def secure(url: str, name: str) -> str:
    """`url`, if https (plain http on loopback only): the agent's JWT-SVID and the user's tokens go there."""
    parts = urlsplit(url)
    if parts.scheme != "https" and not (parts.scheme == "http" and is_loopback(parts.hostname)):
        raise DiscoveryError(f"{name} must use https (plain http on loopback only): {url[:100]}")
    return url


class Connection:
    """One agent's HTTP client for the gateway at `issuer` (https, or plain http on loopback)."""

    def __init__(self, issuer: str, http: httpx2.AsyncClient, retries: Retries) -> None:
        self.issuer, self.http, self.retries = secure(issuer.rstrip("/"), "the gateway URL"), http, retries
        self._metadata: Metadata | None = None

    async def metadata(self) -> Metadata:
        """RFC 8414 §3, fetched once per client."""
        if self._metadata is None:
            response = await self.send(lambda: self.http.build_request("GET", metadata_url(self.issuer)))
            self._metadata = Metadata.parse(self.json(response), self.issuer)
        return self._metadata

    async def send(self, build: Callable[[], httpx2.Request]) -> httpx2.Response:
        """Send the request `build` makes (anew for each attempt: a DPoP proof is single-use); an answer that is
        no 503, or GatewayUnavailable once the attempts are spent."""
        response: httpx2.Response | None = None
        cause: Exception | None = None
        for attempt in range(self.retries.attempts):
            if attempt:
                await asyncio.sleep(self.retries.delay(attempt - 1, response))
            try:
                response = await self.http.send(build())
            except httpx2.TransportError as exc:
                log.warning("gateway %s unreachable (attempt %d): %s", self.issuer, attempt + 1, exc)
                response, cause = None, exc
                continue
            if response.status_code != 503:
                return response
            log.warning("gateway %s answered 503 (attempt %d)", self.issuer, attempt + 1)
            cause = None
        raise GatewayUnavailable(f"the gateway stayed unavailable after {self.retries.attempts} attempts") from cause

    @staticmethod
    def json(response: httpx2.Response) -> dict[str, Any]:
        """The JSON object of a 2xx answer; the OAuth error of any other."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_success and isinstance(body, dict):
            return body
        raise from_response(response.status_code, body)
