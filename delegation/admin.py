"""Ending tasks with their descendants and tokens: by their agent, an admin, or the command line; revoking
everything of one party (an agent, a domain of agents, a user); blocking a party for a while. Each admin
action is audited with the acting admin (the event's `agent`) and the reason given."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from token_exchange.errors import InvalidRequest, OAuthError
from token_exchange.rfc9068 import new_id

from .audit import AuditEvent
from .observe import NoObserver, Observer
from .records import Block, Party
from .store import AdminViews, Blocks, TaskEnding
from .tasks import ADMIN, COMPLETED, REVOKED, USER, Revocation, Task
from .times import iso

MIN_PREFIX = 4
MAX_MATCHES = 100

log = logging.getLogger(__name__)


class NotFound(OAuthError):
    """No such task for this caller (a task of another agent is reported the same way)."""

    error = "not_found"
    status = 404


class AdminStore(TaskEnding, AdminViews, Blocks, Protocol):
    """What admins act on: tasks to end, and blocks."""


class TaskAdmin:
    """Each revocation is counted by `observer` under its kind: the action (`complete`, `revoke`,
    `admin_revoke`, `admin_complete`) or the party (`agent`, `domain`, `user`), with the tasks it ended."""

    def __init__(self, store: AdminStore, observer: Observer | None = None) -> None:
        self.store = store
        self.observer = observer or NoObserver()

    async def task_id(self, prefix: str) -> str:
        """The task a whole id or a unique prefix of one (at least MIN_PREFIX characters) names."""
        if await self.store.task(prefix) is not None:
            return prefix
        matches = await self.store.task_ids_with_prefix(prefix, limit=MAX_MATCHES) if len(prefix) >= MIN_PREFIX else []
        if not matches:
            raise NotFound("no such task" + ("" if len(prefix) >= MIN_PREFIX else
                                             f" (a prefix needs at least {MIN_PREFIX} characters)"))
        if len(matches) > 1:
            many = f"{len(matches)}" if len(matches) < MAX_MATCHES else f"{MAX_MATCHES} or more"
            raise InvalidRequest(f"task id prefix {prefix} matches {many} tasks: give more of the id")
        return matches[0]

    async def revoke_task(self, task_id: str, *, admin: str, now: int, state: str = REVOKED,
                          reason: str | None = None) -> dict[str, Any]:
        """An admin ends any task (revoked, or completed on the agent's behalf), named by a unique prefix."""
        task = await self.store.task(await self.task_id(task_id))
        if task is None:
            raise NotFound("no such task")
        action = "admin_complete" if state == COMPLETED else "admin_revoke"
        revocation = await self.end(task, state=state, by=admin, action=action, now=now, initiator=ADMIN,
                                    reason=reason)
        result = task_state(await self.store.task(task.id) or task, revocation)
        warnings = [] if revocation else [f"task {task.id} had already ended ({task.state}): nothing was revoked"]
        return {**result, "matched": revocation is not None, "warnings": warnings}

    async def revoke_matching(self, party: Party, *, admin: str, now: int, reason: str | None = None
                              ) -> dict[str, Any]:
        """Everything the party holds, and its credentials issued until now; says when that matched nothing,
        and warns about a party Deputy has never seen (a typo, most likely)."""
        revocation = await self._revoke(party, admin, now, reason, f"revoke everything of {party.describe()}")
        tasks, tokens = (list(revocation.task_ids), len(revocation.jtis)) if revocation else ([], 0)
        return {"revoked_tasks": tasks, "revoked_tokens": tokens, "revoked": {"tasks": len(tasks), "tokens": tokens},
                "matched": revocation is not None, "warnings": await self._never_seen(party)}

    async def block(self, kind: str, party: Party, *, seconds: int, reason: str, admin: str, now: int
                    ) -> dict[str, Any]:
        """Refuse every exchange by the party for `seconds` (docs/operations.md, Blocks), then revoke all it
        holds, as `revoke_matching` does."""
        block = Block(new_id(), kind, party.id, party.domain, reason, now, now + seconds, admin)
        await self.store.add_block(block, audit_event("block", admin, None, now, reasons=(
            f"block {party.describe()} until {iso(block.expires_at)}", *_reason(reason))))
        revocation = await self._revoke(block.target, admin, now, reason, f"revoke everything of blocked "
                                        f"{block.target.describe()}")
        tasks, tokens = (len(revocation.task_ids), len(revocation.jtis)) if revocation else (0, 0)
        return {"block": block_view(block), "revoked": {"tasks": tasks, "tokens": tokens},
                "warnings": await self._never_seen(block.target)}

    async def lift(self, prefix: str, *, admin: str, now: int, reason: str | None = None) -> dict[str, Any]:
        """End an active block, named by its id or a unique prefix of it."""
        matches = await self.store.blocks_with_prefix(prefix) if len(prefix) >= MIN_PREFIX else []
        if len(matches) != 1:
            raise (InvalidRequest(f"block id prefix {prefix} matches more than one block: give more of the id")
                   if matches else NotFound("no such block"))
        found = matches[0]
        event = audit_event("unblock", admin, None, now, reasons=(
            f"lift the block of {found.target.describe()}", *_reason(reason)))
        lifted = await self.store.lift_block(found.id, by=admin, reason=reason, now=now, event=event)
        if lifted is None:
            raise NotFound(f"block {found.id} is no longer active (it expired or was lifted)")
        return {"block": block_view(lifted)}

    async def _revoke(self, party: Party, admin: str, now: int, reason: str | None, what: str) -> Revocation | None:
        event = audit_event("admin_revoke", admin, None, now, reasons=(what, *_reason(reason)))
        revocation = await self.store.end_matching(party, reason=f"revoked by admin {admin}", now=now, event=event)
        self.observer.revoked(party.kind, len(revocation.task_ids) if revocation else 0)
        return revocation

    async def _never_seen(self, party: Party) -> list[str]:
        if await self.store.seen(party):
            return []
        return [f"Deputy has never seen {party.describe()} (no task of it is kept): check the name"]

    async def end(self, task: Task, *, state: str, by: str, action: str, now: int,
                  by_domain: str | None = None, initiator: str = USER, reason: str | None = None
                  ) -> Revocation | None:
        """End `task`, its descendants and their tokens; `by` (in `by_domain`, for an agent) is audited with
        the reason given, and `initiator` (the user's own agent, unless an admin) told to SSF receivers."""
        event = audit_event(action, by, task.id, now, domain=by_domain,
                            reasons=(f"{action} by {by}", *_reason(reason)))
        revocation = await self.store.end_tasks([task.id], state=state, reason=f"{action} by {by}", now=now,
                                                event=event, initiator=initiator)
        self.observer.revoked(action, len(revocation.task_ids) if revocation else 0)
        log.info("task.ended", extra={"task_id": task.id, "state": state, "by": by,
                                      "tokens": len(revocation.jtis) if revocation else 0})
        return revocation


def audit_event(action: str, by: str, task_id: str | None, now: int, *, jti: str | None = None,
                reasons: tuple[str, ...] = (), domain: str | None = None) -> AuditEvent:
    """A granted lifecycle event: `by` an admin, or an agent (`domain`: its trust domain or issuer)."""
    return AuditEvent(decision_id=new_id(), at=now, action=action, outcome="granted", agent=by, task_id=task_id,
                      jti=jti, reasons=reasons or (f"{action} by {by}",), agent_domain=domain)


def _reason(reason: str | None) -> tuple[str, ...]:
    return (f"reason: {reason}",) if reason else ()


def block_view(block: Block) -> dict[str, Any]:
    """A block as the admin API shows it: times as ISO 8601 UTC."""
    return {"id": block.id, "kind": block.kind, "party": block.party, "issuer": block.issuer,
            "reason": block.reason, "created_at": iso(block.created_at), "expires_at": iso(block.expires_at),
            "created_by": block.created_by, "lifted_at": iso(block.lifted_at), "lifted_by": block.lifted_by,
            "lift_reason": block.lift_reason}


def task_state(task: Task, revocation: Revocation | None) -> dict[str, Any]:
    return {
        "task_id": task.id,
        "state": task.state,
        "ended_tasks": list(revocation.task_ids) if revocation else [],
        "revoked_tokens": len(revocation.jtis) if revocation else 0,
    }
