"""/admin: inspect tasks, complete or revoke a task, an agent, a trust domain or a user; read the audit trail."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from delegation.admin import NotFound
from delegation.store import AuditQuery, TaskQuery
from delegation.tasks import COMPLETED

from .admin_views import revoked_party, task_view
from .auth import admin, deputy
from .openapi import AuditPage, RevokedBody, TaskDetailBody, TaskEndedBody, TaskList, documented

router = APIRouter(prefix="/admin")
NO_STORE = {"Cache-Control": "no-store"}
MAX_TIME = 2**63 - 1  # SQLite integers
Admin = Annotated[str, Depends(admin)]


@router.get("/tasks", **documented(TaskList, summary="Tasks, newest first"))
async def list_tasks(request: Request, _: Admin, agent: str | None = None, user: str | None = None,
                     state: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JSONResponse:
    tasks = await deputy(request).store.tasks(TaskQuery(agent=agent, user=user, state=state, limit=limit))
    return JSONResponse({"tasks": [task_view(t) for t in tasks]}, headers=NO_STORE)


@router.get("/tasks/{task_id}", **documented(TaskDetailBody, summary="One task: its chain, children and tokens"))
async def show_task(task_id: str, request: Request, _: Admin) -> JSONResponse:
    detail = await deputy(request).store.task_detail(task_id)
    if detail is None:
        raise NotFound("no such task")
    body = {**task_view(detail.task), "children": list(detail.children),
            "tokens": [token.as_dict() for token in detail.tokens]}
    return JSONResponse(body, headers=NO_STORE)


@router.post("/tasks/{task_id}/revoke", **documented(
    TaskEndedBody, summary="Revoke a task, its descendants and their tokens"))
async def revoke_task(task_id: str, request: Request, who: Admin) -> JSONResponse:
    result = await deputy(request).lifecycle.admin.revoke_task(task_id, admin=who, now=int(time.time()))
    return JSONResponse(result, headers=NO_STORE)


@router.post("/tasks/{task_id}/complete", **documented(
    TaskEndedBody, summary="Complete a task on its agent's behalf, with its descendants and their tokens"))
async def complete_task(task_id: str, request: Request, who: Admin) -> JSONResponse:
    result = await deputy(request).lifecycle.admin.revoke_task(task_id, admin=who, now=int(time.time()),
                                                               state=COMPLETED)
    return JSONResponse(result, headers=NO_STORE)


@router.post("/revoke", **documented(
    RevokedBody, summary="Revoke everything of an agent, a trust domain or a user, and bar their credentials"))
async def revoke_matching(request: Request, who: Admin, agent: str | None = None, trust_domain: str | None = None,
                          user: str | None = None, issuer: str | None = None) -> JSONResponse:
    """Revoke everything of one agent (`agent`: a SPIFFE ID, or a Kubernetes or OIDC workload id with its
    workload `issuer`), one trust domain, or one user (`user`, with `issuer` to name one subject issuer;
    without it, that subject at every subject issuer)."""
    party = revoked_party(agent=agent, trust_domain=trust_domain, user=user, issuer=issuer)
    result = await deputy(request).lifecycle.admin.revoke_matching(party, admin=who, now=int(time.time()))
    return JSONResponse(result, headers=NO_STORE)


@router.get("/audit", **documented(AuditPage, summary="The audit trail, newest first"))
async def audit(request: Request, _: Admin, task: str | None = None, agent: str | None = None,
                user: str | None = None, since: Annotated[int | None, Query(ge=0, le=MAX_TIME)] = None,
                until: Annotated[int | None, Query(ge=0, le=MAX_TIME)] = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JSONResponse:
    query = AuditQuery(task=task, agent=agent, user=user, since=since, until=until, limit=limit)
    events = await deputy(request).store.audit_events(query)
    return JSONResponse({"events": [e.as_dict() for e in events]}, headers=NO_STORE)
