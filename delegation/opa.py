"""The OPA server engine: each decision asked of `POST {opa_url}/v1/data/deputy/decision` (OPA REST Data API).

Through opa-python-client's `AsyncOpaClient` (aiohttp): one client per worker process, opened at start-up
and closed at shutdown, no retries (a retry would multiply the wait), each call bounded by `timeout_ms`
and the calls in flight by a semaphore, so a slow OPA costs at most one timeout and never the event loop.

Whatever goes wrong on the way (OPA unreachable, too slow, answering an error, an undefined decision, a
body that is not a decision) is the gateway's fault, not the client's: `PolicyUnavailable`, which the
token endpoint answers with 503 `temporarily_unavailable`. A policy that answers deny is a decision.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from opa_client import AsyncOpaClient

from .policy import ENTRYPOINT, Decision, PolicyInput, PolicyUnavailable

log = logging.getLogger(__name__)
MAX_IN_FLIGHT = 64  # decisions one worker asks at once; more wait for a slot within the same timeout
_PACKAGE, _RULE = ENTRYPOINT.split("/")
_PROVENANCE = {"provenance": True}  # OPA reports the revision of each bundle it serves


class OpaServer:
    """Decisions from an OPA server. `revision` is the bundle revision OPA last reported (None until then)."""

    engine = "opa"

    def __init__(self, url: str, *, timeout_ms: int, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.url = url
        self.revision: str | None = None
        self._timeout_s = timeout_ms / 1000
        self._slots = asyncio.Semaphore(max_in_flight)
        self._client = opa_client(url, timeout_s=self._timeout_s)
        self._open = False

    async def start(self) -> None:
        await self._client.__aenter__()
        self._open = True

    async def stop(self) -> None:
        if self._open:
            self._open = False
            await self._client.__aexit__(None, None, None)

    async def problem(self) -> str | None:
        """For /readyz: why OPA cannot decide now, or None. OPA must answer `GET /health` and decide a canary
        input (`{"action": "readyz"}`: the packaged policy denies it), so a server without the policy loaded,
        or whose decision path fails, is not ready. The answer names no address (/readyz is public)."""
        if not self._open:
            return "policy engine opa: not started"
        if not await self._client.check_health():
            log.error("policy.unavailable", extra={"engine": self.engine, "cause": "health", "error": self.url})
            return "policy engine opa: GET /health does not answer 200"
        try:
            await self.decide(PolicyInput({"action": "readyz"}))
        except PolicyUnavailable as exc:
            return f"policy engine opa: cannot decide ({exc.cause})"
        return None

    async def decide(self, query: PolicyInput) -> Decision:
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._slots:
                    body = await self._client.query_rule(query.as_json(), _PACKAGE, _RULE, query_params=_PROVENANCE)
        except TimeoutError as exc:
            raise self._unavailable("timeout", f"no answer within {round(self._timeout_s * 1000)} ms") from exc
        except aiohttp.ContentTypeError as exc:  # raised by json() on a 2xx whose media type is not JSON
            raise self._unavailable("malformed", "answered a body that is not application/json") from exc
        except aiohttp.ClientResponseError as exc:
            raise self._unavailable("error", f"answered HTTP {exc.status}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise self._unavailable("unreachable", f"unreachable: {type(exc).__name__}: {exc}"[:300]) from exc
        except (ValueError, RecursionError) as exc:  # not JSON (JSONDecodeError, bad UTF-8), or nested too deep
            raise self._unavailable("malformed", "answered a body that is not a JSON document") from exc
        return self._decision(body)

    def _decision(self, body: Any) -> Decision:
        if not isinstance(body, dict):
            raise self._unavailable("malformed", "answered JSON that is not an object")
        self.revision = _revision(body.get("provenance")) or self.revision
        decision_id = body.get("decision_id") if isinstance(body.get("decision_id"), str) else None
        if "result" not in body:
            raise self._unavailable("undefined", f"data.{_PACKAGE}.{_RULE} is undefined (is the policy loaded?)")
        if problem := Decision.problem(body["result"]):
            raise self._unavailable("malformed", f"answered a decision that is not one: {problem}")
        return Decision.from_document(body["result"], revision=self.revision, decision_id=decision_id)

    def _unavailable(self, cause: str, detail: str) -> PolicyUnavailable:
        log.error("policy.unavailable", extra={"engine": self.engine, "cause": cause, "error": detail})
        return PolicyUnavailable(self.engine, cause, f"OPA at {self.url} {detail}")


def opa_client(url: str, *, timeout_s: float) -> AsyncOpaClient:
    """An AsyncOpaClient for `http[s]://host:port`, without retries; use it inside `async with`."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    return AsyncOpaClient(host=f"[{host}]" if ":" in host else host,
                          port=parts.port or (443 if parts.scheme == "https" else 80),
                          ssl=parts.scheme == "https", retries=0, timeout=timeout_s)


def _revision(provenance: Any) -> str | None:
    """The revisions of the bundles OPA serves (`provenance.bundles.NAME.revision`), one string."""
    bundles = provenance.get("bundles") if isinstance(provenance, dict) else None
    if not isinstance(bundles, dict):
        return None
    revisions = {name: b.get("revision") for name, b in bundles.items() if isinstance(b, dict)}
    found = sorted((name, r) for name, r in revisions.items() if isinstance(r, str) and r)
    if len(found) == 1:
        return found[0][1]
    return ",".join(f"{name}={r}" for name, r in found) or None
