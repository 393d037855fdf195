"""Ending tasks and telling resource servers: /tasks/{id}/complete, /revoke, /introspect, /revocations."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from token_exchange.actors import VerifiedActor
from token_exchange.errors import InvalidRequest, shown

from .auth import agent, deputy, resource_client
from .http_forms import read_form
from .openapi import EmptyBody, FeedPage, IntrospectionBody, TaskEndedBody, TokenForm7009, documented

router = APIRouter()
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
FEED_PAGE = 500
MAX_CURSOR = 2**63 - 1  # SQLite integers
KEEP_ALIVE_S = 15


@router.post("/tasks/{task_id}/complete", **documented(
    TaskEndedBody, summary="The task's own agent ends it, its descendants and every token under them"))
async def complete(task_id: str, request: Request, caller: VerifiedActor = Depends(agent)) -> JSONResponse:  # noqa: B008
    """The task's agent ends it; every token derived from it stops working."""
    result = await deputy(request).lifecycle.complete(task_id, agent=caller.ref, now=int(time.time()))
    return JSONResponse(result, headers=NO_STORE)


@router.post("/revoke", **documented(
    EmptyBody, form_body=TokenForm7009, summary="RFC 7009: revoke an access token, or a task token's task"))
async def revoke(request: Request, caller: VerifiedActor = Depends(agent)) -> JSONResponse:  # noqa: B008
    """RFC 7009 §2.1; §2.2: 200 also for invalid or unknown tokens."""
    form = dict(_single(await read_form(request)))
    await deputy(request).lifecycle.revoke(form.get("token", ""), agent=caller.ref, now=int(time.time()))
    return JSONResponse({}, headers=NO_STORE)


@router.post("/introspect", **documented(
    IntrospectionBody, form_body=TokenForm7009, summary="RFC 7662: whether a token of the caller's resource is active"))
async def introspect(request: Request, caller: VerifiedActor = Depends(resource_client)) -> JSONResponse:  # noqa: B008
    """RFC 7662 §2.1, §2.2."""
    form = dict(_single(await read_form(request)))
    body = await deputy(request).lifecycle.introspect(form.get("token", ""), caller=caller.id, now=int(time.time()))
    return JSONResponse(body, headers=NO_STORE)


@router.get("/revocations", **documented(
    FeedPage, summary="The revocation feed, paged, limited to the caller's resources"))
async def revocations(request: Request, since: Annotated[int, Query(ge=0, le=MAX_CURSOR)] = 0,
                      limit: Annotated[int, Query(ge=1, le=FEED_PAGE)] = FEED_PAGE,
                      caller: VerifiedActor = Depends(resource_client)) -> JSONResponse:  # noqa: B008
    """The revocation feed, paged, about the caller's resources only: events after cursor `since`; `next`
    is the cursor to ask with next (past events the caller is not told about, too)."""
    page = await deputy(request).lifecycle.feed(caller.id, since=since, limit=limit)
    return JSONResponse({"events": [e.as_dict() for e in page.events], "next": page.next}, headers=NO_STORE)


@router.get("/revocations/stream", **documented(
    None, stream=True, summary="The revocation feed as Server-Sent Events"))
async def revocation_stream(request: Request, since: Annotated[int, Query(ge=0, le=MAX_CURSOR)] = 0,
                            caller: VerifiedActor = Depends(resource_client)) -> EventSourceResponse:  # noqa: B008
    """The same events as Server-Sent Events; `id` is the cursor (resume with Last-Event-ID). The stream ends
    before its next event once the caller's SVID has expired or been revoked."""
    last = request.headers.get("last-event-id", "")
    cursor = int(last) if last.isascii() and last.isdigit() and len(last) < 19 else since

    async def events() -> AsyncIterator[ServerSentEvent]:
        yield ServerSentEvent(comment="deputy revocation feed")
        parts = deputy(request)
        async for event in parts.callers.while_valid(caller, parts.lifecycle.follow(caller.id, cursor)):
            yield ServerSentEvent(data=json.dumps(event.as_dict()), event="revocation", id=str(event.seq))

    return EventSourceResponse(events(), ping=KEEP_ALIVE_S, headers={"Cache-Control": "no-store"})


def _single(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    names = [name for name, _ in pairs]
    if repeated := {n for n in names if names.count(n) > 1}:
        raise InvalidRequest(f"{shown(sorted(repeated)[0], 40, otherwise='a parameter')} is repeated")
    return pairs
