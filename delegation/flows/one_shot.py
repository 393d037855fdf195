"""A user's token and the agent's identity for one access token (RFC 8693 §2.1), within an implicit task
that ends with the token; its life is capped by the user token's."""

from __future__ import annotations

from token_exchange.rfc8693 import TokenResponse
from token_exchange.txn_tokens import TaskContext

from ..policy import PolicyInput
from ..tasks import Task
from ..token_endpoint import FlowContext
from .steps import ExchangeFlow, granted, narrowed


class OneShotAccess(ExchangeFlow):
    action = "exchange"
    subject_is_task = False
    issues_task = False

    async def handle(self, ctx: FlowContext) -> TokenResponse:
        steps, req = self.steps, ctx.exchange
        actor = await steps.actor(ctx)
        user = await steps.user(ctx)
        presented = await steps.credentials(ctx, actor, user)
        resource = steps.resource(req.single_target(), actor)
        wanted = narrowed(req.scope & user.scope & resource.scopes, "held by the user and offered by the resource")
        task = Task.new_root(agent=actor.ref, user_issuer=user.issuer, user_subject=user.subject, scope=user.scope,
                             audiences=(), context=TaskContext(), created_at=ctx.now, deadline=user.expires_at,
                             implicit=True)
        query = PolicyInput.build("exchange", task=task, subject=user, actor=actor, request=req,
                                  audiences=[resource.audience], now=ctx.now)
        decision = await steps.decide(query, ctx)
        return await steps.issue_access(task, resource, granted(decision, wanted), decision, ctx, presented,
                                       bound_to=actor.dpop_jkt)
