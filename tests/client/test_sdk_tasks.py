"""The agent SDK against a running gateway: a task's whole life (docs/tasks.md), token reuse and minting
again near expiry, completion on leaving the block, also on an exception and on cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import httpx2
import pytest
from fastapi import Depends, FastAPI

from deputy_client import DeputyClient, InvalidRequest, OAuthError, UnknownOAuthError
from deputy_client.resource import AccessTokenVerifier, VerifiedAccess
from deputy_client.resource.dependency import require_scope
from gateway.demo import serve_app
from tests.client.sdk_support import (
    API,
    API_SERVER,
    HELPER,
    SHORT,
    SHORT_TTL,
    Counting,
    RecordingApi,
    task_state,
    verified_claims,
)
from tests.conftest import FILES, MAIL, MAIL_AGENT, Deployment
from tests.support import free_port


@pytest.fixture
def counting() -> Counting:
    return Counting()


@pytest.fixture
async def deputy(gateway: Deployment, counting: Counting) -> AsyncIterator[DeputyClient]:
    async with DeputyClient(gateway.url, identity=lambda: gateway.svid(), transport=counting) as client:
        yield client


@pytest.fixture
def api() -> Iterator[RecordingApi]:
    recording = RecordingApi()
    yield recording
    recording.close()


async def test_tasks_a_full_task_life_opens_mints_calls_and_completes(gateway: Deployment, deputy: DeputyClient,
                                                                       api: RecordingApi) -> None:
    async with deputy.task(gateway.user_token(), scope=["mail.read", "mail.send"], audiences=[MAIL],
                           purpose="summarise inbox") as task:
        assert task_state(gateway, task.id) == "open"
        assert set(task.scope) == {"mail.read", "mail.send"}
        async with httpx2.AsyncClient(auth=task.auth(MAIL, "mail.read")) as http:
            assert (await http.get(api.url + "/inbox")).status_code == 200
        token = await task.token(MAIL, "mail.read")
    claims = verified_claims(gateway, token, MAIL)
    assert claims["txn"] == task.id and claims["scope"] == "mail.read" and claims["sub"] == "alice"
    assert api.seen[0]["authorization"] == f"DPoP {token}"  # the gateway binds it to the SDK's key (RFC 9449)
    assert task_state(gateway, task.id) == "completed"


async def test_tasks_rfc8693_a_second_call_while_the_token_is_valid_makes_no_exchange(
        gateway: Deployment, deputy: DeputyClient, counting: Counting, api: RecordingApi) -> None:
    async with deputy.task(gateway.user_token(), scope=["mail.read"], audiences=[MAIL]) as task:
        opened = counting.count()
        first = await task.token(MAIL, "mail.read")
        async with httpx2.AsyncClient(auth=task.auth(MAIL, "mail.read")) as http:
            for _ in range(5):
                await http.get(api.url + "/inbox")
        assert await task.token(MAIL, "mail.read") == first
        assert counting.count() == opened + 1
        assert {seen["authorization"] for seen in api.seen} == {f"DPoP {first}"}


async def test_tasks_concurrent_callers_of_one_audience_and_scope_share_one_exchange(
        gateway: Deployment, deputy: DeputyClient, counting: Counting) -> None:
    async with deputy.task(gateway.user_token(), scope=["mail.read", "mail.send"], audiences=[MAIL]) as task:
        opened = counting.count()
        tokens = await asyncio.gather(*(task.token(MAIL, "mail.read") for _ in range(8)))
        assert len(set(tokens)) == 1 and counting.count() == opened + 1
        other = await task.token(MAIL, "mail.send", "mail.read")  # another scope: another token
        assert other not in tokens and counting.count() == opened + 2
        assert await task.token(MAIL, "mail.read", "mail.send") == other  # the scope is a set


async def test_tasks_rfc6749_5_1_a_token_near_its_expiry_is_minted_again(
        gateway: Deployment, deputy: DeputyClient, counting: Counting) -> None:
    async with deputy.task(gateway.user_token(scope="short.read"), scope=["short.read"], audiences=[SHORT]) as task:
        first = await task.token(SHORT, "short.read")
        claims = verified_claims(gateway, first, SHORT)
        assert claims["exp"] - claims["iat"] <= SHORT_TTL
        opened = counting.count()
        assert await task.token(SHORT, "short.read") == first and counting.count() == opened
        await asyncio.sleep(SHORT_TTL * 0.95)  # past the refresh point (10% of the lifetime before exp)
        second = await task.token(SHORT, "short.read")
        assert second != first and counting.count() == opened + 1


async def test_tasks_leaving_the_block_on_an_exception_completes_the_task(
        gateway: Deployment, deputy: DeputyClient) -> None:
    with pytest.raises(LookupError, match="the agent failed"):
        async with deputy.task(gateway.user_token(), scope=["mail.read"], audiences=[MAIL]) as task:
            await task.token(MAIL, "mail.read")
            raise LookupError("the agent failed")
    assert task_state(gateway, task.id) == "completed"


async def test_tasks_cancellation_inside_the_block_completes_the_task(
        gateway: Deployment, deputy: DeputyClient) -> None:
    opened: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def agent() -> None:
        async with deputy.task(gateway.user_token(), scope=["mail.read"], audiences=[MAIL]) as task:
            opened.set_result(task.id)
            await asyncio.sleep(60)

    running = asyncio.create_task(agent())
    task_id = await opened
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert task_state(gateway, task_id) == "completed"


async def test_tasks_a_completion_that_fails_is_raised_chained_to_the_exception(
        gateway: Deployment, counting: Counting, caplog: pytest.LogCaptureFixture) -> None:
    identity = [gateway.svid()]
    async with DeputyClient(gateway.url, identity=lambda: identity[0], transport=counting) as deputy:
        with pytest.raises(OAuthError) as raised:
            async with deputy.task(gateway.user_token(), scope=["mail.read"], audiences=[MAIL]) as task:
                identity[0] = gateway.svid(HELPER)  # another agent may not end this task
                raise LookupError("the agent failed")
    assert isinstance(raised.value.__cause__, LookupError)
    assert isinstance(raised.value, UnknownOAuthError) and raised.value.error == "not_found"  # a code of Deputy's
    assert f"could not complete task {task.id}" in caplog.text
    assert task_state(gateway, task.id) == "open"


async def test_tasks_the_tokens_of_a_task_end_with_it(gateway: Deployment, deputy: DeputyClient) -> None:
    async with deputy.task(gateway.user_token(), scope=["mail.read"], audiences=[MAIL]) as task:
        await task.token(MAIL, "mail.read")
    with pytest.raises(InvalidRequest, match="ended"):
        await task.token(MAIL, "mail.read")  # the cache went with the task; the gateway refuses the task token


async def test_tasks_a_one_shot_exchange_gives_a_token_of_an_implicit_task(
        gateway: Deployment, deputy: DeputyClient) -> None:
    one_shot = await deputy.exchange(gateway.user_token(), resource=MAIL, scope=["mail.read"])
    claims = verified_claims(gateway, one_shot.access_token, MAIL)
    assert claims["txn"] == one_shot.task_id and claims["act"]["sub"] == MAIL_AGENT
    assert one_shot.scope == ("mail.read",) and one_shot.token_type == "DPoP"  # bound to the SDK's key


async def test_tasks_a_task_is_opened_for_several_audiences(gateway: Deployment, deputy: DeputyClient) -> None:
    async with deputy.task(gateway.user_token(scope="mail.read files.read"), scope=["mail.read", "files.read"],
                           audiences=[MAIL, FILES]) as task:
        files, mail = await task.token(FILES, "files.read"), await task.token(MAIL, "mail.read")
        assert task.audiences == (MAIL, FILES)
    assert verified_claims(gateway, files, FILES)["txn"] == verified_claims(gateway, mail, MAIL)["txn"] == task.id


async def test_tasks_the_user_token_is_dropped_once_the_task_is_open(gateway: Deployment, deputy: DeputyClient) -> None:
    user_token = gateway.user_token()
    scope = deputy.task(user_token, scope=["mail.read"], audiences=[MAIL])
    async with scope as task:
        assert user_token not in repr(vars(task)) and scope._opener is None
        with pytest.raises(RuntimeError, match="entered once"):
            await scope.__aenter__()


@contextlib.asynccontextmanager
async def api_server(verifier: AccessTokenVerifier) -> AsyncIterator[str]:
    """A FastAPI resource server on loopback that admits `api.read` tokens through `verifier`."""
    app = FastAPI()

    @app.get("/data")
    async def data(access: VerifiedAccess = Depends(require_scope(verifier, "api.read"))  # noqa: B008
                   ) -> dict[str, str | None]:
        return {"task": access.task_id}

    async with serve_app(app, free_port()) as url:
        yield url


async def test_tasks_rfc6750_3_1_a_token_refused_as_invalid_is_minted_again_and_an_ended_task_says_so(
        gateway: Deployment) -> None:
    """The task is ended behind the task handle's back (as completing a parent ends a child): the resource
    refuses the cached token (401 invalid_token), the auth drops it, and the next call's exchange raises."""
    async with httpx2.AsyncClient(timeout=5) as rs_client, AccessTokenVerifier(
        issuer=gateway.url, audience=API, client=rs_client, svid=lambda: gateway.svid(API_SERVER),
    ) as verifier, api_server(verifier) as url, DeputyClient(gateway.url, identity=lambda: gateway.svid()) as deputy:
        scope = deputy.task(gateway.user_token(scope="api.read"), scope=["api.read"], audiences=[API])
        task = await scope.__aenter__()
        async with httpx2.AsyncClient(auth=task.auth(API, "api.read")) as http:
            assert (await http.get(url + "/data")).json() == {"task": task.id}
            await deputy.complete(task.id)
            refused: list[httpx2.Response] = []

            async def refused_once() -> bool:
                response = await http.get(url + "/data")
                refused.append(response)
                return response.status_code == 401
            deadline = time.monotonic() + 10
            while not await refused_once():
                assert time.monotonic() < deadline, "the resource still accepts the token of an ended task"
                await asyncio.sleep(0.05)
            assert 'error="invalid_token"' in refused[-1].headers["www-authenticate"]
            with pytest.raises(InvalidRequest, match="the task has ended"):
                await http.get(url + "/data")  # the cached token was dropped: a new exchange, refused
        await scope.__aexit__(None, None, None)
