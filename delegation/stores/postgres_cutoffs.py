"""A PostgreSQL store instance's copy of the admin cutoffs and blocks of the parties it has seen, for the
token endpoint's check before the policy (`TaskRecords.cached_cutoffs`): it saves most exchanges a round
trip to the database.

The copy is never the last word. Every write checks the cutoffs again under its locks, in its own
transaction (postgres_writes.py), so a copy a moment behind another replica's revocation only moves the
refusal after the policy. It is kept current three ways:
- each transaction that records a cutoff or adds or lifts a block NOTIFYs `deputy_events` with the payload
  `cutoffs:<kind>:<subject>` (`notice`); the listener drops that party's entry (bare `cutoffs`: every
  entry), as it drops them all each time it (re)connects;
- an entry is read again once it is `MAX_AGE_S` old, whatever the notifications said;
- while the listener is down the store reads the tables instead (postgres.py).
A party not held (or held too long) is read with the others of its request in one query, the same query
that answers `Credentials.cutoffs` from the tables (`read`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from token_exchange.actors import ActorRef

from ..records import BLOCKED, cutoffs_of
from .postgres_db import PostgresDatabase

CHANGED = "cutoffs"  # the payload's prefix
MAX_PAYLOAD = 7900  # bytes; PostgreSQL refuses a NOTIFY payload of 8,000 or more (then: CHANGED alone)
MAX_AGE_S = 5.0  # an entry is read again after this long (a listener stuck unnoticed, a notification lost)
CACHED_PARTIES = 65_536  # entries kept, least recently used dropped first; most are empty (never revoked)

# The cutoffs of the parties, and their blocks not lifted as cutoffs of BLOCKED + their expiry (records.py):
# `blocks_party` and the key of `credential_cutoffs` serve it.
_READ = (
    "WITH p (kind, subject) AS (SELECT * FROM unnest(%(kinds)s::text[], %(subjects)s::text[]))"
    " SELECT c.kind, c.subject, c.issuer, c.issued_before, NULL::bigint AS expires_at"
    " FROM credential_cutoffs c JOIN p ON c.kind = p.kind AND c.subject = p.subject"
    f" UNION ALL SELECT b.target, b.party, b.issuer, {BLOCKED} + b.expires_at, b.expires_at"
    " FROM blocks b JOIN p ON b.target = p.kind AND b.party = p.subject WHERE b.lifted_at IS NULL"
)

Party = tuple[str, str]  # (kind, subject), as cutoffs and blocks name them
Row = tuple[str, str, int, int | None]  # (kind, issuer, cutoff, when a block's cutoff expires: None otherwise)


def notice(kind: str, subject: str) -> str:
    """The NOTIFY payload saying that this party's cutoffs or blocks changed."""
    payload = f"{CHANGED}:{kind}:{subject}"
    return payload if len(payload.encode()) <= MAX_PAYLOAD else CHANGED


class CutoffCopy:
    """The cutoffs by party, each entry read when first needed and dropped when told it changed."""

    def __init__(self, db: PostgresDatabase, clock: Callable[[], float] = time.monotonic) -> None:
        self._db = db
        self._clock = clock
        self._entries: OrderedDict[Party, tuple[float, list[Row]]] = OrderedDict()
        self._changes = 0  # changes told of: a read that overlapped one keeps nothing

    def notified(self, payload: str) -> None:
        """A `notice` (or bare `cutoffs`: anything may have changed) came."""
        _, _, party = payload.partition(":")
        kind, _, subject = party.partition(":")
        self._changes += 1
        if party:
            self._entries.pop((kind, subject), None)
        else:
            self._entries.clear()

    async def read(self, actor: ActorRef | None, *, user: tuple[str, str] | None, now: int
                   ) -> tuple[int | None, int | None]:
        """The cutoffs from the tables, now (`Credentials.cutoffs`); what is read is kept as well."""
        return _picked(await self._read(_parties(actor, user)), actor, user, now)

    async def cutoffs(self, actor: ActorRef | None, *, user: tuple[str, str] | None, now: int
                      ) -> tuple[int | None, int | None]:
        """The cutoffs from the copy, the parties it does not hold (or holds too long) read from the tables."""
        rows: list[Row] = []
        missing = []
        fresh_after = self._clock() - MAX_AGE_S
        for party in _parties(actor, user):
            entry = self._entries.get(party)
            if entry is None or entry[0] < fresh_after:
                missing.append(party)
            else:
                self._entries.move_to_end(party)
                rows.extend(entry[1])
        if missing:
            rows.extend(await self._read(missing))
        return _picked(rows, actor, user, now)

    async def _read(self, parties: list[Party]) -> list[Row]:
        changes, read_at = self._changes, self._clock()
        found: dict[Party, list[Row]] = {party: [] for party in parties}
        for row in await self._db.fetch(_READ, {"kinds": [k for k, _ in parties], "subjects": [s for _, s in parties]},
                                        prepare=True):
            found[(row["kind"], row["subject"])].append(
                (row["kind"], row["issuer"], row["issued_before"], row["expires_at"]))
        if self._changes == changes:  # else a change told of meanwhile may have committed after the read
            for party, held in found.items():
                self._entries[party] = (read_at, held)
                self._entries.move_to_end(party)
            while len(self._entries) > CACHED_PARTIES:
                self._entries.popitem(last=False)
        return [row for held in found.values() for row in held]


def _parties(actor: ActorRef | None, user: tuple[str, str] | None) -> list[Party]:
    """The parties whose cutoffs bear on these credentials: the agent, its domain, the user."""
    parties = [("agent", actor.id), ("domain", actor.domain)] if actor is not None else []
    return parties + ([("user", user[1])] if user is not None else [])


def _picked(rows: list[Row], actor: ActorRef | None, user: tuple[str, str] | None, now: int
            ) -> tuple[int | None, int | None]:
    """`cutoffs_of` the rows, without the blocks expired by `now`."""
    return cutoffs_of(((kind, issuer, at) for kind, issuer, at, expires_at in rows
                       if expires_at is None or expires_at > now), actor, user)
