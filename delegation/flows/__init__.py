"""The token-exchange grant's flows, one module each, tried in order by the token endpoint."""

from __future__ import annotations

from token_exchange import rfc8693

from ..token_endpoint import Grant
from .delegate import Delegate
from .one_shot import OneShotAccess
from .open_task import OpenTask
from .steps import ExchangeSteps, Lifetimes
from .task_access import TaskAccess

__all__ = ["ExchangeSteps", "Lifetimes", "token_exchange_grant"]


def token_exchange_grant(steps: ExchangeSteps) -> Grant:
    """RFC 8693: one-shot access tokens, opening a task, tokens within a task, delegating to a sub-agent."""
    flows = (OneShotAccess(steps), OpenTask(steps), TaskAccess(steps), Delegate(steps))
    return Grant(rfc8693.GRANT_TYPE, rfc8693.parse, flows)
