"""A PostgreSQL store instance's copy of the admin cutoffs and active blocks, for the token endpoint's check
before the policy (`TaskRecords.cached_cutoffs`): it saves every exchange a round trip to the database.

The copy is never the last word. Every write checks the cutoffs again under its locks, in its own
transaction (postgres_writes.py), so a copy a moment behind another replica's revocation only moves the
refusal after the policy. It is kept current by notifications: each transaction that records a cutoff or
adds or lifts a block NOTIFYs `deputy_events` with the payload `cutoffs`; the listener then marks the copy
stale, as it does each time it (re)connects, and the next check loads it again in one query. While the
listener is down the store reads the tables instead (postgres.py).
"""

from __future__ import annotations

import asyncio

from token_exchange.actors import ActorRef

from ..records import BLOCKED, cutoffs_of
from .postgres_db import PostgresDatabase

# Every cutoff, and each block not lifted nor expired as a cutoff of BLOCKED + its expiry (records.py).
_LOAD = ("SELECT kind, subject, issuer, issued_before, NULL::bigint AS expires_at FROM credential_cutoffs"
         f" UNION ALL SELECT target, party, issuer, {BLOCKED} + expires_at, expires_at FROM blocks"
         " WHERE lifted_at IS NULL AND expires_at > %s")

Row = tuple[str, int, int | None]  # (issuer, cutoff, when a block's cutoff expires: None for a revocation)


class CutoffCopy:
    """The cutoffs by (kind, subject), loaded again after each change it is told of (`changed`)."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db
        self._rows: dict[tuple[str, str], list[Row]] = {}
        self._changes = 0  # changes told of
        self._loaded_after = -1  # how many had been told of when the copy was last loaded
        self._loaded_at = 0  # the `now` it was loaded for: blocks that had expired by then are left out
        self._loading = asyncio.Lock()

    def changed(self) -> None:
        """A cutoff or block may have changed (a notification, or the listener reconnected): load again."""
        self._changes += 1

    async def cutoffs(self, actor: ActorRef | None, *, user: tuple[str, str] | None, now: int
                      ) -> tuple[int | None, int | None]:
        if not self._current(now):
            await self._load(now)
        parties = [("agent", actor.id), ("domain", actor.domain)] if actor is not None else []
        if user is not None:
            parties.append(("user", user[1]))
        return cutoffs_of(((kind, issuer, at) for kind, subject in parties
                           for issuer, at, expires_at in self._rows.get((kind, subject), ())
                           if expires_at is None or expires_at > now), actor, user)

    async def _load(self, now: int) -> None:
        async with self._loading:  # one load at a time; whoever waited finds it done
            told = self._changes
            if self._current(now):
                return
            rows: dict[tuple[str, str], list[Row]] = {}
            for row in await self._db.fetch(_LOAD, (now,), prepare=True):
                rows.setdefault((row["kind"], row["subject"]), []).append(
                    (row["issuer"], row["issued_before"], row["expires_at"]))
            # A change told of during the load may have committed after it read: then it loads again.
            self._rows, self._loaded_after, self._loaded_at = rows, told, now

    def _current(self, now: int) -> bool:
        return self._loaded_after == self._changes and now >= self._loaded_at
