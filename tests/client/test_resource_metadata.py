"""RFC 9728 protected resource metadata for a resource behind Deputy: the document (§2, §3.2), its
well-known URL (§3.1), the challenge that points at it (§5.1), and the FastAPI route serving it."""

from __future__ import annotations

import asyncio

import httpx2
import pytest
from fastapi import FastAPI

from deputy_client.resource.dependency import serve_metadata
from deputy_client.resource.metadata import challenge, metadata_url, protected_resource_metadata

ISSUER = "https://deputy.example.com"


@pytest.mark.parametrize(("resource", "url"), [
    ("https://r.example.com/api", "https://r.example.com/.well-known/oauth-protected-resource/api"),
    ("https://r.example.com/mcp/v1", "https://r.example.com/.well-known/oauth-protected-resource/mcp/v1"),
    ("https://r.example.com/", "https://r.example.com/.well-known/oauth-protected-resource"),
    ("https://r.example.com", "https://r.example.com/.well-known/oauth-protected-resource"),
    ("http://127.0.0.1:8700/mcp", "http://127.0.0.1:8700/.well-known/oauth-protected-resource/mcp"),
])
def test_rfc9728_3_1_the_well_known_path_is_inserted_before_the_resource_path(resource: str, url: str) -> None:
    assert metadata_url(resource) == url


@pytest.mark.parametrize("resource", ["https://r.example.com/api?x=1", "https://r.example.com/api#f", "/api",
                                      "urn:example:api", "ftp://r.example.com/api"])
def test_rfc9728_1_2_a_resource_identifier_is_an_absolute_url_without_query_or_fragment(resource: str) -> None:
    with pytest.raises(ValueError, match="not a resource identifier"):
        metadata_url(resource)
    with pytest.raises(ValueError, match="not a resource identifier"):
        protected_resource_metadata(resource, issuer=ISSUER, scopes=["a"])


def test_rfc9728_2_the_document_names_deputy_and_omits_empty_values() -> None:
    document = protected_resource_metadata("https://mail.example.com/", issuer=ISSUER, scopes=["b", "a", "a"])
    assert document == {"resource": "https://mail.example.com/",  # as given: §3.3 compares it exactly
                        "authorization_servers": [ISSUER], "scopes_supported": ["a", "b"],
                        "bearer_methods_supported": ["header"]}
    assert "scopes_supported" not in protected_resource_metadata("https://m.example.com", issuer=ISSUER, scopes=[])


def test_rfc9728_2_dpop_members_appear_only_when_dpop_is_accepted() -> None:
    document = protected_resource_metadata("https://m.example.com", issuer=ISSUER, scopes=["a"],
                                           dpop_algorithms=["ES256"], dpop_required=True, resource_name="Mail")
    assert (document["dpop_signing_alg_values_supported"], document["dpop_bound_access_tokens_required"],
            document["resource_name"]) == (["ES256"], True, "Mail")
    optional = protected_resource_metadata("https://m.example.com", issuer=ISSUER, scopes=["a"],
                                           dpop_algorithms=["ES256"])
    assert "dpop_bound_access_tokens_required" not in optional  # false is the default (§2)
    with pytest.raises(ValueError, match="dpop_algorithms"):
        protected_resource_metadata("https://m.example.com", issuer=ISSUER, scopes=["a"], dpop_required=True)


def test_mcp_authz_10_offline_access_is_never_advertised() -> None:
    with pytest.raises(ValueError, match="offline_access"):
        protected_resource_metadata("https://m.example.com", issuer=ISSUER, scopes=["a", "offline_access"])


def test_rfc9728_5_1_the_challenge_points_at_the_metadata() -> None:
    assert challenge("https://m.example.com/api") == \
        'Bearer resource_metadata="https://m.example.com/.well-known/oauth-protected-resource/api"'
    assert challenge("https://m.example.com", error="insufficient_scope", description="needs a b", scope="a b") == (
        'Bearer error="insufficient_scope", error_description="needs a b", scope="a b", '
        'resource_metadata="https://m.example.com/.well-known/oauth-protected-resource"')


def test_rfc9728_3_fastapi_serves_the_document_at_its_well_known_path() -> None:
    document = protected_resource_metadata("https://mail.example.com/api", issuer=ISSUER, scopes=["mail.read"])
    app = FastAPI()
    serve_metadata(app, document)

    async def fetch(path: str) -> httpx2.Response:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="https://mail.example.com") as c:
            return await c.get(path)

    served = asyncio.run(fetch("/.well-known/oauth-protected-resource/api"))
    assert (served.status_code, served.json()) == (200, document)
    assert asyncio.run(fetch("/api/.well-known/oauth-protected-resource")).status_code == 404  # inserted, not appended
