"""RFC 9728 protected resource metadata for a resource that accepts Deputy's access tokens.

Framework-free: `protected_resource_metadata` builds the document, `metadata_url` says where it is served
(the well-known path inserted before the resource's path, §3.1), `challenge` builds the `WWW-Authenticate`
value that points at it (§5.1). `deputy_client.resource.dependency.serve_metadata` adds the FastAPI route.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

WELL_KNOWN = "/.well-known/oauth-protected-resource"


def protected_resource_metadata(
    resource: str, *, issuer: str, scopes: Iterable[str], dpop_algorithms: Sequence[str] = (),
    dpop_required: bool = False, resource_name: str | None = None,
) -> dict[str, Any]:
    """The §2 document naming Deputy (`issuer`) as the one authorization server for `resource`.

    `scopes` are the resource's `[[resources]] scopes`; `dpop_algorithms` the DPoP proof algorithms it
    accepts (RFC 9449 §5.1), and `dpop_required` whether it refuses Bearer tokens. Parameters without a
    value are omitted (§3.2). Raises `ValueError` for a resource that is no identifier (§1.2) or for
    `offline_access` (MCP Authorization section 10: not to be advertised).
    """
    _check_identifier(resource)
    listed = sorted(set(scopes))
    if "offline_access" in listed:
        raise ValueError("offline_access is not a scope of a protected resource")
    if dpop_required and not dpop_algorithms:
        raise ValueError("dpop_required needs the accepted dpop_algorithms")
    document: dict[str, Any] = {
        "resource": resource,
        "authorization_servers": [issuer],
        "scopes_supported": listed,
        "bearer_methods_supported": ["header"],  # RFC 6750 §2.1 only: never the body or the query
        "resource_name": resource_name,
        "dpop_signing_alg_values_supported": list(dpop_algorithms),
        "dpop_bound_access_tokens_required": dpop_required or None,
    }
    return {name: value for name, value in document.items() if value not in (None, [])}


def metadata_url(resource: str) -> str:
    """§3.1: `https://r/api` → `https://r/.well-known/oauth-protected-resource/api` (a bare `/` path is dropped)."""
    _check_identifier(resource)
    parts = urlsplit(resource)
    path = "" if parts.path == "/" else parts.path
    return f"{parts.scheme}://{parts.netloc}{WELL_KNOWN}{path}"


def challenge(resource: str, *, error: str | None = None, description: str | None = None,
              scope: str | None = None, scheme: str = "Bearer") -> str:
    """A `WWW-Authenticate` value (RFC 6750 §3) with `resource_metadata` (RFC 9728 §5.1).

    A request that carried no credentials gets no `error` (RFC 6750 §3.1)."""
    params = [("error", error), ("error_description", description), ("scope", scope),
              ("resource_metadata", metadata_url(resource))]
    return f"{scheme} " + ", ".join(f'{name}="{value}"' for name, value in params if value is not None)


def _check_identifier(resource: str) -> None:
    parts = urlsplit(resource)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.fragment or parts.query:
        raise ValueError(f"{resource!r} is not a resource identifier: an absolute URL without query or fragment")
