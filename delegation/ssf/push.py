"""RFC 8935 push delivery and the streams' inactivity sweep, run by the one process that leads the sweeps.

Woken whenever a revocation or SET may have been committed (`wait_for_events`), it makes each enabled push
stream's new SETs and POSTs them in order, one at a time (a paused or disabled stream's control events
only). A SET the receiver takes (202) or refuses (400: sending it again cannot help) leaves the queue; any
other answer stops that stream's delivery and retries it after a per-stream backoff that doubles up to
BACKOFF_MAX_S, the SET still queued. Streams that nobody managed, polled or took pushes from for
`inactivity_timeout` seconds are deleted (SSF §8.1.1)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from token_exchange.rfc8935 import PushResult

from ..records import StoreError
from ..store import PUSH, Stream
from .outbox import Outbox
from .seams import SsfStore
from .streams import StreamManager

log = logging.getLogger(__name__)
BATCH = 100  # SETs pushed per stream per round
IDLE_S = 1.0  # between full rounds: a new or re-enabled stream is pushed its backlog within it
BACKOFF_FIRST_S, BACKOFF_MAX_S = 1.0, 300.0
ROUND_BUDGET_S = 2.0  # what one stream may take of a round: a slow receiver is backed off, not waited for
INACTIVITY_SWEEP_S = 60.0


class SetPusher(Protocol):
    async def __call__(self, url: str, token: str, *, authorization: str | None) -> PushResult: ...


class PushDelivery:
    def __init__(self, streams: StreamManager, outbox: Outbox, store: SsfStore, push: SetPusher, *,
                 clients: Iterable[str], inactivity_timeout: int, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.streams, self.outbox, self.store, self.push = streams, outbox, store, push
        self.clients = sorted(set(clients))
        self.inactivity_timeout = inactivity_timeout
        self.clock, self.wall_clock = clock, wall_clock
        self._retry: dict[str, tuple[float, float]] = {}  # stream id → (when to try again, the last backoff)
        self._next_inactivity_sweep = self._next_full = 0.0
        self._head = 0  # the feed's head at the last full round
        self._busy = False

    async def run(self) -> None:
        """Rounds for as long as the process runs, while it leads the sweeps; never ends."""
        while True:
            try:
                if self.store.lead_sweeps():
                    await self.round()
            except StoreError as exc:
                log.error("ssf.push_failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            except Exception:  # a bug, logged with its traceback; delivery goes on
                log.exception("ssf.push_failed")
            await self.store.wait_for_events(self._pause())

    async def round(self) -> None:
        """Sweep inactive streams now and then; deliver to the push streams that are due."""
        await self._sweep_inactive()
        due = [s for s in await self._candidates() if self._retry.get(s.id, (0.0, 0.0))[0] <= self.clock()]
        results = await asyncio.gather(*(self._within_budget(s) for s in due), return_exceptions=True)
        for stream, result in zip(due, results, strict=True):
            if isinstance(result, BaseException):
                log.error("ssf.push_failed", extra={"stream_id": stream.id, "error": f"{type(result).__name__}"})
        self._busy = any(result is True for result in results)

    async def _candidates(self) -> list[Stream]:
        """Every push stream of the resources' clients when the feed moved (their new SETs are to be made),
        after a full batch, or every IDLE_S; else only the enabled ones with SETs queued (one cheap query:
        this runs on every wake)."""
        head = (await self.store.revocations(self._head, 1, audiences=frozenset())).next  # no audience: the head
        if head == self._head and not self._busy and self.clock() < self._next_full:
            return await self.store.push_streams()
        self._head, self._next_full = head, self.clock() + IDLE_S
        streams = [s for client in self.clients for s in await self.store.streams_of(client) if s.delivery == PUSH]
        self._retry = {s.id: self._retry[s.id] for s in streams if s.id in self._retry}  # deleted ones go
        return streams

    async def _sweep_inactive(self) -> None:
        """At least twice per `inactivity_timeout` (at most once a minute), so no stream outlives 1.5 times it."""
        if self.clock() < self._next_inactivity_sweep:
            return
        self._next_inactivity_sweep = self.clock() + min(INACTIVITY_SWEEP_S, self.inactivity_timeout / 2)
        if dropped := await self.store.drop_inactive_streams(int(self.wall_clock()) - self.inactivity_timeout):
            log.warning("ssf.streams_inactive", extra={"deleted": dropped})

    async def _within_budget(self, stream: Stream) -> bool:
        """`_deliver`, cut off after ROUND_BUDGET_S: every stream's delivery runs side by side, and a round
        lasts no longer than that, so one slow receiver never holds up the others' revocations."""
        try:
            async with asyncio.timeout(ROUND_BUDGET_S):
                return await self._deliver(stream)
        except TimeoutError:
            self._back_off(stream.id, f"delivery took over {ROUND_BUDGET_S:g} s this round")
            return False

    async def _deliver(self, stream: Stream) -> bool:
        """Push the stream's queued SETs in order (a stream not enabled: its control events only, `Outbox.pending`);
        True if a full batch went (more may be waiting)."""
        stream = await self.streams.current(stream)
        if stream.endpoint_url is None:
            return False
        await self.outbox.fill(stream, wanted=BATCH)
        sets, _ = await self.outbox.pending(stream, BATCH)
        for pending in sets:
            result = await self.push(stream.endpoint_url, pending.token, authorization=stream.authorization_header)
            if result.outcome == "failed":
                self._back_off(stream.id, result.detail)
                return False
            if result.outcome == "refused":
                log.warning("ssf.set_refused", extra={"stream_id": stream.id, "jti": pending.jti, "err": result.detail})
            await self.store.acknowledge(stream.id, [pending.jti])
        if sets:  # a receiver that answers pushes is active (SSF §8.1.1 lets the transmitter choose)
            await self.store.touch_stream(stream.id, int(self.wall_clock()))
        self._retry.pop(stream.id, None)
        return len(sets) == BATCH

    def _back_off(self, stream_id: str, detail: str) -> None:
        delay = min(BACKOFF_MAX_S, 2 * self._retry[stream_id][1]) if stream_id in self._retry else BACKOFF_FIRST_S
        self._retry[stream_id] = (self.clock() + delay, delay)
        log.warning("ssf.push_retry", extra={"stream_id": stream_id, "error": detail, "retry_in_s": delay})

    def _pause(self) -> float:
        """Until the next round: none after a full batch, else until the next retry is due, at most IDLE_S."""
        if self._busy:
            return 0.0
        due = min((when for when, _ in self._retry.values()), default=self.clock() + IDLE_S)
        return max(0.0, min(IDLE_S, due - self.clock()))
