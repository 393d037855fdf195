"""Deputy for agents and resource servers.

Agents get per-task, down-scoped tokens from a Deputy gateway by RFC 8693 token exchange (`DeputyClient`, and
`deputy_client.sync.DeputyClient` for code that is not async); resource servers verify them
(`deputy_client.resource`), and MCP servers accept them (`deputy_client.mcp`).
"""

from .client import DeputyClient
from .connection import Retries
from .errors import (
    AccessDenied,
    DiscoveryError,
    GatewayUnavailable,
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    TemporarilyUnavailable,
    UnauthorizedClient,
    UnknownOAuthError,
)
from .grants import AccessToken
from .handoff import Handoff
from .identity import IdentitySource, SvidFile, WorkloadApiIdentity
from .tasks import Task

__all__ = ["AccessDenied", "AccessToken", "DeputyClient", "DiscoveryError", "GatewayUnavailable", "Handoff",
           "IdentitySource", "InvalidClient", "InvalidGrant", "InvalidRequest", "InvalidScope", "InvalidTarget",
           "OAuthError", "Retries", "SvidFile", "Task", "TemporarilyUnavailable", "UnauthorizedClient",
           "UnknownOAuthError", "WorkloadApiIdentity"]
