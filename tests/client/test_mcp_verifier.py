"""deputy_client.mcp against a real gateway and a real MCP server on loopback: the MCP Authorization
checklist's bad inputs (reference/mcp-authorization.md), per-tool scopes (Authz section 11.1.1), RFC 9728
metadata, and tokens of a completed task refused. The SDK's own 401/403 bodies are pinned."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import pytest
from mcp.server.auth.middleware.bearer_auth import BearerAuthBackend
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from pydantic import AnyHttpUrl
from starlette.requests import HTTPConnection

from deputy_client.mcp import MAX_INSPECTED_BODY, DeputyTokenVerifier, require_tool_scope
from deputy_client.resource import AccessTokenVerifier, FeedStale
from gateway.demo import serve_app
from gateway.dev import AGENT, MAIL, MAIL_API
from tests.mcp_support import DOCS, Gateway, call_tool, dev_gateway, load_example
from tests.support import free_port
from token_exchange.dpop import DpopKey

EXAMPLE = load_example("mcp_server")
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "probe", "version": "1"}}}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with dev_gateway(tmp_path_factory.mktemp("mcp") / "deployment") as running:
        yield running


@contextlib.asynccontextmanager
async def verifying(gateway: Gateway, audience: str = MAIL, **kw: Any) -> AsyncIterator[AccessTokenVerifier]:
    async with httpx2.AsyncClient(timeout=30) as client, AccessTokenVerifier(
        issuer=gateway.url, audience=audience, client=client, svid=lambda: gateway.ids.svid(MAIL_API),
        max_feed_staleness=5, **kw
    ) as verifier:
        yield verifier


@pytest.fixture
async def mcp_url(gateway: Gateway) -> AsyncIterator[str]:
    async with verifying(gateway) as verifier, serve_app(EXAMPLE.mcp_app(verifier), free_port()) as url:
        yield url


async def post(url: str, headers: dict[str, str] | None = None, body: Any = INITIALIZE) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=10) as http:
        return await http.post(url, json=body, headers={**ACCEPT, **(headers or {})})



def metadata_of(url: str) -> str:
    return f'resource_metadata="{url}"'


SDK_401 = {"error": "invalid_token", "error_description": "Authentication required"}
SDK_401_CHALLENGE = ('Bearer error="invalid_token", error_description="Authentication required", '
                     'resource_metadata="https://mail.demo.test/.well-known/oauth-protected-resource"')


async def test_authz_9_2_no_authorization_is_401_with_resource_metadata(mcp_url: str) -> None:
    response = await post(mcp_url + "/mcp")
    # The SDK's body and challenge, pinned: it sends error="invalid_token" even without credentials
    # (RFC 6750 section 3.1 says to omit the code then) and no scope parameter.
    assert (response.status_code, response.json()) == (401, SDK_401)
    assert response.headers["www-authenticate"] == SDK_401_CHALLENGE


@pytest.mark.parametrize("authorization", ["Bearer", "Bearer x", "Basic YWxpY2U6c2VjcmV0", "Token {token}",
                                           "{token}", "Bearer {token}x"])
async def test_rfc6750_2_1_anything_but_a_valid_bearer_token_is_401(gateway: Gateway, mcp_url: str,
                                                                     authorization: str) -> None:
    token = gateway.token(gateway.open_task(), "mail.read")
    response = await post(mcp_url + "/mcp", {"Authorization": authorization.format(token=token)})
    assert (response.status_code, response.json()) == (401, SDK_401)


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
async def test_rfc6750_2_1_the_scheme_is_case_insensitive(gateway: Gateway, mcp_url: str, scheme: str) -> None:
    token = gateway.token(gateway.open_task(), "mail.read")
    response = await post(mcp_url + "/mcp", {"Authorization": f"{scheme} {token}"})
    assert response.status_code == 200, response.text
    assert "mcp-session-id" in response.headers


async def test_authz_9_1_a_token_in_the_query_is_ignored(gateway: Gateway, mcp_url: str) -> None:
    token = gateway.token(gateway.open_task(), "mail.read")
    response = await post(f"{mcp_url}/mcp?access_token={token}")
    assert (response.status_code, response.json()) == (401, SDK_401)


async def test_authz_9_2_a_token_for_another_resource_is_401(gateway: Gateway, mcp_url: str) -> None:
    token = gateway.token(gateway.open_task(scope="docs.read"), "docs.read", resource=DOCS)
    response = await post(mcp_url + "/mcp", {"Authorization": f"Bearer {token}"})
    assert (response.status_code, response.json()) == (401, SDK_401)


async def test_rfc9068_4_the_access_token_carries_user_agent_scope_audience_and_task(gateway: Gateway) -> None:
    task = gateway.open_task()
    token = gateway.token(task, "mail.read mail.send")
    async with verifying(gateway) as verifier:
        access = await DeputyTokenVerifier(verifier).verify_token(token)
    assert access is not None
    claims = access.claims or {}
    assert (access.subject, access.client_id, access.scopes, access.resource) == (
        "alice", AGENT, ["mail.read", "mail.send"], MAIL)
    assert access.expires_at == claims["exp"] and access.token == token
    assert (claims["iss"], claims["act"], claims["txn"]) == (gateway.url, {"sub": AGENT}, task["task_id"])


async def test_rfc9068_4_expired_is_none_never_an_exception(gateway: Gateway) -> None:
    token = gateway.token(gateway.open_task(), "mail.read")
    async with verifying(gateway, leeway=0) as verifier:
        assert await DeputyTokenVerifier(verifier).verify_token(token) is not None
        late = DeputyTokenVerifier(verifier, clock=lambda: time.time() + 301)  # tokens live 300 s here
        assert await late.verify_token(token) is None
        assert await late.verify_token("not a jwt") is None


@pytest.mark.parametrize(("resource_server_url", "accepted"), [
    ("https://mail.demo.test", True), ("https://MAIL.demo.test:443/", True),
    ("https://mail.demo.test/mcp/other", False),
])
async def test_authz_8_1_the_sdk_second_gate_compares_resource_as_urls(gateway: Gateway, resource_server_url: str,
                                                                        accepted: bool) -> None:
    """With validate_token_resource=True the SDK compares our `resource` (the matched `aud`) as URLs."""
    token = gateway.token(gateway.open_task(), "mail.read")
    async with verifying(gateway) as verifier:
        backend = BearerAuthBackend(DeputyTokenVerifier(verifier), resource_server_url=AnyHttpUrl(resource_server_url))
        conn = HTTPConnection({"type": "http", "headers": [(b"authorization", f"Bearer {token}".encode())]})
        assert (await backend.authenticate(conn) is not None) is accepted


async def initialized_session(url: str, token: str) -> str:
    response = await post(url, {"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    session = response.headers["mcp-session-id"]
    notified = await post(url, {"Authorization": f"Bearer {token}", "Mcp-Session-Id": session},
                          {"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert notified.status_code == 202, notified.text
    return session


def tool_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": name, "arguments": arguments}}


async def test_authz_11_1_1_a_tool_without_its_scope_is_403_naming_the_scope(gateway: Gateway, mcp_url: str) -> None:
    token = gateway.token(gateway.open_task(), "mail.read")
    session = await initialized_session(mcp_url + "/mcp", token)
    response = await post(mcp_url + "/mcp", {"Authorization": f"Bearer {token}", "Mcp-Session-Id": session},
                          tool_call("send_mail", {"to": "bob@example.com", "subject": "hi"}))
    assert response.status_code == 403
    assert response.headers["www-authenticate"] == (
        'Bearer error="insufficient_scope", error_description="tool send_mail needs scope mail.send", '
        'scope="mail.send", resource_metadata="https://mail.demo.test/.well-known/oauth-protected-resource"')
    assert response.json() == {"jsonrpc": "2.0", "id": 7, "error": {
        "code": -32600, "message": "insufficient_scope: tool send_mail needs scope mail.send",
        "data": {"error": "insufficient_scope", "scope": "mail.send"}}}
    allowed = await post(mcp_url + "/mcp", {"Authorization": f"Bearer {token}", "Mcp-Session-Id": session},
                         tool_call("read_inbox", {}))
    assert allowed.status_code == 200 and '"isError":false' in allowed.text


async def test_authz_11_1_1_the_mcp_client_sees_the_refusal_as_an_error(gateway: Gateway, mcp_url: str) -> None:
    token = gateway.token(gateway.open_task(), "mail.read")
    assert not (await call_tool(mcp_url + "/mcp", token, "read_inbox")).is_error
    with pytest.raises(MCPError, match=r"insufficient_scope: tool send_mail needs scope mail\.send"):
        await call_tool(mcp_url + "/mcp", token, "send_mail", {"to": "bob@example.com", "subject": "hi"})


def scoped_server(verifier: AccessTokenVerifier, required_scopes: list[str] | None) -> Any:
    """An MCP app on the SDK's own middleware (no `accept_deputy_tokens`), its tool checking its scope itself."""
    auth = AuthSettings(issuer_url=AnyHttpUrl(verifier.issuer), resource_server_url=AnyHttpUrl(verifier.audience),
                        validate_token_resource=True, required_scopes=required_scopes)
    server = MCPServer("scoped", token_verifier=DeputyTokenVerifier(verifier), auth=auth)

    @server.tool()
    def send_mail() -> str:
        return f"sent for {require_tool_scope('mail.send').subject}"

    return server.streamable_http_app()


async def test_authz_11_the_sdks_own_403_names_only_the_first_missing_scope(gateway: Gateway) -> None:
    token = gateway.token(gateway.open_task(), "mail.read")
    async with verifying(gateway) as verifier, \
            serve_app(scoped_server(verifier, ["mail.read", "mail.send"]), free_port()) as url:
        response = await post(url + "/mcp", {"Authorization": f"Bearer {token}"})
    assert (response.status_code, response.json()) == (
        403, {"error": "insufficient_scope", "error_description": "Required scope: mail.send"})
    assert response.headers["www-authenticate"] == (
        'Bearer error="insufficient_scope", error_description="Required scope: mail.send", '
        'resource_metadata="https://mail.demo.test/.well-known/oauth-protected-resource"')  # no scope parameter


async def test_a_tools_own_scope_check_is_a_tool_error(gateway: Gateway) -> None:
    reader, sender = (gateway.token(gateway.open_task(), scope) for scope in ("mail.read", "mail.send"))
    async with verifying(gateway) as verifier, serve_app(scoped_server(verifier, None), free_port()) as url:
        refused = await call_tool(url + "/mcp", reader, "send_mail")
        allowed = await call_tool(url + "/mcp", sender, "send_mail")
    assert refused.is_error and "insufficient_scope: this tool needs scope mail.send" in str(refused.content)
    assert not allowed.is_error and "sent for alice" in str(allowed.content)


async def test_mcp_transport_a_session_continued_by_another_user_is_404(gateway: Gateway, mcp_url: str) -> None:
    alice = gateway.token(gateway.open_task(user="alice"), "mail.read")
    bob = gateway.token(gateway.open_task(user="bob"), "mail.read")
    session = await initialized_session(mcp_url + "/mcp", alice)
    hijack = await post(mcp_url + "/mcp", {"Authorization": f"Bearer {bob}", "Mcp-Session-Id": session},
                        tool_call("read_inbox", {}))
    assert hijack.status_code == 404, hijack.text
    own = await post(mcp_url + "/mcp", {"Authorization": f"Bearer {alice}", "Mcp-Session-Id": session},
                     tool_call("read_inbox", {}))
    assert own.status_code == 200 and '"user":"alice"' in own.text.replace(" ", "")


async def test_rfc9449_7_1_a_dpop_bound_token_is_accepted_with_its_proof_only(gateway: Gateway,
                                                                             mcp_url: str) -> None:
    key = DpopKey()
    task = gateway.open_task()
    token = gateway.token(task, "mail.read", dpop=key)
    url = mcp_url + "/mcp"
    ok = await post(url, {"Authorization": f"DPoP {token}", "DPoP": key.proof("POST", url, access_token=token)})
    assert ok.status_code == 200, ok.text
    replayed_proof = key.proof("POST", url, access_token=token)
    assert (await post(url, {"Authorization": f"DPoP {token}", "DPoP": replayed_proof})).status_code == 200
    for headers in ({"Authorization": f"DPoP {token}"},                                  # no proof
                    {"Authorization": f"Bearer {token}"},                                # a bound token as Bearer
                    {"Authorization": f"DPoP {token}", "DPoP": replayed_proof},          # replayed
                    {"Authorization": f"DPoP {token}", "DPoP": DpopKey().proof("POST", url, access_token=token)},
                    {"Authorization": f"DPoP {token}", "DPoP": key.proof("GET", url, access_token=token)}):
        assert (await post(url, headers)).status_code == 401, headers


async def test_rfc9728_3_the_served_metadata_names_deputy_and_the_tool_scopes(gateway: Gateway, mcp_url: str) -> None:
    async with httpx2.AsyncClient() as http:
        response = await http.get(mcp_url + "/.well-known/oauth-protected-resource")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.json() == {"resource": MAIL, "authorization_servers": [gateway.url],  # byte for byte
                               "scopes_supported": ["mail.read", "mail.send"], "bearer_methods_supported": ["header"],
                               "resource_name": "Deputy demo mail (MCP)"}


async def test_a_completed_tasks_token_is_refused(gateway: Gateway, mcp_url: str) -> None:
    task = gateway.open_task()
    token = gateway.token(task, "mail.read")
    assert not (await call_tool(mcp_url + "/mcp", token, "read_inbox")).is_error
    gateway.complete(task)
    deadline = time.monotonic() + 5
    while (response := await post(mcp_url + "/mcp", {"Authorization": f"Bearer {token}"})).status_code == 200:
        assert time.monotonic() < deadline, "the completed task's token was still accepted after 5 s"
        await asyncio.sleep(0.05)
    assert (response.status_code, response.json()) == (401, SDK_401)


@pytest.mark.parametrize(("body", "status", "error"), [
    (b"{", 400, "-32700"), (b"\xff\xfe", 400, "-32700"), (b"[]", 400, "-32602"),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": []}', 400, "-32602"),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": 7}}', 200, "-32602"),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call"}', 200, "-32602"),
    (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "send_mail", "arguments": {"x": '
     + b"[" * 5000 + b"]" * 5000 + b"}}}", 400, "-32700"),  # deeper than json.loads goes: was a 500
])
async def test_malformed_tool_calls_get_the_sdks_own_json_rpc_error_never_a_500(
        gateway: Gateway, mcp_url: str, body: bytes, status: int, error: str) -> None:
    token = gateway.token(gateway.open_task(), "mail.read")
    session = await initialized_session(mcp_url + "/mcp", token)
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.post(mcp_url + "/mcp", content=body, headers={
            **ACCEPT, "Authorization": f"Bearer {token}", "Mcp-Session-Id": session})
    assert response.status_code == status and f'"code":{error}' in response.text, response.text


async def test_authz_11_1_1_an_oversized_tool_call_is_refused_before_any_tool_runs(gateway: Gateway,
                                                                                   mcp_url: str) -> None:
    """A body too large to inspect could hide a tools/call from the per-tool scope check: it is refused (413)."""
    token = gateway.token(gateway.open_task(), "mail.read")
    session = await initialized_session(mcp_url + "/mcp", token)
    call = tool_call("send_mail", {"to": "bob@example.com", "subject": "x" * (MAX_INSPECTED_BODY + 1)})
    response = await post(mcp_url + "/mcp", {"Authorization": f"Bearer {token}", "Mcp-Session-Id": session}, call)
    assert response.status_code == 413 and "request body over" in response.text, response.text[:300]


async def test_fail_closed_without_confirmed_revocation_state_every_token_is_none(gateway: Gateway) -> None:
    """A verifier whose SSF stream is refused (its SVID names no client of the resource) never catches up."""
    token = gateway.token(gateway.open_task(), "mail.read")
    async with httpx2.AsyncClient(timeout=30) as client, AccessTokenVerifier(
        issuer=gateway.url, audience=MAIL, client=client, svid=lambda: gateway.ids.svid(AGENT), max_feed_staleness=1,
    ) as verifier:
        with pytest.raises(FeedStale):
            await verifier.verify(token, "mail.read")
        assert await DeputyTokenVerifier(verifier).verify_token(token) is None
