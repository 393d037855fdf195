"""Identity sources (SPIFFE JWT-SVID §3): the SPIFFE Workload API, an SVID file that a helper rewrites, and a
callable. Each rotates its SVID in the middle of a task, and the next exchange presents the new one."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs

import grpc
import httpx2
import pytest
from spiffe._proto import workload_pb2, workload_pb2_grpc

from deputy_client import DeputyClient, IdentitySource, SvidFile, WorkloadApiIdentity
from deputy_client.identity import SvidCallable
from tests.client.sdk_support import Counting
from tests.client.workload_api import WorkloadApi
from tests.conftest import FILES, MAIL, Deployment


class Forms(Counting):
    """Also keeps the actor_token of every token request."""

    def __init__(self) -> None:
        super().__init__()
        self.actors: list[str] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/token":
            self.actors.append(parse_qs(request.content.decode())["actor_token"][0])
        return await super().handle_async_request(request)


async def a_task_across_a_rotation(gateway: Deployment, identity: IdentitySource | SvidCallable,
                                   rotate: Callable[[], Awaitable[None]]) -> list[str]:
    """Open a task, mint, rotate the SVID, mint for another resource; the actor tokens presented, in order."""
    forms = Forms()
    async with DeputyClient(gateway.url, identity=identity, transport=forms) as deputy, \
            deputy.task(gateway.user_token(scope="mail.read files.read"), scope=["mail.read", "files.read"],
                        audiences=[MAIL, FILES]) as task:
        await task.token(MAIL, "mail.read")
        await rotate()
        await task.token(FILES, "files.read")  # accepted: the same agent, with its new SVID
    return forms.actors


async def test_identity_an_svid_file_rewritten_mid_task_is_read_again(gateway: Deployment, tmp_path: Path) -> None:
    path, first, second = tmp_path / "svid.token", gateway.svid(jti="first"), gateway.svid(jti="second")
    path.write_text(first + "\n")

    async def rotate() -> None:
        await asyncio.sleep(0.01)  # a new mtime
        path.write_text(second + "\n")

    assert await a_task_across_a_rotation(gateway, SvidFile(path), rotate) == [first, first, second]


async def test_identity_a_callable_is_asked_for_every_exchange(gateway: Deployment) -> None:
    current = [gateway.svid(jti="first")]
    first, second = current[0], gateway.svid(jti="second")

    async def rotate() -> None:
        current[0] = second

    async def svid() -> str:
        return current[0]

    assert await a_task_across_a_rotation(gateway, svid, rotate) == [first, first, second]


@pytest.fixture
def workload_api(gateway: Deployment) -> Iterator[WorkloadApi]:
    directory = tempfile.mkdtemp(prefix="wl-")  # short: a Unix socket path is at most 107 bytes
    api = WorkloadApi(Path(directory), gateway.domain, "/agents/mail", ttl=2)
    yield api
    api.close()
    shutil.rmtree(directory)


def test_identity_the_workload_api_refuses_a_call_without_its_security_header(workload_api: WorkloadApi) -> None:
    with grpc.insecure_channel(f"unix:{workload_api.socket}") as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["x"]), timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and workload_api.refused == 1
    assert not workload_api.fetched


async def test_identity_the_workload_api_gives_svids_for_the_gateway_and_renews_them(
        gateway: Deployment, workload_api: WorkloadApi) -> None:
    async def rotate() -> None:
        await asyncio.sleep(1.2)  # past half of the SVID's 2 s: renewed at the next exchange

    actors = await a_task_across_a_rotation(gateway, WorkloadApiIdentity(socket=workload_api.endpoint), rotate)
    assert actors == [workload_api.fetched[0], workload_api.fetched[0], workload_api.fetched[1]]
    assert len(workload_api.fetched) == 2 and workload_api.refused == 0


async def test_identity_the_workload_api_socket_comes_from_spiffe_endpoint_socket(
        gateway: Deployment, workload_api: WorkloadApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPIFFE_ENDPOINT_SOCKET", workload_api.endpoint)
    async with DeputyClient(gateway.url, identity=WorkloadApiIdentity()) as deputy:
        token = await deputy.exchange(gateway.user_token(), resource=MAIL, scope=["mail.read"])
    assert token.access_token and len(workload_api.fetched) == 1
