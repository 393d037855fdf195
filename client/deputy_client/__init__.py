"""Deputy for agents and resource servers.

Agents get per-task, down-scoped tokens from a Deputy gateway by RFC 8693 token exchange; resource servers
verify them (`deputy_client.resource`), and MCP servers accept them (`deputy_client.mcp`).
"""
