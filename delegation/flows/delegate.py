"""Delegating to a sub-agent: a child task from the parent's task token, presented by the sub-agent with
its own identity. A replacement only narrows (transaction tokens draft §13.15): scope, resources, deadline."""

from __future__ import annotations

from token_exchange.errors import InvalidRequest, InvalidTarget, UnauthorizedClient, shown
from token_exchange.rfc8693 import ExchangeRequest, TokenResponse
from token_exchange.txn_tokens import TaskContext

from ..policy import PolicyInput
from ..token_endpoint import FlowContext
from .steps import ExchangeFlow, granted, narrowed


class Delegate(ExchangeFlow):
    action = "delegate"
    subject_is_task = True
    issues_task = True

    async def handle(self, ctx: FlowContext) -> TokenResponse:
        steps, req, now = self.steps, ctx.exchange, ctx.now
        actor = await steps.actor(ctx)
        presented = await steps.credentials(ctx, actor)
        parent = await steps.live_task(ctx)
        if actor.ref in parent.chain:
            raise UnauthorizedClient("an agent already in the delegation chain cannot be delegated to again")
        audiences = tuple(r.audience for r in steps.task_resources(req)) if req.targets else parent.audiences
        if not set(audiences) <= set(parent.audiences):
            raise InvalidTarget("a delegated task cannot add resources its parent task does not have")
        wanted = narrowed(req.scope & parent.scope, "within the parent task")
        deadline = now + req.task_ttl if req.task_ttl else parent.deadline
        if deadline > parent.deadline:
            raise InvalidRequest("task_ttl would outlive the parent task; a delegated task only narrows")
        child = parent.child(agent=actor.ref, scope=wanted, audiences=audiences, created_at=now, deadline=deadline,
                             context=_narrowed_context(parent.context, req))
        query = PolicyInput.build("delegate", task=child, subject=None, actor=actor, request=req,
                                  audiences=list(audiences), now=now, parent=parent)
        decision = await steps.decide(query, ctx)
        return await steps.issue_task(child, granted(decision, wanted), decision, ctx, presented)


def _narrowed_context(parent: TaskContext, req: ExchangeRequest) -> TaskContext:
    """The parent's `tctx` stays (§13.15: it may gain values, never change them), its purpose included;
    `rctx` is this request's."""
    if parent.purpose is not None and req.purpose is not None and req.purpose != parent.purpose:
        raise InvalidRequest("purpose cannot change in a delegated task (the parent task has one)")
    if changed := sorted(k for k, v in req.details.items() if k in parent.details and parent.details[k] != v):
        raise InvalidRequest(f"request_details cannot change {shown(changed[0], 40, otherwise='a key')} of the "
                             "parent task")
    return TaskContext(parent.purpose or req.purpose, {**parent.details, **req.details}, req.context)
