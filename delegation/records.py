"""What the store keeps and is asked about: issued tokens, parties named by admin revocations, the
credentials a write relies on, and how the store fails."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from token_exchange.actors import ActorRef


class StoreError(Exception):
    """The store could not read or write: callers fail closed."""


class TaskEnded(StoreError):
    """A write under a task found it no longer open (ended meanwhile by its agent, an admin or expiry)."""


class CredentialRevoked(StoreError):
    """A write relied on a credential that an admin revocation of its party now bars (`which`: actor or user)."""

    def __init__(self, which: Literal["actor", "user"]) -> None:
        super().__init__(f"{which} credential revoked")
        self.which = which


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


@dataclass(frozen=True, slots=True)
class Presented:
    """The credentials a write relies on: re-checked against admin cutoffs inside the write's transaction,
    so a revocation that answered first always covers them (its cutoff), and one that answers later
    finds what they wrote (its cascade)."""

    actor: ActorRef | None  # None: a user token presented alone (an admin)
    actor_issued_at: int | None
    user: tuple[str, str] | None = None  # (issuer, subject) of a user token presented with the request
    user_issued_at: int | None = None


def barred(presented: Presented, cutoffs: tuple[int | None, int | None]) -> Literal["actor", "user"] | None:
    """Which presented credential an admin cutoff (the agent's or domain's, the user's) bars, if any: one
    issued at or before its cutoff, or one without `iat` (it cannot show it was issued later)."""
    agent_cutoff, user_cutoff = cutoffs
    if presented.actor is not None and _before(presented.actor_issued_at, agent_cutoff):
        return "actor"
    if presented.user is not None and _before(presented.user_issued_at, user_cutoff):
        return "user"
    return None


def _before(issued_at: int | None, cutoff: int | None) -> bool:
    return cutoff is not None and (issued_at is None or issued_at <= cutoff)
