"""A stream's SETs: made from the revocation feed by whichever process gets to the stream first, signed, and
queued until the receiver acknowledges them (poll) or takes them (push).

The stream's cursor is the feed position its SETs were made up to; `advance_stream` queues a page's SETs and
moves the cursor only if no other worker or replica moved it meanwhile, so each event becomes its SETs once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from token_exchange.rfc9068 import new_id
from token_exchange.ssf import event_type, set_claims

from ..store import ENABLED, PendingSet, Stream
from ..tasks import Revocation
from .events import CONTROL_EVENTS, SetDraft, revocation_drafts
from .seams import SetSigner, SsfStore

FEED_PAGE = 100  # feed events read (and made into SETs) per transaction
MAX_BATCH = 1000  # SETs handed out at once


class Outbox:
    def __init__(self, store: SsfStore, signer: SetSigner, *, issuer: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.signer = signer
        self.issuer = issuer
        self.clock = clock

    async def fill(self, stream: Stream, *, wanted: int) -> bool:
        """Make the SETs of the feed events past the stream's cursor, a page at a time, until the feed is read
        to its end or `wanted` SETs were made; True if events may be left. Only an enabled stream's: a paused
        one keeps its cursor (its events are made once it is enabled again), a disabled one was moved past."""
        if stream.status != ENABLED:
            return False
        cursor, made, audiences = stream.cursor, 0, frozenset(stream.audiences)
        while True:
            page = await self.store.revocations(cursor, FEED_PAGE, audiences=audiences)
            if page.next == cursor:
                return False
            sets = await self._signed(stream, page.events)
            if not await self.store.advance_stream(stream.id, from_cursor=cursor, to_cursor=page.next, sets=sets):
                return False  # another process made these SETs first: they are in the queue
            made, cursor = made + len(sets), page.next
            if len(page.events) < FEED_PAGE:
                return False
            if made >= wanted:
                return True

    async def enqueue(self, stream: Stream, drafts: Sequence[SetDraft]) -> bool:
        """Queue SETs that come from no feed event (verification, stream updated); False if the stream is gone."""
        return await self.store.enqueue_sets(stream.id, await self._signed_drafts(stream, drafts))

    async def pending(self, stream: Stream, limit: int) -> tuple[list[PendingSet], bool]:
        """The oldest `limit` queued SETs a receiver may be given now, and whether more are queued. A stream
        that is not enabled transmits only the control events (SSF §8.1.2.1: paused ones hold the rest)."""
        if stream.status == ENABLED:
            return await self.store.pending_sets(stream.id, limit)
        queued, _ = await self.store.pending_sets(stream.id, MAX_BATCH)
        control = [s for s in queued if event_type(s.token) in CONTROL_EVENTS]
        return control[:limit], len(control) > limit

    async def _signed(self, stream: Stream, events: Sequence[Revocation]) -> list[PendingSet]:
        """The SETs of these events of the types the stream delivers; a token revoked on its own is looked up
        for its task (`txn`)."""
        task_of: dict[str, str] = {}
        for jti in (jti for event in events if not event.task_ids for jti in event.jtis):
            found = await self.store.token(jti)
            if found is not None and found.record.task_id is not None:
                task_of[jti] = found.record.task_id
        delivered = frozenset(stream.events_delivered)  # SSF §8.1.1: only those
        return await self._signed_drafts(stream, [
            draft for event in events for draft in revocation_drafts(event, issuer=self.issuer, task_of_token=task_of)
            if draft.event in delivered])

    async def _signed_drafts(self, stream: Stream, drafts: Sequence[SetDraft]) -> list[PendingSet]:
        """Signed on a thread: an RS256 signature (≈ 570 µs here) costs more than the hop, and a page of them
        would hold the event loop for tens of milliseconds."""
        if not drafts:
            return []
        now = int(self.clock())
        return await asyncio.to_thread(lambda: [self._sign(stream, draft, now) for draft in drafts])

    def _sign(self, stream: Stream, draft: SetDraft, now: int) -> PendingSet:
        jti = new_id()  # RFC 8417 §2.2: unique in the feed; never the revoked token's
        claims = set_claims(audience=stream.audiences, txn=draft.txn, subject=draft.subject, event=draft.event,
                            payload=draft.payload, jti=jti, iat=now)
        return PendingSet(jti, self.signer.sign_event({"iss": self.issuer, **claims}))
