"""Following Deputy's revocation feed: `/revocations` paged, `/revocations/stream` as Server-Sent Events.

The state is confirmed as of the moment a page that reached the end was asked for; the verifier refuses
every token once that is older than its staleness bound (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx2

log = logging.getLogger(__name__)

FEED_PAGE = 500
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.05, 5.0
STREAM_READ_TIMEOUT_S = 60.0  # the gateway sends a keep-alive comment every 15 s of quiet


@dataclass(frozen=True, slots=True)
class Cutoff:
    """One party whose tokens issued at or before a time are refused (the time is the value it maps to in
    `RevocationState.cutoffs`): an agent (`value` its id, `issuer` its workload issuer, None for a SPIFFE ID),
    a SPIFFE trust domain, a workload issuer (`agent_issuer`), or a user (`user`: the token's `sub`)."""

    kind: Literal["agent", "trust_domain", "agent_issuer", "user"]
    value: str
    issuer: str | None = None


class RevocationState:
    """Revoked jtis, task ids and party cutoffs learned from the feed or SSF, the feed cursor reached, and
    when the state was last confirmed complete."""

    def __init__(self) -> None:
        self.cursor = 0
        self.jtis: set[str] = set()
        self.task_ids: set[str] = set()
        self.cutoffs: dict[Cutoff, float] = {}
        self.confirmed_at = float("-inf")  # monotonic time at which the feed was known complete
        self.updated = asyncio.Event()  # set (and replaced) whenever events are applied

    def apply(self, events: Iterable[Any]) -> int:
        """Record feed events (`{"seq", "task_ids", "jtis", ...}`); returns how many were new."""
        applied = 0
        for event in events:
            if not isinstance(event, dict) or type(seq := event.get("seq")) is not int:
                raise ValueError("feed event without an integer seq")
            self.jtis.update(v for v in event.get("jtis") or () if isinstance(v, str))
            self.task_ids.update(v for v in event.get("task_ids") or () if isinstance(v, str))
            if seq > self.cursor:
                self.cursor = seq
                applied += 1
        if applied:
            self._notify()
        return applied

    def revoke(self, *, jtis: Iterable[str] = (), task_ids: Iterable[str] = (),
               cutoffs: Mapping[Cutoff, float] | None = None) -> None:
        """Record revocations that arrive one by one (SSF SETs), and wake whoever waits on `updated`."""
        self.jtis.update(jtis)
        self.task_ids.update(task_ids)
        for cutoff, at in (cutoffs or {}).items():
            self.cutoffs[cutoff] = max(at, self.cutoffs.get(cutoff, at))
        self._notify()

    def _notify(self) -> None:
        self.updated.set()
        self.updated = asyncio.Event()

    def confirm(self, at: float) -> None:
        self.confirmed_at = max(self.confirmed_at, at)

    def unconfirm(self) -> None:
        """The source can no longer vouch for the state (an SSF stream paused, disabled or gone): stale now."""
        self.confirmed_at = float("-inf")

    def revoked(self, jti: str, task_id: str | None) -> bool:
        return jti in self.jtis or (task_id is not None and task_id in self.task_ids)

    def barred(self, *, agent: str, agent_issuer: str | None, subject: str, issued_at: int) -> bool:
        """Whether a cutoff covers a token of this agent and user issued at `issued_at`."""
        if not self.cutoffs:
            return False
        parties = [Cutoff("agent", agent, agent_issuer), Cutoff("user", subject)]
        if agent_issuer is not None:
            parties.append(Cutoff("agent_issuer", agent_issuer))
        elif agent.startswith("spiffe://"):
            parties.append(Cutoff("trust_domain", agent.split("/")[2]))
        return any(issued_at <= self.cutoffs.get(party, float("-inf")) for party in parties)


class RevocationSource(Protocol):
    """What keeps a `RevocationState` current for the verifier: the native feed or an SSF receiver."""

    @property
    def state(self) -> RevocationState: ...

    async def start(self) -> None: ...

    async def poll(self) -> None: ...

    async def close(self) -> None: ...


class RevocationFeed:
    """Keeps a `RevocationState` current: a heartbeat poll within the staleness bound, plus the stream.

    Args:
        uri: the paged feed (`<issuer>/revocations`); the stream is `<uri>/stream`.
        client: the HTTP client, owned by the caller.
        svid: returns a current JWT-SVID, called for every request so rotation is picked up.
        heartbeat: seconds between polls that confirm the state whether or not the stream is up.
    """

    def __init__(self, uri: str, *, client: httpx2.AsyncClient, svid: Callable[[], str], heartbeat: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.uri = uri
        self._state = RevocationState()
        self._client = client
        self._svid = svid
        self._heartbeat_s = heartbeat
        self._clock = clock
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def state(self) -> RevocationState:
        return self._state

    async def start(self) -> None:
        """Catch up once (an unreachable feed does not raise), then follow in the background."""
        with contextlib.suppress(Exception):  # an unreachable feed, or no SVID yet: refuse until caught up
            await self.poll()
        self._tasks = [asyncio.create_task(self._follow_stream(), name="deputy-revocation-stream"),
                       asyncio.create_task(self._heartbeat(), name="deputy-revocation-heartbeat")]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._svid()}"}

    async def poll(self) -> None:
        """Page through the feed from the cursor until caught up; then the state is confirmed as of the
        moment the last page was asked for. Raises httpx2.HTTPError or ValueError."""
        async with self._lock:
            while True:
                asked_at = self._clock()
                response = await self._client.get(self.uri, headers=self._auth(),
                                                  params={"since": self.state.cursor, "limit": FEED_PAGE})
                response.raise_for_status()
                body = response.json()
                events = body.get("events") if isinstance(body, dict) else None
                if not isinstance(events, list):
                    raise ValueError("feed page has no events array")
                self.state.apply(events)
                if type(cursor := body.get("next")) is int:  # past events of other resources, too
                    self.state.cursor = max(self.state.cursor, cursor)
                if len(events) < FEED_PAGE:
                    self.state.confirm(asked_at)
                    return

    async def _heartbeat(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception as exc:  # the svid callable is the caller's: whatever it raises, keep following
                log.warning("revocation_feed.poll_failed", extra={"uri": self.uri, "error": _why(exc)})
            await asyncio.sleep(self._heartbeat_s)

    async def _follow_stream(self) -> None:
        """Follow `<uri>/stream` from the cursor; reconnect after the server's `retry:` or with backoff."""
        backoff = BACKOFF_MIN_S
        while True:
            retry: float | None = None
            try:
                retry = await self._read_stream()
                backoff = BACKOFF_MIN_S
            except Exception as exc:  # as in `_heartbeat`: the state goes stale and tokens are refused meanwhile
                log.warning("revocation_feed.stream_failed", extra={"uri": self.uri, "error": _why(exc)})
            await asyncio.sleep(retry if retry is not None else backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _read_stream(self) -> float | None:
        """One connection (WHATWG HTML §9.2): `revocation` events carry JSON `data`; `id` is the cursor,
        resumed with Last-Event-ID; `retry` sets the reconnection delay. Returns that delay, if sent."""
        headers = {**self._auth(), "Last-Event-ID": str(self.state.cursor)}
        timeout = httpx2.Timeout(5.0, read=STREAM_READ_TIMEOUT_S)
        retry: float | None = None
        async with self._client.sse(self.uri + "/stream", headers=headers, timeout=timeout) as source:
            source.response.raise_for_status()
            async for event in source:
                if event.retry is not None:
                    retry = min(event.retry / 1000, BACKOFF_MAX_S)
                if event.event == "revocation":
                    self.state.apply([json.loads(event.data)])
        return retry


def _why(exc: Exception) -> str:
    """A log line's reason: the exception class and its message, never a token."""
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return f"{type(exc).__name__}: {exc}"[:300]
