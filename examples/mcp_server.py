"""An MCP server (streamable HTTP) whose tools are protected by Deputy's access tokens.

`read_inbox` needs `mail.read`, `send_mail` needs `mail.send`: a call without the tool's scope is
answered 403 `insufficient_scope` naming it; a token of a completed task is refused (401).
Against `deputy serve --dev` (its resource `https://mail.demo.test` and resource server SVID):

    deputy serve --dev &
    python examples/mcp_server.py            # serves http://127.0.0.1:8700/mcp (--issuer, --port)
"""

from __future__ import annotations

from typing import Any

from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from pydantic import AnyHttpUrl
from starlette.applications import Starlette

from deputy_client.mcp import DeputyTokenVerifier, accept_deputy_tokens, require_tool_scope
from deputy_client.resource import AccessTokenVerifier
from deputy_client.resource.metadata import protected_resource_metadata
from gateway.demo import INBOX, resource_main

TOOL_SCOPES = {"read_inbox": "mail.read", "send_mail": "mail.send"}


def mcp_app(verifier: AccessTokenVerifier) -> Starlette:
    """The MCP app for `verifier.audience`; every tool also checks its scope itself (defence in depth)."""
    tokens = DeputyTokenVerifier(verifier)
    auth = AuthSettings(issuer_url=AnyHttpUrl(verifier.issuer), resource_server_url=AnyHttpUrl(verifier.audience),
                        validate_token_resource=True, required_scopes=None)  # any valid token; tools narrow it
    server = MCPServer("Deputy demo mail", token_verifier=tokens, auth=auth)

    @server.tool()
    def read_inbox() -> dict[str, Any]:
        """The user's inbox."""
        token = require_tool_scope(TOOL_SCOPES["read_inbox"])
        return {"user": token.subject, "agent": token.client_id, "task": (token.claims or {}).get("txn"),
                "messages": INBOX}

    @server.tool()
    def send_mail(to: str, subject: str) -> dict[str, Any]:
        """Queue a message to `to`."""
        token = require_tool_scope(TOOL_SCOPES["send_mail"])
        return {"user": token.subject, "to": to, "subject": subject, "status": "queued"}

    metadata = protected_resource_metadata(verifier.audience, issuer=verifier.issuer,
                                           scopes=TOOL_SCOPES.values(), resource_name="Deputy demo mail (MCP)")
    return accept_deputy_tokens(server.streamable_http_app(), tokens, tool_scopes=TOOL_SCOPES, metadata=metadata)


if __name__ == "__main__":
    resource_main(mcp_app, description="An MCP server whose tools are protected by Deputy", port=8700)
