"""/admin: inspect tasks, revoke a task, an agent, a trust domain or a user; read the audit trail."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from delegation.lifecycle import NotFound
from delegation.tasks import Task
from token_exchange.errors import InvalidRequest
from token_exchange.spiffe import SpiffeId, SpiffeIdError

from .auth import admin, deputy

router = APIRouter(prefix="/admin")
NO_STORE = {"Cache-Control": "no-store"}
MAX_TIME = 2**63 - 1  # SQLite integers


def task_view(task: Task) -> dict[str, Any]:
    return {
        "id": task.id, "parent_id": task.parent_id, "root_id": task.root_id, "chain": list(task.chain),
        "agent": task.agent, "user": {"iss": task.user_issuer, "sub": task.user_subject},
        "scope": str(task.scope), "audiences": list(task.audiences), "purpose": task.purpose,
        "created_at": task.created_at, "deadline": task.deadline, "implicit": task.implicit,
        "state": task.state, "ended_at": task.ended_at,
    }


@router.get("/tasks")
async def list_tasks(request: Request, agent: str | None = None, user: str | None = None,
                     state: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                     _: str = Depends(admin)) -> JSONResponse:
    tasks = await deputy(request).store.tasks(agent=agent, user=user, state=state, limit=limit)
    return JSONResponse({"tasks": [task_view(t) for t in tasks]}, headers=NO_STORE)


@router.get("/tasks/{task_id}")
async def show_task(task_id: str, request: Request, _: str = Depends(admin)) -> JSONResponse:
    store = deputy(request).store
    task = await store.task(task_id)
    if task is None:
        raise NotFound("no such task")
    body = {**task_view(task), "children": await store.children(task_id), "tokens": await store.task_tokens(task_id)}
    return JSONResponse(body, headers=NO_STORE)


@router.post("/tasks/{task_id}/revoke")
async def revoke_task(task_id: str, request: Request, who: str = Depends(admin)) -> JSONResponse:
    result = await deputy(request).lifecycle.admin.revoke_task(task_id, admin=who, now=int(time.time()))
    return JSONResponse(result, headers=NO_STORE)


@router.post("/revoke")
async def revoke_matching(request: Request, agent: str | None = None, trust_domain: str | None = None,
                          user: str | None = None, issuer: str | None = None,
                          who: str = Depends(admin)) -> JSONResponse:
    """Revoke everything of one agent (`agent`), one trust domain, or one user (`user`, with `issuer` to
    name one subject issuer; without it, that subject at every subject issuer)."""
    if sum(x is not None for x in (agent, trust_domain, user)) != 1:
        raise InvalidRequest("give exactly one of agent, trust_domain or user")
    try:
        if agent is not None:
            SpiffeId.parse(agent)
        if trust_domain is not None:
            SpiffeId.check_trust_domain(trust_domain)
    except SpiffeIdError as exc:
        raise InvalidRequest(f"not a SPIFFE ID or trust domain: {exc}") from exc
    result = await deputy(request).lifecycle.admin.revoke_matching(
        admin=who, now=int(time.time()), agent=agent, trust_domain=trust_domain,
        user=(issuer, user) if user is not None else None,
    )
    return JSONResponse(result, headers=NO_STORE)


@router.get("/audit")
async def audit(request: Request, task: str | None = None, agent: str | None = None, user: str | None = None,
                since: Annotated[int | None, Query(ge=0, le=MAX_TIME)] = None,
                until: Annotated[int | None, Query(ge=0, le=MAX_TIME)] = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100, _: str = Depends(admin)) -> JSONResponse:
    events = await deputy(request).store.audit_events(task=task, agent=agent, user=user, since=since,
                                                      until=until, limit=limit)
    return JSONResponse({"events": events}, headers=NO_STORE)
