"""OIDC discovery of a workload issuer's keys against a real loopback HTTP server, with a fake monotonic
clock: `{issuer}/.well-known/openid-configuration`, then its `jwks_uri` (reference/k8s-oidc-workload-tokens.md
items 3-5 and "Bad inputs to test": an `issuer` that differs, a `jwks_uri` over http, an unknown `kid`).

Signatures are real: each lookup is driven by a Kubernetes service-account token verified end to end.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import httpx2
import pytest

from tests.support import JwksServer, compact, signer_for
from tests.token_exchange.conftest import T0, FakeClock
from token_exchange.jws import TokenError
from token_exchange.keys import ASYMMETRIC_ALGORITHMS, KeySetUnavailable, UnknownKey, parse_key_set
from token_exchange.oidc_discovery import (
    RETRY_FIRST_S,
    RETRY_MAX_S,
    DiscoveredKeys,
    configuration_url,
    jwks_uri_of,
)
from token_exchange.signing import SigningKey
from token_exchange.workload_tokens import WorkloadIssuer, WorkloadTokenVerifier

NOW = 1_800_000_000
DEPUTY = "https://deputy.example.com"
_clusters = itertools.count()


class Cluster:
    """A cluster whose API server publishes discovery and a JWKS on the loopback server (K8s-SA item 4)."""

    def __init__(self, server: JwksServer, *, document: dict[str, Any] | None = None) -> None:
        self.server = server
        self.path = f"/cluster-{next(_clusters)}"
        self.issuer = server.url + self.path
        self.key = SigningKey.generate("ES256")
        self.publish(self.key)
        server.documents[self.config_path] = document if document is not None else {
            "issuer": self.issuer, "jwks_uri": server.url + self.jwks_path,
            "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"]}

    @property
    def config_path(self) -> str:
        return self.path + "/.well-known/openid-configuration"

    @property
    def jwks_path(self) -> str:
        return self.path + "/openid/v1/jwks"

    def publish(self, *keys: SigningKey) -> None:
        self.server.documents[self.jwks_path] = {"keys": [k.public_jwk for k in keys]}

    def hits(self) -> tuple[int, int]:
        """(discovery document fetches, JWKS fetches)."""
        return self.server.hits.get(self.config_path, 0), self.server.hits.get(self.jwks_path, 0)

    def keys(self, client: httpx2.AsyncClient, clock: FakeClock) -> DiscoveredKeys:
        return DiscoveredKeys(self.issuer, client=client, clock=clock,
                              parse=lambda document: parse_key_set(document, allowed=ASYMMETRIC_ALGORITHMS))

    def token(self, key: SigningKey | None = None) -> str:
        signer = key or self.key
        claims = {"iss": self.issuer, "sub": "system:serviceaccount:agents:mail", "aud": [DEPUTY],
                  "iat": NOW, "exp": NOW + 600,
                  "kubernetes.io": {"namespace": "agents", "serviceaccount": {"name": "mail", "uid": "u"}}}
        return compact({"alg": "ES256", "kid": signer.kid}, claims, signer_for("ES256", signer.private_key))


def verifier(cluster: Cluster, keys: DiscoveredKeys) -> WorkloadTokenVerifier:
    return WorkloadTokenVerifier(WorkloadIssuer(cluster.issuer, DEPUTY, keys, "kubernetes"))


def test_oidc_discovery_4_the_configuration_is_at_the_issuer_without_its_terminating_slash() -> None:
    assert configuration_url("https://k8s.example.com") == "https://k8s.example.com/.well-known/openid-configuration"
    assert configuration_url("https://gh.example.com/_services/token/") == (
        "https://gh.example.com/_services/token/.well-known/openid-configuration")  # GHES (GH item 16)


async def test_k8s_sa_item_4_keys_are_found_through_discovery_on_first_use_and_then_kept(
        server: JwksServer, client: httpx2.AsyncClient) -> None:
    cluster, clock = Cluster(server), FakeClock()
    keys = cluster.keys(client, clock)
    assert cluster.hits() == (0, 0) and keys.jwks_uri is None  # nothing is fetched before a token needs a key
    actor = await verifier(cluster, keys).verify(cluster.token(), now=NOW)
    assert (actor.id, actor.domain) == ("system:serviceaccount:agents:mail", cluster.issuer)
    assert cluster.hits() == (1, 1) and keys.jwks_uri == server.url + cluster.jwks_path
    clock.now = T0 + 299
    await keys.key_for(cluster.key.kid)
    assert cluster.hits() == (1, 1)  # discovery once; the JWKS from memory within its 5 minutes


async def test_deputy_concurrent_first_lookups_share_one_discovery(server: JwksServer,
                                                                   client: httpx2.AsyncClient) -> None:
    cluster = Cluster(server)
    keys = cluster.keys(client, FakeClock())
    await asyncio.gather(*(keys.key_for(cluster.key.kid) for _ in range(8)))
    assert cluster.hits() == (1, 1)


BAD_DOCUMENTS: list[tuple[str, Any, str]] = [
    ("issuer_differs", lambda c: {"issuer": "https://attacker.example", "jwks_uri": c.server.url + c.jwks_path},
     "is not"),
    ("issuer_with_trailing_slash", lambda c: {"issuer": c.issuer + "/", "jwks_uri": c.server.url + c.jwks_path},
     "is not"),
    ("issuer_missing", lambda c: {"jwks_uri": c.server.url + c.jwks_path}, "is not"),
    ("jwks_uri_over_http", lambda c: {"issuer": c.issuer, "jwks_uri": "http://jwks.example.com/openid/v1/jwks"},
     "jwks_uri must use https"),
    ("jwks_uri_relative", lambda c: {"issuer": c.issuer, "jwks_uri": "/openid/v1/jwks"}, "not an absolute https URL"),
    ("jwks_uri_other_scheme", lambda c: {"issuer": c.issuer, "jwks_uri": "file:///etc/jwks"},
     "not an absolute https URL"),
    ("jwks_uri_missing", lambda c: {"issuer": c.issuer}, "has no jwks_uri"),
    ("not_an_object", lambda c: ["issuer", c.issuer], "not a JSON object"),
]


@pytest.mark.parametrize(("case", "document", "says"), BAD_DOCUMENTS, ids=[c[0] for c in BAD_DOCUMENTS])
async def test_oidc_discovery_4_3_an_untrustworthy_document_is_never_used(
        server: JwksServer, client: httpx2.AsyncClient, case: str, document: Any, says: str) -> None:
    """§4.3: the issuer MUST be identical to the configured one, else the document MUST NOT be used; a
    key set over plain http (not loopback) is refused too. Nothing of it is fetched, nothing verifies."""
    cluster = Cluster(server)
    server.documents[cluster.config_path] = document(cluster)
    with pytest.raises(TokenError, match=f"OIDC discovery at .* failed: .*{says}"):
        await verifier(cluster, cluster.keys(client, FakeClock())).verify(cluster.token(), now=NOW)
    assert cluster.hits() == (1, 0)


def test_oidc_discovery_4_3_jwks_uri_over_http_is_allowed_on_loopback_only() -> None:
    issuer = "https://k8s.example.com"
    for uri in ("http://127.0.0.1:8080/jwks", "http://[::1]/jwks", "http://localhost/jwks"):
        assert jwks_uri_of({"issuer": issuer, "jwks_uri": uri}, issuer=issuer) == uri
    for uri in ("http://10.0.0.1/jwks", "http://127.example.com/jwks"):
        with pytest.raises(ValueError, match="must use https"):
            jwks_uri_of({"issuer": issuer, "jwks_uri": uri}, issuer=issuer)


async def test_deputy_a_failed_discovery_is_retried_with_backoff_never_on_every_request(
        server: JwksServer, client: httpx2.AsyncClient) -> None:
    cluster, clock = Cluster(server), FakeClock()
    good = server.documents.pop(cluster.config_path)  # 404 first
    keys = cluster.keys(client, clock)
    delays = []
    delay = RETRY_FIRST_S
    for attempt in range(1, 9):
        with pytest.raises(KeySetUnavailable, match="HTTPStatusError"):
            await keys.key_for(cluster.key.kid)
        assert cluster.hits() == (attempt, 0)
        for _ in range(3):  # requests within the backoff do not fetch
            clock.now += delay / 4
            with pytest.raises(KeySetUnavailable):
                await keys.key_for(cluster.key.kid)
        assert cluster.hits() == (attempt, 0)
        clock.now += delay / 4
        delays.append(delay)
        delay = min(delay * 2, RETRY_MAX_S)
    assert delays == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]
    server.documents[cluster.config_path] = good
    await verifier(cluster, keys).verify(cluster.token(), now=NOW)  # due again: found, and kept
    assert cluster.hits() == (9, 1)


async def test_reference_an_unknown_kid_refetches_the_jwks_once_then_is_refused(
        server: JwksServer, client: httpx2.AsyncClient) -> None:
    """RemoteKeys' rule behind discovery: an unknown kid refetches at most once per 30 s, then is refused."""
    cluster, clock = Cluster(server), FakeClock()
    keys = cluster.keys(client, clock)
    await keys.key_for(cluster.key.kid)
    stranger = SigningKey.generate("ES256")
    clock.now = T0 + 30
    with pytest.raises(TokenError, match="no trusted key with kid"):
        await verifier(cluster, keys).verify(cluster.token(stranger), now=NOW)
    assert cluster.hits() == (1, 2)  # refetched once
    for _ in range(5):
        with pytest.raises(UnknownKey):
            await keys.key_for(stranger.kid)
    assert cluster.hits() == (1, 2)  # and not again within 30 s; discovery is not repeated either


async def test_k8s_sa_item_1_a_rotated_signing_key_is_found_by_the_refetch(
        server: JwksServer, client: httpx2.AsyncClient) -> None:
    cluster, clock = Cluster(server), FakeClock()
    keys = cluster.keys(client, clock)
    await keys.key_for(cluster.key.kid)
    rotated = SigningKey.generate("ES256")
    cluster.publish(cluster.key, rotated)
    clock.now = T0 + 30
    assert (await verifier(cluster, keys).verify(cluster.token(rotated), now=NOW)).id.endswith(":mail")
    assert cluster.hits() == (1, 2)
