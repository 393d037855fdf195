"""RFC 8936 poll delivery: acknowledge first, then make the stream's new SETs, then answer with the oldest
unacknowledged ones; with nothing to give, hold the request (long poll) until a SET is queued or
`poll_timeout` passes, woken as soon as a revocation commits on any worker or replica. One receiver holds
at most MAX_HELD_PER_CLIENT polls in a process; past that, its polls are answered at once, so no receiver can
tie up the store's connections with held polls."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from token_exchange.errors import InvalidRequest
from token_exchange.rfc8936 import PollRequest, response

from ..store import POLL, PendingSet, Stream
from .outbox import MAX_BATCH, Outbox
from .seams import SsfStore, StreamTimings
from .streams import StreamManager

log = logging.getLogger(__name__)
MAX_HELD_PER_CLIENT = 64  # generous: every instance of a resource server may share one SPIFFE ID


class Poller:
    def __init__(self, streams: StreamManager, outbox: Outbox, store: SsfStore, *, timings: StreamTimings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.streams = streams
        self.outbox = outbox
        self.store = store
        self.timings = timings
        self.clock = clock
        self._held: dict[str, int] = {}  # client -> polls it has held in this process now

    async def poll(self, client: str, stream_id: str, request: PollRequest) -> dict[str, Any]:
        """§2.2-§2.5: `{"sets": {jti: SET}, "moreAvailable": bool}`; unacknowledged SETs are given again."""
        stream = await self.streams.owned(client, stream_id)
        if stream.delivery != POLL:
            raise InvalidRequest("this stream is delivered by push (RFC 8935), not by poll")
        await self._acknowledge(stream, request)
        limit = MAX_BATCH if request.max_events is None else min(request.max_events, MAX_BATCH)
        hold = not request.return_immediately and self._held.get(client, 0) < MAX_HELD_PER_CLIENT
        self._held[client] = self._held.get(client, 0) + hold
        try:
            sets, more = await self._wait_for_sets(stream, max(limit, 1), hold=hold)
        finally:
            if (left := self._held[client] - hold) > 0:
                self._held[client] = left
            else:
                del self._held[client]
        return response({s.jti: s.token for s in sets[:limit]}, more_available=more or len(sets) > limit)

    async def _acknowledge(self, stream: Stream, request: PollRequest) -> None:
        """§2.4: acknowledged SETs are dropped, and so are those the receiver reports it could not take
        (`setErrs`: sending them again cannot help); each report is logged."""
        for jti, error in request.set_errs.items():
            log.warning("ssf.set_refused", extra={"stream_id": stream.id, "jti": jti, "err": error.err,
                                                  "description": error.description[:200]})
        if dropped := (*request.ack, *request.set_errs):
            await self.store.acknowledge(stream.id, dropped)

    async def _wait_for_sets(self, stream: Stream, limit: int, *, hold: bool) -> tuple[list[PendingSet], bool]:
        """Up to `limit` SETs, and whether more are waiting; held up to `poll_timeout` while there are none."""
        deadline = self.clock() + self.timings.poll_timeout
        while True:
            more_in_feed = await self.outbox.fill(stream, wanted=limit)
            sets, more = await self.outbox.pending(stream, limit)
            remaining = deadline - self.clock()
            if sets or not hold or remaining <= 0:
                return sets, more or more_in_feed
            await self.store.wait_for_events(remaining)
            latest = await self.store.stream(stream.id)
            if latest is None:  # deleted meanwhile
                return [], False
            stream = latest
