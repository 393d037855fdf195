"""An agent calling the MCP tools of examples/mcp_server.py with per-task tokens from Deputy's SDK.

It opens a task for alice with `mail.read` only, calls `read_inbox` through the `mcp` client (allowed),
then `send_mail` (refused: 403 `insufficient_scope`, no `mail.send`), completes the task by leaving its
block, and calls `read_inbox` again with the token it held (refused: 401, the MCP server's verifier has
learnt of the end by its SSF feed). The tokens are DPoP-bound: `task.auth(...)` signs a proof per request.

    deputy serve --dev &
    python examples/mcp_server.py &
    python examples/mcp_agent.py             # --gateway URL, --mcp URL, --dev-dir DIR

It exits 0 only if all three outcomes were as expected. DEMO ONLY: its identity (the dev agent's JWT-SVID)
and alice's token come from the dev gateway's demo identities (`gateway.dev`); a real agent gets its SVID
from the Workload API (`WorkloadApiIdentity`) and the user's token from the user's login.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from deputy_client import AccessToken, DeputyClient
from gateway.dev import AGENT, MAIL, DemoIdentities, find


async def call(url: str, auth: httpx2.Auth, tool: str, arguments: dict[str, Any] | None = None) -> str:
    """One tool call in a fresh MCP session, as one line: what it answered, or why it was refused."""
    refusal: BaseException | None = None
    try:
        async with httpx2.AsyncClient(auth=auth, timeout=10) as http, Client(
            streamable_http_client(url, http_client=http)
        ) as mcp:
            result = await mcp.call_tool(tool, arguments or {})
    except* MCPError as group:
        refusal = group
        while isinstance(refusal, BaseExceptionGroup):  # the client's task groups nest
            refusal = refusal.exceptions[0]
    if refusal is not None:
        return f"refused: {refusal}"
    if result.is_error:
        return f"error: {result.content}"
    content = result.structured_content or {}
    return "allowed: " + ", ".join(f"{name} {len(v) if isinstance(v, list) else v}" for name, v in content.items())


class HeldToken(httpx2.Auth):
    """A token kept past its task (as a leaked one would be), presented with a fresh DPoP proof if bound."""

    def __init__(self, deputy: DeputyClient, token: AccessToken) -> None:
        self.deputy, self.token = deputy, token
        self.answer = ""  # the status and challenge of the last response

    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        request.headers["Authorization"] = self.token.authorization
        if self.token.dpop:
            request.headers["DPoP"] = self.deputy.proof(request.method, str(request.url),
                                                        self.token.access_token, None)
        response = yield request
        self.answer = f"{response.status_code} {response.headers.get('www-authenticate', '')}".strip()


async def refused(url: str, auth: HeldToken, within: float = 5.0) -> str:
    """The first refusal of a `read_inbox` call, within `within` seconds (the SSF feed's delay)."""
    deadline = time.monotonic() + within
    while (outcome := await call(url, auth, "read_inbox")).startswith("allowed") and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return f"{outcome} ({auth.answer})" if outcome.startswith("refused") else outcome


async def run(gateway: str, mcp: str, ids: DemoIdentities) -> bool:
    async with DeputyClient(gateway, identity=lambda: ids.svid(AGENT)) as deputy:
        async with deputy.task(ids.user_token("alice"), scope=["mail.read"], audiences=[MAIL],
                               purpose="read alice's inbox") as task:
            print(f"[1] opened task {task.id} for alice, scope {' '.join(task.scope)}", flush=True)
            reader = task.auth(MAIL, "mail.read")
            read = await call(mcp, reader, "read_inbox")
            print(f"[2] read_inbox with mail.read: {read}", flush=True)
            send = await call(mcp, reader, "send_mail", {"to": "bob@example.com", "subject": "hi"})
            print(f"[3] send_mail without mail.send: {send}", flush=True)
            held = await task.access_token(MAIL, "mail.read")
        print(f"[4] completed task {task.id} (left its block)", flush=True)
        after = await refused(mcp, HeldToken(deputy, held))
        print(f"[5] read_inbox after the task ended: {after}", flush=True)
    return (read.startswith("allowed") and "insufficient_scope" in send and "mail.send" in send
            and after.startswith("refused"))


def main() -> int:
    parser = argparse.ArgumentParser(description="An agent calling Deputy-protected MCP tools with per-task tokens")
    parser.add_argument("--gateway", default="http://127.0.0.1:8600", help="the Deputy gateway's issuer")
    parser.add_argument("--mcp", default="http://127.0.0.1:8700/mcp", help="the MCP server's endpoint")
    parser.add_argument("--dev-dir", type=Path, default=Path(".deputy-dev"), help="the state of deputy serve --dev")
    args = parser.parse_args()
    ok = asyncio.run(run(args.gateway, args.mcp, DemoIdentities(find(args.dev_dir))))
    print("all as expected" if ok else "FAILED: not as expected", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
