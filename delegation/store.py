"""The store's seams: one small Protocol per caller, and the views the admin API returns.

Every implementation (`stores/sqlite.py`, `stores/postgres.py`) provides all of them and passes the contract
suite in `tests/delegation/test_store_contract.py`. Writes that depend on a check (a task still open, a
credential not cut off) make the check inside their own transaction.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from token_exchange.actors import ActorRef
from token_exchange.single_use import SingleUse

from .audit import AuditEvent
from .records import Block, IssuedTokenRecord, Party, Presented, barred
from .tasks import SYSTEM, Revocation, Task
from .times import iso


class TokenState(NamedTuple):
    """An issued token's record, whether it was revoked on its own, and its task (None once purged)."""

    record: IssuedTokenRecord
    revoked: bool
    task: Task | None


@dataclass(frozen=True, slots=True)
class TokenView:
    """One issued token, as `/admin/tasks/{id}` lists it: its record and when it was revoked on its own."""

    record: IssuedTokenRecord
    revoked_at: int | None

    def as_dict(self) -> dict[str, Any]:
        fields = {name: getattr(self.record, name) for name in IssuedTokenRecord.__dataclass_fields__}
        return {**fields, "revoked_at": self.revoked_at, "issued_at_iso": iso(self.record.issued_at),
                "expires_at_iso": iso(self.record.expires_at), "revoked_at_iso": iso(self.revoked_at)}


@dataclass(frozen=True, slots=True)
class TaskDetail:
    task: Task
    children: tuple[str, ...]
    tokens: tuple[TokenView, ...]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """An audit event as stored, with its position in the trail."""

    id: int
    event: AuditEvent

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, **self.event.as_dict(), "at_iso": iso(self.event.at)}


@dataclass(frozen=True, slots=True)
class AuditQuery:
    task: str | None = None
    agent: str | None = None
    user: str | None = None
    since: int | None = None
    until: int | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class TaskQuery:
    agent: str | None = None
    user: str | None = None
    state: str | None = None
    limit: int = 100


class Credentials(Protocol):
    """Admin cutoffs: credentials issued (`iat`) at or before a party's revocation no longer count, and
    none counts while a block of its party is active at `now` (`records.BLOCKED`)."""

    async def cutoffs(self, actor: ActorRef | None, *, user: tuple[str, str] | None, now: int
                      ) -> tuple[int | None, int | None]:
        """(the agent's or its domain's cutoff, the user's cutoff), each None if never revoked or blocked."""
        ...


async def check_credentials(store: Credentials, presented: Presented, *, now: int) -> None:
    """Raises `CredentialRevoked` when an admin revocation or block of the agent or user bars these credentials."""
    if refusal := barred(presented, await store.cutoffs(presented.actor, user=presented.user, now=now)):
        raise refusal


class RevocationSync(Protocol):
    def revocation_sync_problem(self) -> str | None:
        """None while this process is sure to see at once every revocation committed by any process; else
        why not (PostgreSQL: the LISTEN connection is lost, or not yet caught up). Meanwhile the gateway
        mints nothing and `/readyz` answers 503 with this reason."""
        ...


class TaskRecords(Credentials, RevocationSync, Protocol):
    """What the token endpoint writes: each grant commits with its task and audit event, or not at all;
    nothing is minted while the revocation state is not in sync (`RevocationSync`).

    `presented` is re-checked in the transaction: `CredentialRevoked`, or `TaskEnded` for a write under
    a task that ended meanwhile."""

    async def task(self, task_id: str) -> Task | None: ...

    async def cached_cutoffs(self, actor: ActorRef | None, *, user: tuple[str, str] | None, now: int
                             ) -> tuple[int | None, int | None]:
        """`cutoffs` as this process holds them, for the token endpoint's check before the policy. It may be
        a moment behind a revocation committed by another replica; the write's own check refuses that."""
        ...

    async def record_grant(self, token: IssuedTokenRecord, event: AuditEvent, *, presented: Presented,
                           task: Task | None = None) -> None: ...

    async def record_task(self, task: Task, event: AuditEvent, *, presented: Presented) -> None: ...


class AuditLog(Protocol):
    async def append_audit(self, event: AuditEvent) -> None: ...

    async def audit_events(self, query: AuditQuery) -> list[AuditRecord]: ...


class TaskEnding(Protocol):
    """Ending tasks (with descendants and tokens) and revoking tokens; each call is one transaction."""

    async def task(self, task_id: str) -> Task | None: ...

    async def token(self, jti: str) -> TokenState | None: ...

    async def end_tasks(self, roots: Sequence[str], *, state: str, reason: str, now: int,
                        event: AuditEvent | None = None, initiator: str = SYSTEM) -> Revocation | None:
        """End the open tasks among `roots` and all their open descendants; the event's `tasks` name each
        with its user and its cause (the root it was reached from)."""
        ...

    async def end_matching(self, party: Party, *, reason: str, now: int,
                           event: AuditEvent | None = None) -> Revocation | None:
        """Revoke every open task of the party and record its cutoff (see `Credentials`); the event names
        `party`, initiated by ADMIN."""
        ...

    async def revoke_token(self, jti: str, *, reason: str, now: int, event: AuditEvent | None = None,
                           initiator: str = SYSTEM) -> Revocation | None: ...


@dataclass(frozen=True, slots=True)
class FeedPage:
    """Feed events as one reader may see them, and `next`, the cursor to ask with next: past every event
    looked at, shown or not, so a reader never asks again for events it may not see."""

    events: tuple[Revocation, ...]
    next: int


class RevocationFeed(Protocol):
    """The revocation feed, told to each resource server about its own resources only (as introspection
    is): an event names the jtis of tokens whose audience is in `audiences` and the ids of tasks that
    include one of them; an event with nothing left for the reader is not given to it."""

    async def revocations(self, since: int, limit: int, *, audiences: frozenset[str]) -> FeedPage:
        """Events after cursor `since`, oldest first; fewer than `limit` means the feed was read to its end."""
        ...

    def follow(self, cursor: int, *, audiences: frozenset[str]) -> AsyncIterator[Revocation]:
        """Every event after `cursor`, as soon as it is committed by any worker; never ends."""
        ...


class Blocks(Protocol):
    """Admin blocks, shared by every worker and replica: checked with the cutoffs (`Credentials`), so a
    write's own transaction sees a block that committed before it (PostgreSQL: under the party's lock)."""

    async def add_block(self, block: Block, event: AuditEvent) -> None: ...

    async def blocks(self, *, now: int, include_inactive: bool = False) -> list[Block]:
        """Blocks, newest first: the active ones at `now`, or all of them."""
        ...

    async def blocks_with_prefix(self, prefix: str, *, limit: int = 2) -> list[Block]: ...

    async def lift_block(self, block_id: str, *, by: str, reason: str | None, now: int,
                         event: AuditEvent) -> Block | None:
        """End an active block; None if there is none of that id active (then nothing is written)."""
        ...


class AdminViews(Protocol):
    async def tasks(self, query: TaskQuery) -> list[Task]: ...

    async def task_ids_with_prefix(self, prefix: str, *, limit: int = 2) -> list[str]:
        """Ids of tasks that start with `prefix`, at most `limit` (so two tell an ambiguous prefix)."""
        ...

    async def seen(self, party: Party) -> bool:
        """Whether any task (kept, not yet purged) names the party."""
        ...

    async def task_detail(self, task_id: str) -> TaskDetail | None: ...


class Maintenance(Protocol):
    def lead_sweeps(self) -> bool:
        """Whether this process is the one (of every worker or replica) that runs the sweeps now."""
        ...

    async def expire_and_purge(self, *, now: int, retention: int) -> tuple[int, int]:
        """Expire open tasks past their deadline; purge what ended over `retention` seconds ago, and the
        single-use values (`SingleUse`) past their `expires_at`, in short transactions. Returns (tasks
        expired, root tasks purged)."""
        ...

    async def count_open_tasks(self) -> int:
        """How many tasks are open (the implicit tasks of one-shot tokens too), for the metrics; cheap."""
        ...

    async def audit_before(self, before: int, limit: int) -> list[AuditRecord]:
        """The oldest audit events recorded before `before`, at most `limit`, oldest first."""
        ...

    async def drop_audit(self, ids: Sequence[int]) -> int:
        """Delete these audit events (once written out elsewhere); returns how many were deleted."""
        ...

    async def close(self) -> None: ...


POLL, PUSH = "urn:ietf:rfc:8936", "urn:ietf:rfc:8935"
"""SSF 1.0 §6.1 delivery methods: RFC 8936 poll, RFC 8935 push."""
ENABLED, PAUSED, DISABLED = "enabled", "paused", "disabled"


@dataclass(frozen=True, slots=True)
class Stream:
    """An SSF event stream (SSF 1.0 §8.1.1) to one receiver: a resource server's client, whose SETs carry
    its resources' audiences as `aud`. `cursor` is the revocation feed position its SETs were made up to."""

    id: str
    client: str  # the receiver: the SPIFFE ID that created the stream (a client of its resources)
    audiences: tuple[str, ...]
    delivery: str  # POLL or PUSH
    endpoint_url: str | None  # push: the receiver's endpoint; poll: None (the transmitter's, by stream id)
    authorization_header: str | None  # push: sent with every push (SSF §6.1.1)
    events_requested: tuple[str, ...]
    events_delivered: tuple[str, ...]
    description: str | None
    status: str  # ENABLED, PAUSED or DISABLED
    reason: str | None
    cursor: int
    created_at: int
    touched_at: int  # the last management call or poll (for `inactivity_timeout`)
    verified_at: int | None = None  # the last verification request (for `min_verification_interval`)


@dataclass(frozen=True, slots=True)
class PendingSet:
    """A signed SET waiting for its receiver's acknowledgement (RFC 8936 §2.4) or a successful push."""

    jti: str
    token: str


class EventStreams(Protocol):
    """SSF streams and the SETs queued on them, shared by every worker and replica. SETs are made from the
    revocation feed (`revocations`) by whoever gets to a stream first: `advance_stream` queues them only
    if no other process moved the stream's cursor meanwhile."""

    async def create_stream(self, stream: Stream) -> None: ...

    async def stream(self, stream_id: str) -> Stream | None: ...

    async def streams_of(self, client: str) -> list[Stream]: ...

    async def push_streams(self) -> list[Stream]:
        """The enabled push streams that have SETs queued."""
        ...

    async def update_stream(self, stream: Stream) -> bool:
        """Write every field but `id`, `client`, `audiences`, `cursor` and `created_at`; False if it is gone."""
        ...

    async def delete_stream(self, stream_id: str) -> bool:
        """The stream and its queued SETs; False if it was already gone."""
        ...

    async def touch_stream(self, stream_id: str, now: int) -> None: ...

    async def advance_stream(self, stream_id: str, *, from_cursor: int, to_cursor: int,
                             sets: Sequence[PendingSet]) -> bool:
        """Queue `sets` and move the cursor to `to_cursor`, in one transaction, only if the cursor is still
        `from_cursor`; False (nothing written) when another process advanced it first."""
        ...

    async def enqueue_sets(self, stream_id: str, sets: Sequence[PendingSet]) -> bool:
        """Queue SETs that come from no feed event (verification, stream-updated); False if it is gone."""
        ...

    async def clear_stream(self, stream_id: str, *, cursor: int) -> None:
        """Drop every queued SET and move the cursor to at least `cursor` (a disabled stream holds nothing)."""
        ...

    async def pending_sets(self, stream_id: str, limit: int) -> tuple[list[PendingSet], bool]:
        """The oldest `limit` queued SETs, oldest first, and whether more are queued."""
        ...

    async def acknowledge(self, stream_id: str, jtis: Sequence[str]) -> int:
        """Drop these queued SETs of the stream (unknown jtis are ignored); how many were dropped."""
        ...

    async def drop_inactive_streams(self, touched_before: int) -> int:
        """Delete the streams (and their SETs) last touched before `touched_before`; how many."""
        ...

    async def wait_for_events(self, timeout: float) -> None:
        """Return when a revocation or queued SET may have been committed: at once for this process's own
        commits and (PostgreSQL) other replicas' notifications, else after at most `timeout` seconds.
        Spurious returns are allowed; callers look again."""
        ...


class SealedRing(NamedTuple):
    version: int
    sealed: bytes


class KeyRecords(Protocol):
    """The signing key ring kept in the store, sealed (encrypted) by the caller, so every replica signs with
    the same keys; `version` grows by one with each save."""

    async def key_ring(self) -> SealedRing | None: ...

    async def key_ring_version(self) -> int | None:
        """The stored ring's version (a cheap read, polled to see rotations); None if there is none."""
        ...

    async def save_key_ring(self, sealed: bytes, *, replaces: int | None) -> int | None:
        """Save `sealed` as the next version, only if the stored version is still `replaces` (None: no ring
        yet). The new version, or None (nothing written) when another process saved first."""
        ...


class Store(TaskRecords, AuditLog, TaskEnding, RevocationFeed, AdminViews, Blocks, Maintenance, SingleUse,
            EventStreams, KeyRecords, Protocol):
    """Everything the gateway uses; `stores.open_store(url)` opens one."""
