"""RFC 8414 authorization server metadata, built once from the issuer and the endpoints that exist."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def metadata(issuer: str, *, endpoints: dict[str, str], scopes: list[str], grant_types: list[str],
             token_auth_methods: Sequence[str] = ("none",), extensions: Mapping[str, Any] | None = None
             ) -> dict[str, Any]:
    """The metadata document (§2). Empty arrays are omitted (§3.2), so `response_types_supported`,
    REQUIRED by §2 but empty for a server with no authorization endpoint, is left out. `extensions` adds
    the members of extensions Deputy serves (client attestation's, §2: additional metadata MAY appear)."""
    base = origin(issuer)  # served at the origin's root, as the metadata is (§3.1)
    document: dict[str, Any] = {
        "issuer": issuer,
        "token_endpoint": base + "/token",
        "jwks_uri": base + "/.well-known/jwks.json",
        "grant_types_supported": grant_types,
        "token_endpoint_auth_methods_supported": list(token_auth_methods),
        "scopes_supported": sorted(scopes),
        **{name: base + path for name, path in endpoints.items()},
        **{f"{name.removesuffix('_endpoint')}_endpoint_auth_methods_supported": ["bearer_jwt_svid"]
           for name in endpoints},
        **(extensions or {}),
    }
    return {k: v for k, v in document.items() if v != []}


def origin(issuer: str) -> str:
    """The issuer's scheme and authority: Deputy's endpoints hang off its root (`origin + "/token"`)."""
    scheme, _, rest = issuer.partition("://")
    return f"{scheme}://{rest.partition('/')[0]}"


def metadata_url(issuer: str) -> str:
    """Where the issuer's metadata is served: its origin plus the well-known path (§3.1)."""
    scheme, _, rest = issuer.partition("://")
    return f"{scheme}://{rest.partition('/')[0]}{well_known_path(issuer)}"


def well_known_path(issuer: str) -> str:
    """§3.1: `/.well-known/oauth-authorization-server` inserted before the issuer's path."""
    after_scheme = issuer.partition("://")[2]
    path = after_scheme.partition("/")[2].rstrip("/")
    return "/.well-known/oauth-authorization-server" + (f"/{path}" if path else "")
