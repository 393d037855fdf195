"""Delegation through the SDK (docs/tasks.md, "Delegation to a sub-agent"): the delegating agent hands over a
serialisable value; the sub-agent joins with its own identity and works in its child task."""

from __future__ import annotations

import pytest

from deputy_client import DeputyClient, Handoff, InvalidRequest, InvalidScope
from tests.client.sdk_support import HELPER, task_state, verified_claims
from tests.conftest import FILES, HELPER_AGENT, MAIL, MAIL_AGENT, Deployment


async def test_delegation_a_sub_agent_joins_with_its_own_identity_and_its_child_task_narrows(
        gateway: Deployment) -> None:
    async with DeputyClient(gateway.url, identity=lambda: gateway.svid()) as deputy, \
            deputy.task(gateway.user_token(), scope=["mail.read", "mail.send"], audiences=[MAIL]) as task:
        handoff = await task.delegate(scope=["mail.read"], audiences=[MAIL])
        text = handoff.to_json()
        assert Handoff.from_json(text) == handoff and gateway.user_token() not in text
        async with DeputyClient(gateway.url, identity=lambda: gateway.svid(HELPER)) as sub_agent, \
                sub_agent.join(Handoff.from_json(text)) as child:
            token = await child.token(MAIL, "mail.read")
            assert child.id != task.id and child.scope == ("mail.read",)
            claims = verified_claims(gateway, token, MAIL)
            assert claims["act"] == {"sub": HELPER_AGENT, "act": {"sub": MAIL_AGENT}} and claims["txn"] == child.id
            with pytest.raises(InvalidScope):
                await child.token(MAIL, "mail.send")  # more than the child task holds
        assert task_state(gateway, child.id) == "completed"  # the sub-agent ended its own child task
        assert task_state(gateway, task.id) == "open"


async def test_delegation_completing_the_parent_ends_the_child_it_handed_over(gateway: Deployment) -> None:
    async with DeputyClient(gateway.url, identity=lambda: gateway.svid()) as deputy, \
            DeputyClient(gateway.url, identity=lambda: gateway.svid(HELPER)) as sub_agent:
        async with deputy.task(gateway.user_token(), scope=["mail.read"], audiences=[MAIL]) as task:
            handoff = await task.delegate(scope=["mail.read"])
            child_scope = sub_agent.join(handoff)
            child = await child_scope.__aenter__()
            await child.token(MAIL, "mail.read")
        assert task_state(gateway, child.id) == "completed"
        with pytest.raises(InvalidRequest, match="the task has ended"):
            await child.token(FILES, "files.read")  # its next exchange
        await child_scope.__aexit__(None, None, None)  # completing an ended task again is accepted


async def test_delegation_a_handoff_for_another_gateway_is_refused(gateway: Deployment) -> None:
    handoff = Handoff(gateway="https://elsewhere.example", task_token="t", task_id="x", scope=("mail.read",),
                      audiences=(MAIL,), expires_at=0)
    async with DeputyClient(gateway.url, identity=lambda: gateway.svid(HELPER)) as sub_agent:
        with pytest.raises(ValueError, match="elsewhere"):
            sub_agent.join(handoff)


@pytest.mark.parametrize("text", ['{"v": 2}', "[]", '{"v": 1, "gateway": "g"}',
                                  '{"v": 1, "gateway": "g", "task_token": "t", "task_id": "i", "scope": "mail.read",'
                                  ' "audiences": [], "expires_at": 1, "ttl": null}'])
def test_delegation_a_malformed_handoff_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="handoff"):
        Handoff.from_json(text)
