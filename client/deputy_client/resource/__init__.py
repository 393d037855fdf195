"""For resource servers: verify Deputy's access tokens locally, against live revocation state.

Depends on the protocol core (`token_exchange`) only, never on the gateway, so it can ship to resource
servers on its own. `deputy_client.resource.dependency` adds a FastAPI dependency.
"""

from .errors import (
    BearerTokenError,
    DiscoveryFailed,
    FeedStale,
    InsufficientScope,
    InvalidDpopProof,
    InvalidToken,
    MalformedRequest,
    NoCredentials,
    www_authenticate,
)
from .verifier import AccessTokenVerifier, VerifiedAccess, required_scope_of

__all__ = [
    "AccessTokenVerifier",
    "BearerTokenError",
    "DiscoveryFailed",
    "FeedStale",
    "InsufficientScope",
    "InvalidDpopProof",
    "InvalidToken",
    "MalformedRequest",
    "NoCredentials",
    "VerifiedAccess",
    "required_scope_of",
    "www_authenticate",
]
