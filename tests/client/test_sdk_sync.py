"""The sync twin (`deputy_client.sync.DeputyClient`): the same task life, reuse, completion and delegation
for code that is not async."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest

from deputy_client import InvalidTarget
from deputy_client.sync import DeputyClient
from tests.client.sdk_support import HELPER, Counting, RecordingApi, task_state, verified_claims
from tests.conftest import MAIL, Deployment


@pytest.fixture
def api() -> Iterator[RecordingApi]:
    recording = RecordingApi()
    yield recording
    recording.close()


def test_sync_a_full_task_life_with_reuse_and_completion(gateway: Deployment, api: RecordingApi) -> None:
    counting = Counting()
    with DeputyClient(gateway.url, identity=gateway.svid, transport=counting) as deputy:
        with deputy.task(gateway.user_token(), scope=["mail.read"], audiences=[MAIL], purpose="sync") as task:
            with httpx2.Client(auth=task.auth(MAIL, "mail.read")) as http:
                assert all(http.get(api.url + "/inbox").status_code == 200 for _ in range(3))
            token = task.token(MAIL, "mail.read")
            assert counting.count() == 2  # the task, then one access token for all four uses
        assert verified_claims(gateway, token, MAIL)["txn"] == task.id
        assert {seen["authorization"] for seen in api.seen} == {f"Bearer {token}"}
        assert task_state(gateway, task.id) == "completed"
        with pytest.raises(InvalidTarget):
            deputy.exchange(gateway.user_token(), resource="https://unknown.example.com", scope=["mail.read"])


def test_sync_an_exception_in_the_block_completes_the_task(gateway: Deployment) -> None:
    with DeputyClient(gateway.url, identity=gateway.svid) as deputy:
        with pytest.raises(KeyError), deputy.task(gateway.user_token(), scope=["mail.read"], audiences=[MAIL]) as task:
            raise KeyError("failed")
        assert task_state(gateway, task.id) == "completed"


def test_sync_a_delegation_joined_by_a_sub_agent(gateway: Deployment) -> None:
    with DeputyClient(gateway.url, identity=gateway.svid) as deputy, \
            DeputyClient(gateway.url, identity=lambda: gateway.svid(HELPER)) as sub_agent, \
            deputy.task(gateway.user_token(), scope=["mail.read", "mail.send"], audiences=[MAIL]) as task:
        handoff = task.delegate(scope=["mail.read"])
        with sub_agent.join(handoff) as child:
            assert verified_claims(gateway, child.token(MAIL, "mail.read"), MAIL)["txn"] == child.id
        assert task_state(gateway, child.id) == "completed"
