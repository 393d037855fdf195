"""Fakes for the token endpoint's seams, where a unit test needs to choose what the real part would say:
identity verifiers returning chosen identities, an in-memory store for the slices the flows write
(`TaskRecords` + `AuditLog`), and a policy engine returning a chosen `Decision`.

Everything else a flow uses stays real in the tests: the signer and its keys, the task-token verifier,
the resources, the parsing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from delegation.audit import AuditEvent
from delegation.policy import Decision, PolicyInput
from delegation.records import IssuedTokenRecord, Presented
from delegation.store import AuditLog, AuditQuery, AuditRecord, TaskRecords
from delegation.tasks import Task
from token_exchange.actors import ActorRef, ActorVerifier, VerifiedActor
from token_exchange.jws import TokenError
from token_exchange.user_tokens import VerifiedSubject


class FakeActors:
    """An `ActorVerifier`: a known token gives its agent, any other raises `TokenError`. Calls are kept."""

    def __init__(self, actors: Mapping[str, VerifiedActor]) -> None:
        self.actors = dict(actors)
        self.calls: list[str] = []

    async def verify(self, token: str, *, now: int) -> VerifiedActor:
        self.calls.append(token)
        if token not in self.actors:
            raise TokenError("signature rejected: not a token this fake knows")
        return self.actors[token]


class FakeUsers:
    """The user-token verifier's seam: a known token gives its user, any other raises `TokenError`."""

    def __init__(self, users: Mapping[str, VerifiedSubject]) -> None:
        self.users = dict(users)
        self.calls: list[str] = []

    async def verify(self, token: str, *, now: int) -> VerifiedSubject:
        self.calls.append(token)
        if token not in self.users:
            raise TokenError("issuer is not a configured subject issuer")
        return self.users[token]


@dataclass
class Write:
    """One committed write: what the flow asked the store to keep, all or nothing."""

    event: AuditEvent
    presented: Presented
    token: IssuedTokenRecord | None = None  # record_grant
    task: Task | None = None  # record_task, or record_grant's implicit task


@dataclass
class FakeStore:
    """`TaskRecords` and `AuditLog` in memory. `fail(method, error)` makes that method raise `error`
    (`TaskEnded`, `CredentialRevoked(...)`, `StoreError`) before anything is kept, as a transaction would."""

    tasks: dict[str, Task] = field(default_factory=dict)
    writes: list[Write] = field(default_factory=list)
    appended: list[AuditEvent] = field(default_factory=list)  # audit events written on their own (refusals)
    agent_cutoff: int | None = None
    user_cutoff: int | None = None
    cutoff_queries: list[tuple[ActorRef | None, tuple[str, str] | None]] = field(default_factory=list)
    failures: dict[str, Exception] = field(default_factory=dict)
    sync_problem: str | None = None  # what `revocation_sync_problem` says (None: in sync)

    def revocation_sync_problem(self) -> str | None:
        return self.sync_problem

    def fail(self, method: str, error: Exception) -> None:
        self.failures[method] = error

    def _enter(self, method: str) -> None:
        if (error := self.failures.get(method)) is not None:
            raise error

    @property
    def events(self) -> list[AuditEvent]:
        """Every audit event, whichever write carried it, in order."""
        return [*(w.event for w in self.writes), *self.appended]

    @property
    def grants(self) -> list[IssuedTokenRecord]:
        return [w.token for w in self.writes if w.token is not None]

    async def cutoffs(self, actor: ActorRef | None, *, user: tuple[str, str] | None, now: int
                      ) -> tuple[int | None, int | None]:
        self._enter("cutoffs")
        self.cutoff_queries.append((actor, user))
        return self.agent_cutoff, self.user_cutoff

    cached_cutoffs = cutoffs

    async def task(self, task_id: str) -> Task | None:
        self._enter("task")
        return self.tasks.get(task_id)

    async def record_grant(self, token: IssuedTokenRecord, event: AuditEvent, *, presented: Presented,
                           task: Task | None = None) -> None:
        self._enter("record_grant")
        if task is not None:
            self.tasks[task.id] = task
        self.writes.append(Write(event, presented, token=token, task=task))

    async def record_task(self, task: Task, event: AuditEvent, *, presented: Presented) -> None:
        self._enter("record_task")
        self.tasks[task.id] = task
        self.writes.append(Write(event, presented, task=task))

    async def append_audit(self, event: AuditEvent) -> None:
        self._enter("append_audit")
        self.appended.append(event)

    async def audit_events(self, query: AuditQuery) -> list[AuditRecord]:
        return [AuditRecord(i, e) for i, e in enumerate(self.events, start=1)][: query.limit]


def grants_what_was_asked(query: PolicyInput) -> Decision:
    """The most permissive policy: every requested scope, no lifetime of its own."""
    return Decision(allow=True, scope=tuple(query.as_json()["request"]["scope"]), reasons=("fake allows",))


class FakePolicy:
    """A `PolicyEngine` answering with a chosen `Decision` (or a function of the query); queries are kept."""

    engine = "fake"

    def __init__(self, decision: Decision | Callable[[PolicyInput], Decision] = grants_what_was_asked, *,
                 revision: str = "rev-fake", decision_id: str = "decision-fake") -> None:
        self.decision = decision
        self.revision = revision
        self.decision_id = decision_id
        self.queries: list[PolicyInput] = []

    async def decide(self, query: PolicyInput) -> Decision:
        self.queries.append(query)
        made = self.decision(query) if callable(self.decision) else self.decision
        return Decision(made.allow, made.scope, made.ttl, made.reasons, made.error, revision=self.revision,
                        decision_id=self.decision_id)


# `mypy tests/delegation/fakes.py` checks that the fakes satisfy the seams they stand in for.
_actors: ActorVerifier = FakeActors({})
_records: TaskRecords = FakeStore()
_audit: AuditLog = FakeStore()
