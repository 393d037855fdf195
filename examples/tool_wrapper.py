"""A LangChain-style tool wrapper that gives every tool call a per-task token, with no LangChain dependency.

`@deputy_tool(audience=..., scope=...)` turns `async def read_inbox(http, ...)` into a `DeputyTool` with
LangChain's `BaseTool` shape (`name`, `description` from the docstring, `args`, `ainvoke(input)`); it is
bound to a task at run time, `bind_tools(task, tools, base_url=...)`, and each invocation gets an
`httpx2.AsyncClient(auth=task.auth(audience, *scope))`: a token of that task with the tool's scope only.

    deputy serve --dev &
    python examples/fastapi_api.py &
    python examples/tool_wrapper.py          # --gateway URL, --api URL, --dev-dir DIR

The agent loop below invokes the tools as a model's tool calls would: `read_inbox` is allowed, `send_mail`
is refused by Deputy (the task's ceiling is `mail.read`); it exits 0 only if both went so. DEMO ONLY: the
agent's SVID and alice's token come from the dev gateway's demo identities (`gateway.dev`).

With LangChain, wrap a bound tool as a `StructuredTool`:

    StructuredTool.from_function(coroutine=lambda **kw: tool.ainvoke(kw), name=tool.name,
                                 description=tool.description, args_schema=tool.args_schema)
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, get_type_hints

import httpx2

from deputy_client import DeputyClient, OAuthError, Task
from gateway.dev import AGENT, MAIL, DemoIdentities, find

ToolFunction = Callable[..., Awaitable[Any]]
JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


@dataclass(frozen=True)
class DeputyTool:
    """A tool whose calls carry a token of the task it is bound to, for `audience` with `scope` only."""

    function: ToolFunction
    audience: str
    scope: tuple[str, ...]
    task: Task | None = None
    base_url: str = ""

    @property
    def name(self) -> str:
        return self.function.__name__

    @property
    def description(self) -> str:
        return inspect.getdoc(self.function) or ""

    @property
    def args(self) -> dict[str, dict[str, str]]:
        """Each argument after `http` with its JSON Schema type, as LangChain's `BaseTool.args` gives them."""
        hints = get_type_hints(self.function)
        names = list(inspect.signature(self.function).parameters)[1:]
        return {name: {"title": name.title(), "type": JSON_TYPES.get(hints.get(name, str), "string")} for name in names}

    @property
    def args_schema(self) -> dict[str, Any]:
        return {"type": "object", "properties": self.args, "required": list(self.args)}

    def bind(self, task: Task, *, base_url: str = "") -> DeputyTool:
        return replace(self, task=task, base_url=base_url)

    async def ainvoke(self, input: dict[str, Any]) -> Any:
        if self.task is None:
            raise RuntimeError(f"tool {self.name} is bound to no task: bind_tools(task, tools) first")
        async with httpx2.AsyncClient(auth=self.task.auth(self.audience, *self.scope), base_url=self.base_url,
                                      timeout=10) as http:
            return await self.function(http, **input)


def deputy_tool(*, audience: str, scope: str | Sequence[str]) -> Callable[[ToolFunction], DeputyTool]:
    """`@deputy_tool(audience=..., scope=...)` over `async def tool(http, ...)` with a docstring."""
    scopes = (scope,) if isinstance(scope, str) else tuple(scope)
    return lambda function: DeputyTool(function, audience, scopes)


def bind_tools(task: Task, tools: Sequence[DeputyTool], *, base_url: str = "") -> list[DeputyTool]:
    return [tool.bind(task, base_url=base_url) for tool in tools]


@deputy_tool(audience=MAIL, scope="mail.read")
async def read_inbox(http: httpx2.AsyncClient) -> str:
    """Read the user's inbox: the sender and subject of each message."""
    response = (await http.get("/inbox")).raise_for_status().json()
    return "; ".join(f"{m['from']}: {m['subject']}" for m in response["messages"]) + f" (for {response['user']})"


@deputy_tool(audience=MAIL, scope="mail.send")
async def send_mail(http: httpx2.AsyncClient, to: str, subject: str) -> str:
    """Send a message to `to` with `subject`."""
    return str((await http.post("/send", json={"to": to, "subject": subject})).raise_for_status().json()["status"])


async def agent(gateway: str, api: str, ids: DemoIdentities) -> bool:
    """An agent loop without a model: each planned tool call is invoked as a model's tool call would be."""
    plan = [("read_inbox", {}), ("send_mail", {"to": "bob@example.com", "subject": "Re: Quarterly numbers"})]
    outcomes = []
    async with DeputyClient(gateway, identity=lambda: ids.svid(AGENT)) as deputy, deputy.task(
        ids.user_token("alice"), scope=["mail.read"], audiences=[MAIL], purpose="triage alice's inbox"
    ) as task:
        print(f"[1] opened task {task.id} for alice, scope {' '.join(task.scope)}", flush=True)
        tools = {tool.name: tool for tool in bind_tools(task, [read_inbox, send_mail], base_url=api)}
        print("[2] tools: " + ", ".join(f"{t.name}({', '.join(t.args)}) needs {' '.join(t.scope)}"
                                         for t in tools.values()), flush=True)
        for step, (name, arguments) in enumerate(plan, start=3):
            try:
                outcome = f"ok: {await tools[name].ainvoke(arguments)}"
            except OAuthError as refused:
                outcome = f"refused: {refused.error}: {refused.error_description}"
            outcomes.append(outcome)
            print(f"[{step}] {name}({arguments}) {outcome}", flush=True)
    print(f"[{len(plan) + 3}] completed task {task.id}", flush=True)
    return outcomes[0].startswith("ok") and outcomes[1].startswith("refused: invalid_scope")


def main() -> int:
    parser = argparse.ArgumentParser(description="Tools that call an API with per-task tokens from Deputy")
    parser.add_argument("--gateway", default="http://127.0.0.1:8600", help="the Deputy gateway's issuer")
    parser.add_argument("--api", default="http://127.0.0.1:8701", help="examples/fastapi_api.py's URL")
    parser.add_argument("--dev-dir", type=Path, default=Path(".deputy-dev"), help="the state of deputy serve --dev")
    args = parser.parse_args()
    ok = asyncio.run(agent(args.gateway, args.api, DemoIdentities(find(args.dev_dir))))
    print("all as expected" if ok else "FAILED: not as expected", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
