"""Tasks: the unit of delegated work. Every token belongs to one; a child task only ever narrows."""

from __future__ import annotations

from dataclasses import dataclass, field

from token_exchange.actors import ActorRef
from token_exchange.rfc9068 import new_id
from token_exchange.scope import Scope
from token_exchange.txn_tokens import TaskContext

from .records import Party

OPEN, COMPLETED, REVOKED, EXPIRED = "open", "completed", "revoked", "expired"


@dataclass(frozen=True, slots=True)
class Task:
    id: str
    parent_id: str | None
    root_id: str
    chain: tuple[ActorRef, ...]  # the first agent first; the last is this task's agent
    user_issuer: str
    user_subject: str
    scope: Scope
    audiences: tuple[str, ...]
    created_at: int
    deadline: int
    context: TaskContext = field(default_factory=TaskContext)
    implicit: bool = False
    state: str = OPEN
    ended_at: int | None = None

    @classmethod
    def new_root(
        cls, *, agent: ActorRef, user_issuer: str, user_subject: str, scope: Scope, audiences: tuple[str, ...],
        context: TaskContext, created_at: int, deadline: int, implicit: bool = False,
    ) -> Task:
        """A task opened with a user's token: its own root, its agent the whole chain."""
        task_id = new_id()
        return cls(task_id, None, task_id, (agent,), user_issuer, user_subject, scope, audiences, created_at,
                   deadline, context, implicit)

    def child(self, *, agent: ActorRef, scope: Scope, audiences: tuple[str, ...], context: TaskContext,
              created_at: int, deadline: int) -> Task:
        """A sub-agent's task under this one; the caller has narrowed scope, audiences and deadline."""
        return Task(new_id(), self.id, self.root_id, (*self.chain, agent), self.user_issuer, self.user_subject,
                    scope, audiences, created_at, deadline, context)

    @property
    def agent(self) -> ActorRef:
        return self.chain[-1]

    @property
    def purpose(self) -> str | None:
        return self.context.purpose

    @property
    def depth(self) -> int:
        """Delegation hops below the first agent: 0 for a task opened with the user's token."""
        return len(self.chain) - 1

    def ended(self, now: int) -> str | None:
        """Why the task can no longer be used, or None while it is open."""
        if self.state != OPEN:
            return self.state
        return EXPIRED if self.deadline <= now else None

    def policy_view(self) -> dict[str, object]:
        return {
            "id": self.id,
            "purpose": self.purpose,
            "chain": [a.id for a in self.chain],
            "agent": self.agent.id,
            "scope": self.scope.sorted(),
            "audiences": list(self.audiences),
            "deadline": self.deadline,
            "depth": self.depth,
        }


@dataclass(frozen=True, slots=True)
class EndedTask:
    """A task a revocation ended, as an SSF receiver is told of it: its user, and `cause`, the id of the task
    whose ending started the cascade that reached it (itself for the task named)."""

    id: str
    user_issuer: str
    user_subject: str
    cause: str


ADMIN, USER, POLICY, SYSTEM = "admin", "user", "policy", "system"
"""Who ended it (CAEP 1.0 §2 `initiating_entity`): an admin, the user's own agent, a policy (a deadline), the
system."""


@dataclass(frozen=True, slots=True)
class Revocation:
    """One event of the revocation feed: the tasks and tokens it ended.

    `tasks` details `task_ids` (same order), `party` is the party an admin revocation named, and `initiator`
    who ended them; the native feed shows the first five fields, SSF SETs are made from all of them."""

    seq: int
    at: int
    reason: str
    task_ids: tuple[str, ...]
    jtis: tuple[str, ...]
    tasks: tuple[EndedTask, ...] = ()
    party: Party | None = None
    initiator: str = SYSTEM

    def as_dict(self) -> dict[str, object]:
        return {"seq": self.seq, "at": self.at, "reason": self.reason, "task_ids": list(self.task_ids),
                "jtis": list(self.jtis)}
