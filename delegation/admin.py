"""Ending tasks with their descendants and tokens: by their agent, an admin, or the command line; and
revoking everything of one party (an agent, a domain of agents, a user)."""

from __future__ import annotations

import logging
from typing import Any

from token_exchange.errors import OAuthError
from token_exchange.rfc9068 import new_id

from .audit import AuditEvent
from .observe import NoObserver, Observer
from .records import Party
from .store import TaskEnding
from .tasks import ADMIN, COMPLETED, REVOKED, USER, Revocation, Task

log = logging.getLogger(__name__)


class NotFound(OAuthError):
    """No such task for this caller (a task of another agent is reported the same way)."""

    error = "not_found"
    status = 404


class TaskAdmin:
    """Each revocation is counted by `observer` under its kind: the action (`complete`, `revoke`,
    `admin_revoke`, `admin_complete`) or the party (`agent`, `domain`, `user`), with the tasks it ended."""

    def __init__(self, store: TaskEnding, observer: Observer | None = None) -> None:
        self.store = store
        self.observer = observer or NoObserver()

    async def revoke_task(self, task_id: str, *, admin: str, now: int, state: str = REVOKED) -> dict[str, Any]:
        """An admin ends any task (revoked, or completed on the agent's behalf)."""
        task = await self.store.task(task_id)
        if task is None:
            raise NotFound("no such task")
        action = "admin_complete" if state == COMPLETED else "admin_revoke"
        revocation = await self.end(task, state=state, by=admin, action=action, now=now, initiator=ADMIN)
        return task_state(await self.store.task(task_id) or task, revocation)

    async def revoke_matching(self, party: Party, *, admin: str, now: int) -> dict[str, Any]:
        event = audit_event("admin_revoke", admin, None, now, reasons=(f"revoke everything of {party.describe()}",))
        revocation = await self.store.end_matching(party, reason=f"revoked by admin {admin}", now=now, event=event)
        self.observer.revoked(party.kind, len(revocation.task_ids) if revocation else 0)
        return {"revoked_tasks": list(revocation.task_ids) if revocation else [],
                "revoked_tokens": len(revocation.jtis) if revocation else 0}

    async def end(self, task: Task, *, state: str, by: str, action: str, now: int,
                  by_domain: str | None = None, initiator: str = USER) -> Revocation | None:
        """End `task`, its descendants and their tokens; `by` (in `by_domain`, for an agent) is audited, and
        `initiator` (the user's own agent, unless an admin) told to SSF receivers."""
        event = audit_event(action, by, task.id, now, domain=by_domain)
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


def task_state(task: Task, revocation: Revocation | None) -> dict[str, Any]:
    return {
        "task_id": task.id,
        "state": task.state,
        "ended_tasks": list(revocation.task_ids) if revocation else [],
        "revoked_tokens": len(revocation.jtis) if revocation else 0,
    }
