"""/admin: inspect tasks, revoke a task, an agent, a trust domain or a user; block a party for a while;
read the audit trail. Task and block ids may be given as unique prefixes; every state change takes an
optional JSON body with a `reason`, audited with the acting admin."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from delegation.admin import NotFound, block_view
from delegation.store import AuditQuery, TaskQuery
from delegation.tasks import COMPLETED, REVOKED
from delegation.times import instant, span
from token_exchange.errors import InvalidRequest

from .admin_views import blocked_party, revoked_party, task_view
from .auth import admin, deputy
from .http_forms import read_json
from .openapi import (
    AuditPage,
    BlockAdded,
    BlockList,
    BlockOne,
    BlockRequest,
    ReasonBody,
    RevokedBody,
    TaskDetailBody,
    TaskEndedBody,
    TaskList,
    documented,
)

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
    app = deputy(request)
    detail = await app.store.task_detail(await app.lifecycle.admin.task_id(task_id))
    if detail is None:
        raise NotFound("no such task")
    body = {**task_view(detail.task), "children": list(detail.children),
            "tokens": [token.as_dict() for token in detail.tokens]}
    return JSONResponse(body, headers=NO_STORE)


@router.post("/tasks/{task_id}/revoke", **documented(
    TaskEndedBody, json=ReasonBody, summary="Revoke a task, its descendants and their tokens"))
async def revoke_task(task_id: str, request: Request, who: Admin) -> JSONResponse:
    return await _end_task(task_id, request, who, state=REVOKED)


@router.post("/tasks/{task_id}/complete", **documented(
    TaskEndedBody, json=ReasonBody, summary="Complete a task on its agent's behalf, with its descendants and tokens"))
async def complete_task(task_id: str, request: Request, who: Admin) -> JSONResponse:
    return await _end_task(task_id, request, who, state=COMPLETED)


async def _end_task(task_id: str, request: Request, who: str, *, state: str) -> JSONResponse:
    reason = _reason(await _optional_json(request))
    result = await deputy(request).lifecycle.admin.revoke_task(task_id, admin=who, now=int(time.time()),
                                                               state=state, reason=reason)
    return JSONResponse(result, headers=NO_STORE)


@router.post("/revoke", **documented(
    RevokedBody, json=ReasonBody,
    summary="Revoke everything of an agent, a trust domain or a user, and bar their credentials"))
async def revoke_matching(request: Request, who: Admin, agent: str | None = None, trust_domain: str | None = None,
                          user: str | None = None, issuer: str | None = None) -> JSONResponse:
    """Revoke everything of one agent (`agent`: a SPIFFE ID, or a Kubernetes or OIDC workload id with its
    workload `issuer`), one trust domain, or one user (`user`, with `issuer` to name one subject issuer;
    without it, that subject at every subject issuer). `matched` is false when nothing was revoked."""
    reason = _reason(await _optional_json(request))
    party = revoked_party(agent=agent, trust_domain=trust_domain, user=user, issuer=issuer)
    result = await deputy(request).lifecycle.admin.revoke_matching(party, admin=who, now=int(time.time()),
                                                                   reason=reason)
    return JSONResponse(result, headers=NO_STORE)


@router.post("/blocks", **documented(BlockAdded, json=BlockRequest, status=201, summary=(
    "Block an agent, a trust domain, a workload issuer or a user for a while, and revoke all it holds")))
async def add_block(request: Request, who: Admin) -> JSONResponse:
    """Every exchange by the party is refused, before the policy is asked, until the block expires or is
    lifted; its open tasks and their tokens are revoked at once, as by /admin/revoke."""
    body = await read_json(request)
    unknown = set(body) - {"agent", "trust_domain", "workload_issuer", "user", "issuer", "for", "reason"}
    if unknown:
        raise InvalidRequest(f"unknown member {sorted(unknown)[0]}")
    kind, party = blocked_party(body)
    if "for" not in body:
        raise InvalidRequest("give how long the block lasts: for (seconds, or a span such as 2h)")
    reason = _reason(body)
    if reason is None:
        raise InvalidRequest("give a reason for the block")
    result = await deputy(request).lifecycle.admin.block(kind, party, seconds=span(body["for"], "for"),
                                                         reason=reason, admin=who, now=int(time.time()))
    return JSONResponse(result, status_code=201, headers=NO_STORE)


@router.get("/blocks", **documented(BlockList, summary="The active blocks, newest first (all=true: every block)"))
async def list_blocks(request: Request, _: Admin, all: bool = False) -> JSONResponse:
    blocks = await deputy(request).store.blocks(now=int(time.time()), include_inactive=all)
    return JSONResponse({"blocks": [block_view(b) for b in blocks]}, headers=NO_STORE)


@router.delete("/blocks/{block_id}", **documented(BlockOne, json=ReasonBody, summary="Lift an active block"))
async def lift_block(block_id: str, request: Request, who: Admin) -> JSONResponse:
    reason = _reason(await _optional_json(request))
    result = await deputy(request).lifecycle.admin.lift(block_id, admin=who, now=int(time.time()), reason=reason)
    return JSONResponse(result, headers=NO_STORE)


@router.get("/audit", **documented(AuditPage, summary="The audit trail, newest first"))
async def audit(request: Request, _: Admin, task: str | None = None, agent: str | None = None,
                user: str | None = None, since: Annotated[str | None, Query(max_length=40)] = None,
                until: Annotated[str | None, Query(max_length=40)] = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JSONResponse:
    """`since` and `until`: ISO 8601 UTC, Unix seconds, or a span back from now (`1h`)."""
    now = int(time.time())
    since_at, until_at = (_time(v, n, now) for v, n in ((since, "since"), (until, "until")))
    query = AuditQuery(task=task, agent=agent, user=user, since=since_at, until=until_at, limit=limit)
    events = await deputy(request).store.audit_events(query)
    return JSONResponse({"events": [e.as_dict() for e in events]}, headers=NO_STORE)


def _time(text: str | None, name: str, now: int) -> int | None:
    if text is None:
        return None
    at = instant(text, name, now=now)
    if not 0 <= at <= MAX_TIME:
        raise InvalidRequest(f"{name} is out of range")
    return at


async def _optional_json(request: Request) -> dict[str, Any]:
    """A JSON body, if one is sent (state changes may come without one)."""
    if request.headers.get("content-length", "0") == "0" and "transfer-encoding" not in request.headers:
        return {}
    return await read_json(request)


def _reason(body: dict[str, Any]) -> str | None:
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 500 or not reason.isprintable()):
        raise InvalidRequest("reason must be printable text of at most 500 characters")
    return reason or None
