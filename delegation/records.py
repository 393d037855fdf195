"""What the store keeps and is asked about: issued tokens, parties named by admin revocations, the
credentials a write relies on, and how the store fails."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from token_exchange.actors import ActorRef

from .times import iso


class StoreError(Exception):
    """The store could not read or write: callers fail closed."""


class TaskEnded(StoreError):
    """A write under a task found it no longer open (ended meanwhile by its agent, an admin or expiry)."""


class CredentialRevoked(StoreError):
    """A write relied on a credential that an admin revocation of its party now bars (`which`: actor or user),
    or that an admin block of its party refuses (`blocked_until`: when the block expires)."""

    def __init__(self, which: Literal["actor", "user"], blocked_until: int | None = None) -> None:
        super().__init__(f"{which} credential {'blocked' if blocked_until else 'revoked'}")
        self.which = which
        self.blocked_until = blocked_until

    def reason(self) -> str:
        """Why, as the refusal says it."""
        party = "agent" if self.which == "actor" else "user"
        if self.blocked_until is None:
            return f"issued before an admin revoked this {party}"
        return (f"an admin blocked this {party} until {iso(self.blocked_until)} (the block ends then, or when"
                " an admin lifts it)")


BLOCKED = 2**62
"""A block is checked as a cutoff of BLOCKED + its expiry: it bars every credential, issued before or after,
and the cutoff that bars one says until when (a credential's `iat` is far below BLOCKED)."""


@dataclass(frozen=True, slots=True)
class IssuedTokenRecord:
    jti: str
    user_issuer: str
    user_subject: str
    agent: str
    audience: str
    scope: str
    issued_at: int
    expires_at: int
    task_id: str | None = None
    agent_domain: str = ""


@dataclass(frozen=True, slots=True)
class Party:
    """Whom an admin revocation names: an agent (`id`, in `domain` or any), every agent of a domain (a
    SPIFFE trust domain or a workload issuer), or a user (`id` = sub, at `domain` = its issuer, or any)."""

    kind: Literal["agent", "domain", "user"]
    id: str
    domain: str | None = None

    def describe(self) -> str:
        if self.kind == "domain":
            return f"domain {self.id}"
        return f"{self.kind} {self.id}" + (f" at {self.domain}" if self.domain else "")


BLOCK_KINDS = ("agent", "trust_domain", "workload_issuer", "user")
_PARTY_KIND: dict[str, Literal["agent", "domain", "user"]] = {
    "agent": "agent", "trust_domain": "domain", "workload_issuer": "domain", "user": "user"}


@dataclass(frozen=True, slots=True)
class Block:
    """An admin block: every exchange by the party (`kind` one of BLOCK_KINDS, `party` its id, `issuer` the
    workload issuer of a non-SPIFFE agent or the issuer of a user, None: any) is refused until `expires_at`,
    or until lifted."""

    id: str
    kind: str
    party: str
    issuer: str | None
    reason: str
    created_at: int
    expires_at: int
    created_by: str
    lifted_at: int | None = None
    lifted_by: str | None = None
    lift_reason: str | None = None

    @property
    def target(self) -> Party:
        """The party as revocations and cutoffs name it (a trust domain and a workload issuer are domains)."""
        return Party(_PARTY_KIND[self.kind], self.party, self.issuer)

    def active(self, now: int) -> bool:
        return self.lifted_at is None and self.expires_at > now


@dataclass(frozen=True, slots=True)
class Presented:
    """The credentials a write relies on: re-checked against admin cutoffs inside the write's transaction,
    so a revocation that answered first always covers them (its cutoff), and one that answers later
    finds what they wrote (its cascade)."""

    actor: ActorRef | None  # None: a user token presented alone (an admin)
    actor_issued_at: int | None
    user: tuple[str, str] | None = None  # (issuer, subject) of a user token presented with the request
    user_issued_at: int | None = None


def barred(presented: Presented, cutoffs: tuple[int | None, int | None]) -> CredentialRevoked | None:
    """The refusal for the presented credential an admin cutoff (the agent's or domain's, the user's) bars,
    if any: one issued at or before its cutoff, or one without `iat` (it cannot show it was issued later);
    under a block (see BLOCKED), any."""
    agent_cutoff, user_cutoff = cutoffs
    if presented.actor is not None and _before(presented.actor_issued_at, agent_cutoff):
        return _refusal("actor", agent_cutoff)
    if presented.user is not None and _before(presented.user_issued_at, user_cutoff):
        return _refusal("user", user_cutoff)
    return None


def cutoffs_of(rows: Iterable[Sequence[Any]], actor: ActorRef | None, user: tuple[str, str] | None
               ) -> tuple[int | None, int | None]:
    """`barred`'s cutoffs from the (kind, issuer, cutoff) rows recorded for the agent, its domain and the user:
    the latest of the agent (at its domain or any) or of its domain, and the latest of the user (at its
    issuer or any). A cutoff recorded without a domain or issuer ('') holds at every one."""
    agent, of_user = None, None
    for kind, issuer, at in rows:
        if kind == "domain" or (kind == "agent" and actor is not None and issuer in (actor.domain, "")):
            agent = at if agent is None else max(agent, at)
        elif kind == "user" and user is not None and issuer in (user[0], ""):
            of_user = at if of_user is None else max(of_user, at)
    return agent, of_user


def _refusal(which: Literal["actor", "user"], cutoff: int | None) -> CredentialRevoked:
    blocked = cutoff is not None and cutoff >= BLOCKED
    return CredentialRevoked(which, cutoff - BLOCKED if blocked and cutoff is not None else None)


def _before(issued_at: int | None, cutoff: int | None) -> bool:
    return cutoff is not None and (issued_at is None or issued_at <= cutoff)
