"""A dev-like gateway and the agent side of the MCP tests: per-task tokens, MCP tool calls over real HTTP."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult

from deputy_client import DeputyClient, Task
from gateway.dev import AGENT, IDP, MAIL, MAIL_API, DemoIdentities, DemoResource
from tests.support import ACCESS_TOKEN, GRANT, JWT, free_port, gateway_process
from token_exchange.dpop import DpopKey

TXN = "urn:ietf:params:oauth:token-type:txn_token"
DOCS = "https://docs.demo.test"
ROOT = Path(__file__).resolve().parent.parent


def load_example(name: str) -> ModuleType:
    """An example script as a module (examples/ is no package: each file runs on its own)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@dataclass
class Gateway:
    """A running `deputy serve` with the dev identities, the mail resource and a second resource (docs)."""

    url: str
    ids: DemoIdentities

    @contextlib.asynccontextmanager
    async def task(self, *scope: str, dpop: bool = True) -> AsyncIterator[Task]:
        """The agent side through the SDK: a task of the dev mail agent for alice (`dpop=False`: Bearer
        tokens); leaving the block completes it."""
        async with DeputyClient(self.url, identity=lambda: self.ids.svid(AGENT), dpop=dpop) as deputy, deputy.task(
            self.user_token(), scope=scope, audiences=[MAIL]
        ) as task:
            yield task

    def user_token(self, user: str = "alice") -> str:
        return self.ids.user_token(user, scope="mail.read mail.send docs.read")

    def open_task(self, scope: str = "mail.read mail.send", user: str = "alice") -> dict[str, Any]:
        """A task by plain token exchanges (docs/tasks.md), for tests that craft their own tokens and proofs."""
        return _exchange(self.url, subject_token=self.user_token(user),
                         subject_token_type=ACCESS_TOKEN, actor_token=self.ids.svid(AGENT), actor_token_type=JWT,
                         requested_token_type=TXN, scope=scope, audience=[MAIL, DOCS], purpose="read mail")

    def token(self, task: dict[str, Any], scope: str, resource: str = MAIL, dpop: DpopKey | None = None) -> str:
        """A per-task access token for `resource` (the SDK's `task.token(resource, scope)`), DPoP-bound to `dpop`."""
        headers = {"DPoP": dpop.proof("POST", self.url + "/token")} if dpop else {}
        return str(_exchange(self.url, headers, subject_token=task["access_token"], subject_token_type=TXN,
                             actor_token=self.ids.svid(AGENT), actor_token_type=JWT, resource=resource, scope=scope,
                             requested_token_type=ACCESS_TOKEN)["access_token"])

    def complete(self, task: dict[str, Any]) -> None:
        response = httpx2.post(f"{self.url}/tasks/{task['task_id']}/complete",
                               headers={"Authorization": f"Bearer {self.ids.svid(AGENT)}"})
        assert response.status_code == 200, response.text


def _exchange(url: str, headers: dict[str, str] | None = None, **form: Any) -> dict[str, Any]:
    response = httpx2.post(url + "/token", data={"grant_type": GRANT, **form}, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


@contextlib.contextmanager
def dev_gateway(directory: Path) -> Iterator[Gateway]:
    ids = DemoIdentities(directory)
    data = {"access": {"ttl": 300, "task_ttl": 900,
                       "grants": {AGENT: {MAIL: ["mail.read", "mail.send"], DOCS: ["docs.read"]}},
                       "delegations": {IDP: {"alice": [AGENT], "bob": [AGENT]}}}}
    config = ids.create(listen=f"127.0.0.1:{free_port()}", data=data,
                        resources=(DemoResource(MAIL, ("mail.read", "mail.send"), (MAIL_API,)),
                                   DemoResource(DOCS, ("docs.read",))))
    with gateway_process(config) as url:
        yield Gateway(url, ids)


@contextlib.asynccontextmanager
async def mcp_client(url: str, token: str, *, scheme: str = "Bearer", mode: str = "auto") -> AsyncIterator[Client]:
    """The `mcp` SDK's client over streamable HTTP, every request carrying `token`."""
    async with httpx2.AsyncClient(headers={"Authorization": f"{scheme} {token}"}, timeout=10) as http, Client(
        streamable_http_client(url, http_client=http), mode=mode
    ) as client:
        yield client


async def call_tool(url: str, token: str, tool: str, arguments: dict[str, Any] | None = None) -> CallToolResult:
    """One tool call in a fresh session; a JSON-RPC error is raised as the `MCPError` itself."""
    try:
        async with mcp_client(url, token) as client:
            return await client.call_tool(tool, arguments or {})
    except* MCPError as group:
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup):  # the client's task groups nest
            error = error.exceptions[0]
        raise error from None
