"""Each example runs with its one command against a real gateway, and does what its docstring says:
examples/mcp_server.py (MCP tools with per-tool scopes, called through the mcp client with per-task
tokens), examples/fastapi_api.py (a FastAPI API with the verifier's dependency and RFC 9728 metadata),
and the agents: examples/mcp_agent.py (the MCP server's tools through the SDK, DPoP-bound) and
examples/tool_wrapper.py (LangChain-style tools with per-task tokens, against the FastAPI API)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from gateway.dev import AGENT, MAIL
from tests.mcp_support import ROOT, Gateway, call_tool, dev_gateway, load_example
from tests.support import free_port

METADATA = "/.well-known/oauth-protected-resource"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with dev_gateway(tmp_path_factory.mktemp("examples") / "deployment") as running:
        yield running


@contextlib.contextmanager
def example(name: str, gateway: Gateway, log: Path) -> Iterator[str]:
    """`python examples/<name>.py --issuer ... --port ... --dev-dir ...`, until its metadata answers."""
    port = free_port()
    command = [sys.executable, str(ROOT / "examples" / f"{name}.py"), "--issuer", gateway.url, "--port", str(port),
               "--dev-dir", str(gateway.ids.directory)]
    url = f"http://127.0.0.1:{port}"
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while not _answers(url + METADATA):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        # uvicorn shuts down cleanly (closing the verifier, which deletes its SSF stream), then re-raises SIGTERM.
        assert process.wait(timeout=15) == -signal.SIGTERM and "Traceback" not in log.read_text(), log.read_text()


def _answers(url: str) -> bool:
    with contextlib.suppress(httpx2.HTTPError):
        return httpx2.get(url, timeout=0.5).status_code == 200
    return False


async def refused_after_completion(url: str, token: str) -> httpx2.Response:
    """The first refusal of `token` at `url`, within 5 s of its task's completion."""
    deadline = time.monotonic() + 5
    async with httpx2.AsyncClient(timeout=5) as http:
        while True:
            response = await http.get(url, headers={"Authorization": f"Bearer {token}"})
            if response.status_code != 200 or time.monotonic() > deadline:
                return response
            await asyncio.sleep(0.05)


async def test_mcp_example_tools_need_their_scope_and_die_with_the_task(gateway: Gateway, tmp_path: Path) -> None:
    with example("mcp_server", gateway, tmp_path / "mcp.log") as url:
        async with gateway.task("mail.read", "mail.send", dpop=False) as task:
            reader = await task.token(MAIL, "mail.read")
            inbox = await call_tool(url + "/mcp", reader, "read_inbox")
            assert not inbox.is_error and inbox.structured_content is not None
            assert (inbox.structured_content["user"], inbox.structured_content["task"]) == ("alice", task.id)
            with pytest.raises(MCPError, match=r"insufficient_scope: tool send_mail needs scope mail\.send"):
                await call_tool(url + "/mcp", reader, "send_mail", {"to": "bob@example.com", "subject": "hi"})
            sender = await task.token(MAIL, "mail.send")
            sent = await call_tool(url + "/mcp", sender, "send_mail", {"to": "bob@example.com", "subject": "hi"})
            assert not sent.is_error and sent.structured_content == {
                "user": "alice", "to": "bob@example.com", "subject": "hi", "status": "queued"}
        response = await refused_after_completion(url + "/mcp", reader)
        assert response.status_code == 401 and response.json()["error"] == "invalid_token"
        with pytest.raises(MCPError):
            await call_tool(url + "/mcp", reader, "read_inbox")


async def test_fastapi_example_routes_need_their_scope_and_serve_the_metadata(gateway: Gateway,
                                                                                 tmp_path: Path) -> None:
    with example("fastapi_api", gateway, tmp_path / "api.log") as url, httpx2.Client(base_url=url) as http:
        assert http.get(METADATA).json() == {
            "resource": MAIL, "authorization_servers": [gateway.url], "scopes_supported": ["mail.read", "mail.send"],
            "bearer_methods_supported": ["header"], "resource_name": "Demo mail API"}
        async with gateway.task("mail.read", dpop=False) as task:
            reader = await task.token(MAIL, "mail.read")
            inbox = http.get("/inbox", headers={"Authorization": f"Bearer {reader}"})
            assert inbox.status_code == 200 and inbox.json()["task"] == task.id
            send = http.post("/send", headers={"Authorization": f"Bearer {reader}"})
            assert send.status_code == 403
            assert send.headers["www-authenticate"] == (
                'Bearer error="insufficient_scope", error_description="this request needs scope mail.send", '
                'scope="mail.send", DPoP algs="ES256 ES384 ES512 EdDSA PS256 PS384 PS512 RS256 RS384 RS512"')
            assert http.get("/inbox").status_code == 401
        response = await refused_after_completion(url + "/inbox", reader)
        assert response.status_code == 401 and response.json()["detail"]["error"] == "invalid_token"


def run_example(name: str, *args: str) -> list[str]:
    """`python examples/<name>.py ARGS` to its end: its output lines, once it has exited 0."""
    done = subprocess.run([sys.executable, str(ROOT / "examples" / f"{name}.py"), *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.splitlines()


def test_mcp_agent_example_is_allowed_with_the_scope_refused_without_it_and_after_the_task(
        gateway: Gateway, tmp_path: Path) -> None:
    with example("mcp_server", gateway, tmp_path / "mcp.log") as url:
        lines = run_example("mcp_agent", "--gateway", gateway.url, "--mcp", url + "/mcp",
                            "--dev-dir", str(gateway.ids.directory))
    task = lines[0].split()[3]
    assert lines[0] == f"[1] opened task {task} for alice, scope mail.read"
    assert lines[1] == f"[2] read_inbox with mail.read: allowed: user alice, agent {AGENT}, task {task}, messages 2"
    assert lines[2] == ("[3] send_mail without mail.send: refused: "
                        "insufficient_scope: tool send_mail needs scope mail.send")
    assert lines[3] == f"[4] completed task {task} (left its block)"
    assert lines[4].startswith("[5] read_inbox after the task ended: refused: ")
    assert '(401 Bearer error="invalid_token"' in lines[4]
    assert lines[5:] == ["all as expected"]


def test_tool_wrapper_example_attaches_per_task_tokens_with_each_tools_scope(gateway: Gateway,
                                                                               tmp_path: Path) -> None:
    with example("fastapi_api", gateway, tmp_path / "api.log") as url:
        lines = run_example("tool_wrapper", "--gateway", gateway.url, "--api", url,
                            "--dev-dir", str(gateway.ids.directory))
    task = lines[0].split()[3]
    assert lines[0] == f"[1] opened task {task} for alice, scope mail.read"
    assert lines[1] == "[2] tools: read_inbox() needs mail.read, send_mail(to, subject) needs mail.send"
    assert lines[2] == ("[3] read_inbox({}) ok: bob@example.com: Quarterly numbers; carol@example.com: Lunch? "
                        "(for alice)")
    assert lines[3].startswith("[4] send_mail({'to': 'bob@example.com', 'subject': 'Re: Quarterly numbers'}) "
                               "refused: invalid_scope: ")
    assert lines[4:] == [f"[5] completed task {task}", "all as expected"]


async def test_tool_wrapper_tools_have_langchains_basetool_shape_and_need_a_task() -> None:
    wrapper = load_example("tool_wrapper")
    tool = wrapper.send_mail
    assert (tool.name, tool.description, tool.scope) == ("send_mail", "Send a message to `to` with `subject`.",
                                                         ("mail.send",))
    assert tool.args == {"to": {"title": "To", "type": "string"}, "subject": {"title": "Subject", "type": "string"}}
    assert tool.args_schema["required"] == ["to", "subject"]
    with pytest.raises(RuntimeError, match="bound to no task"):
        await tool.ainvoke({"to": "bob@example.com", "subject": "hi"})
