"""SSF 1.0 §8.1 stream management: configuration (create, read, update, replace, delete), status, verification.

A stream belongs to the resource-server client that created it; another client is told there is no such
stream. Its `aud` is the audiences of the client's resources when it was created, never updatable; a client
that is no longer a client of all of them has its stream disabled by the transmitter, announced with a
stream-updated event (§8.1.5), so nothing about a resource it lost is told to it. Every call about a stream
restarts its inactivity timer (§8.1.1)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from token_exchange.errors import AccessDenied, InvalidRequest
from token_exchange.json_bodies import optional_string, required_string
from token_exchange.ssf import StreamConflict, TooManyRequests

from ..admin import NotFound
from ..resources import Resources
from ..store import DISABLED, ENABLED, PAUSED, Stream
from .config import StreamRequest, check_transmitter_supplied, configuration, new_stream, updated
from .events import stream_updated_draft, verification_draft
from .outbox import Outbox
from .seams import SsfStore, StreamTimings

MAX_STREAM_ID, MAX_STATE, MAX_REASON = 64, 1024, 1024
MAX_STREAMS = 100  # per receiver: each holds its own copy of every SET
STATUSES = (ENABLED, PAUSED, DISABLED)
LOST_RESOURCES = "the receiver is no longer a client of every resource in aud; create a new stream"


class StreamManager:
    def __init__(self, store: SsfStore, outbox: Outbox, resources: Resources, *, issuer: str,
                 timings: StreamTimings, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.outbox = outbox
        self.resources = resources
        self.issuer = issuer
        self.timings = timings
        self.clock = clock

    def config(self, stream: Stream) -> dict[str, Any]:
        return configuration(stream, issuer=self.issuer, timings=self.timings)

    async def create(self, client: str, document: Mapping[str, Any]) -> dict[str, Any]:
        """§8.1.1.1: 201 with the configuration; its backlog is every revocation still in the feed about it."""
        audiences = self.resources.audiences_of(client)
        if not audiences:
            raise AccessDenied("this workload is not a client of any resource")
        if len(await self.store.streams_of(client)) >= MAX_STREAMS:
            raise StreamConflict(f"this receiver has {MAX_STREAMS} streams already: delete those it no longer uses")
        stream = new_stream(StreamRequest.parse(document), client=client, audiences=audiences, now=self._now())
        config = self.config(stream)
        check_transmitter_supplied(document, config)
        await self.store.create_stream(stream)
        return config

    async def read(self, client: str, stream_id: str | None) -> dict[str, Any] | list[dict[str, Any]]:
        """§8.1.1.2: one stream, or without `stream_id` the list of the client's (empty if none)."""
        if stream_id is not None:
            return self.config(await self.owned(client, stream_id))
        return [self.config(await self._touched(stream)) for stream in await self.store.streams_of(client)]

    async def update(self, client: str, document: Mapping[str, Any], *, replace_all: bool) -> dict[str, Any]:
        """§8.1.1.3 (PATCH) and §8.1.1.4 (PUT, `replace_all`): the stream's new configuration."""
        stream = await self.owned(client, required_string(document, "stream_id", limit=MAX_STREAM_ID))
        changed = updated(stream, StreamRequest.parse(document), replace_all=replace_all, issuer=self.issuer,
                          now=self._now())
        config = self.config(changed)
        check_transmitter_supplied(document, config)
        if not await self.store.update_stream(changed):
            raise NotFound("no such stream for this receiver")
        return config

    async def delete(self, client: str, stream_id: str) -> None:
        """§8.1.1.5."""
        await self.store.delete_stream((await self.owned(client, stream_id)).id)

    async def status(self, client: str, stream_id: str) -> dict[str, Any]:
        """§8.1.2.1."""
        return status_of(await self.owned(client, stream_id))

    async def set_status(self, client: str, document: Mapping[str, Any]) -> dict[str, Any]:
        """§8.1.2.2: enabled transmits, paused holds what happens meanwhile, disabled neither sends nor holds."""
        stream = await self.owned(client, required_string(document, "stream_id", limit=MAX_STREAM_ID))
        status = document.get("status")
        if status not in STATUSES:
            raise InvalidRequest("status must be enabled, paused or disabled")
        changed = await self._with_status(stream, str(status), optional_string(document, "reason", limit=MAX_REASON))
        return status_of(changed)

    async def verify(self, client: str, document: Mapping[str, Any]) -> None:
        """§8.1.4.2: queue a verification event echoing `state`; sooner than `min_verification_interval`
        after the last request: 429."""
        stream = await self.owned(client, required_string(document, "stream_id", limit=MAX_STREAM_ID))
        state = document.get("state")
        if state is not None and (not isinstance(state, str) or len(state) > MAX_STATE):
            raise InvalidRequest(f"state must be a string of at most {MAX_STATE} characters")
        now, interval = self._now(), self.timings.min_verification_interval
        if stream.verified_at is not None and now - stream.verified_at < interval:
            raise TooManyRequests(f"verification at most every {interval} s", retry_after=interval - (now -
                                                                                                    stream.verified_at))
        if not await self.store.update_stream(replace(stream, verified_at=now, touched_at=now)):
            raise NotFound("no such stream for this receiver")
        await self.outbox.enqueue(stream, [verification_draft(stream.id, state)])

    async def owned(self, client: str, stream_id: str) -> Stream:
        """The client's stream (touched, and still entitled to its `aud`); NotFound for anyone else's."""
        stream = await self.store.stream(stream_id)
        if stream is None or stream.client != client:
            raise NotFound("no such stream for this receiver")
        return await self._touched(stream)

    async def current(self, stream: Stream) -> Stream:
        """The stream, disabled by the transmitter first if its receiver lost one of the resources in its `aud`."""
        if stream.status == DISABLED or set(stream.audiences) <= self.resources.audiences_of(stream.client):
            return stream
        disabled = await self._with_status(stream, DISABLED, LOST_RESOURCES)
        await self.outbox.enqueue(disabled, [stream_updated_draft(stream.id, DISABLED, LOST_RESOURCES)])
        return disabled

    async def _touched(self, stream: Stream) -> Stream:
        now = self._now()
        await self.store.touch_stream(stream.id, now)
        return await self.current(replace(stream, touched_at=now))

    async def _with_status(self, stream: Stream, status: str, reason: str | None) -> Stream:
        """Leaving `disabled`, the cursor moves to the feed's head first (nothing was held); entering it, the
        queue is dropped and the cursor moved to the head after the status is written (nothing is held)."""
        changed = replace(stream, status=status, reason=reason, touched_at=self._now())
        if stream.status == DISABLED and status != DISABLED:
            head = await self._feed_head(stream)
            await self.store.advance_stream(stream.id, from_cursor=stream.cursor, to_cursor=head, sets=())
        if not await self.store.update_stream(changed):
            raise NotFound("no such stream for this receiver")
        if status == DISABLED and stream.status != DISABLED:
            await self.store.clear_stream(stream.id, cursor=await self._feed_head(stream))
        return changed

    async def _feed_head(self, stream: Stream) -> int:
        """The cursor past every feed event: read for no audience, every event is passed (`FeedPage.next`)."""
        return max(stream.cursor, (await self.store.revocations(stream.cursor, 1, audiences=frozenset())).next)

    def _now(self) -> int:
        return int(self.clock())


def status_of(stream: Stream) -> dict[str, Any]:
    return {"stream_id": stream.id, "status": stream.status} | ({"reason": stream.reason} if stream.reason else {})
