"""An access token within an open task, for its own agent: one of the task's resources, within its scope."""

from __future__ import annotations

from token_exchange.errors import InvalidRequest, InvalidTarget
from token_exchange.rfc8693 import TokenResponse

from ..policy import PolicyInput
from ..token_endpoint import FlowContext
from .steps import ExchangeFlow, granted, narrowed


class TaskAccess(ExchangeFlow):
    action = "exchange"
    subject_is_task = True
    issues_task = False

    async def handle(self, ctx: FlowContext) -> TokenResponse:
        steps, req = self.steps, ctx.exchange
        actor = await steps.actor(ctx)
        presented = await steps.credentials(ctx, actor)
        task = await steps.live_task(ctx)
        if task.agent != actor.ref:  # transaction tokens §13.12: a task token authenticates nobody
            raise InvalidRequest("subject_token rejected: the task belongs to another agent")
        resource = steps.resource(req.single_target(), actor)
        if resource.audience not in task.audiences:
            raise InvalidTarget("the task does not include this resource")
        wanted = narrowed(req.scope & task.scope & resource.scopes, "within the task and offered by the resource")
        query = PolicyInput.build("exchange", task=task, subject=None, actor=actor, request=req,
                                  audiences=[resource.audience], now=ctx.now)
        decision = await steps.decide(query, ctx)
        return await steps.issue_access(task, resource, granted(decision, wanted), decision, ctx, presented,
                                       bound_to=actor.dpop_jkt)
