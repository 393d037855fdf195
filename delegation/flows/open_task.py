"""Opening a task (transaction tokens draft §11): a task token for one user, one agent, a set of resources
and a scope ceiling, from the user's token; it lives no longer than that token unless the policy says so
(§6, `outlive_subject`)."""

from __future__ import annotations

from token_exchange.errors import InvalidRequest
from token_exchange.rfc8693 import TokenResponse
from token_exchange.txn_tokens import TaskContext

from ..policy import PolicyInput
from ..tasks import Task
from ..token_endpoint import FlowContext
from .steps import ExchangeFlow, granted, narrowed, union_scopes


class OpenTask(ExchangeFlow):
    action = "open_task"
    subject_is_task = False
    issues_task = True

    async def handle(self, ctx: FlowContext) -> TokenResponse:
        steps, req, now = self.steps, ctx.exchange, ctx.now
        actor = await steps.actor(ctx)
        user = await steps.user(ctx)
        presented = await steps.credentials(ctx, actor, user)
        if user.expires_at <= now:  # within the clock-skew leeway, but no task starts from it
            raise InvalidRequest("subject_token rejected: expired")
        resources = steps.task_resources(req)
        wanted = narrowed(req.scope & user.scope & union_scopes(resources),
                          "held by the user and offered by the resources")
        lifetimes = steps.lifetimes
        deadline = now + min(req.task_ttl or lifetimes.task_default_ttl, lifetimes.task_max_ttl)
        task = Task.new_root(agent=actor.ref, user_issuer=user.issuer, user_subject=user.subject, scope=wanted,
                             audiences=tuple(r.audience for r in resources), created_at=now, deadline=deadline,
                             context=TaskContext(req.purpose, req.details, req.context))
        query = PolicyInput.build("open_task", task=task, subject=user, actor=actor, request=req,
                                  audiences=list(task.audiences), now=now)
        decision = await steps.decide(query, ctx)
        return await steps.issue_task(task, granted(decision, wanted), decision, ctx, presented,
                                      subject_expires_at=user.expires_at)
