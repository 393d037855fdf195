"""The receiver's checks of the transmitter metadata (SSF 1.0 §7) and of the stream it creates (§8.1.1.1),
and discovery over HTTP for an issuer with a path (deputy_client.resource.ssf_client)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from deputy_client.resource import DiscoveryFailed
from deputy_client.resource.ssf_client import (
    StreamConfig,
    TransmitterError,
    TransmitterMetadata,
    configuration_url,
    discover,
)
from tests.support import JwksServer

ISSUER = "https://deputy.example.com"
AUDIENCE = "https://mail.example.com"


def metadata(issuer: str = ISSUER, **overrides: Any) -> dict[str, Any]:
    document = {"issuer": issuer, "spec_version": "1_0", "jwks_uri": f"{issuer}/ssf/jwks.json",
                "configuration_endpoint": f"{issuer}/ssf/streams", "status_endpoint": f"{issuer}/ssf/status",
                "verification_endpoint": f"{issuer}/ssf/verify",
                "delivery_methods_supported": ["urn:ietf:rfc:8935", "urn:ietf:rfc:8936"]}
    return {k: v for k, v in {**document, **overrides}.items() if v is not None}


def stream(**overrides: Any) -> dict[str, Any]:
    document = {"stream_id": "s1", "iss": ISSUER, "aud": AUDIENCE, "min_verification_interval": 1,
                "delivery": {"method": "urn:ietf:rfc:8936", "endpoint_url": f"{ISSUER}/ssf/poll/s1"}}
    return {**document, **overrides}


@pytest.mark.parametrize(("issuer", "url"), [
    ("https://tr.example.com", "https://tr.example.com/.well-known/ssf-configuration"),
    ("https://tr.example.com/", "https://tr.example.com/.well-known/ssf-configuration"),
    ("https://tr.example.com/issuer1", "https://tr.example.com/.well-known/ssf-configuration/issuer1"),
    ("https://tr.example.com/a/b/", "https://tr.example.com/.well-known/ssf-configuration/a/b"),
])
def test_ssf_7_2_the_well_known_path_goes_between_host_and_path(issuer: str, url: str) -> None:
    assert configuration_url(issuer) == url


def test_ssf_7_1_the_metadata_names_the_endpoints_the_receiver_uses() -> None:
    parsed = TransmitterMetadata.parse(metadata(critical_subject_members=["tenant"]), issuer=ISSUER)
    assert (parsed.jwks_uri, parsed.critical_subject_members) == (f"{ISSUER}/ssf/jwks.json", frozenset({"tenant"}))


BAD_METADATA = [
    ("issuer_differs", metadata(issuer="https://other.example.com"), "7.2.4"),
    ("issuer_trailing_slash", metadata(issuer=ISSUER + "/"), "7.2.4"),
    ("jwks_uri_plain_http", metadata(jwks_uri="http://deputy.example.com/ssf/jwks.json"), "https"),
    ("jwks_uri_missing", metadata(jwks_uri=None), "jwks_uri"),
    ("status_endpoint_elsewhere", metadata(status_endpoint="https://evil.example.com/ssf/status"), "origin"),
    ("poll_config_endpoint_relative", metadata(configuration_endpoint="/ssf/streams"), "configuration_endpoint"),
    ("critical_members_not_strings", metadata(critical_subject_members=[1]), "critical_subject_members"),
    ("not_an_object", ["issuer"], "JSON object"),
]


@pytest.mark.parametrize(("document", "names"), [b[1:] for b in BAD_METADATA], ids=[b[0] for b in BAD_METADATA])
def test_ssf_7_2_4_unusable_metadata_is_not_used(document: Any, names: str) -> None:
    with pytest.raises(DiscoveryFailed, match=names):
        TransmitterMetadata.parse(document, issuer=ISSUER)


def test_ssf_7_1_plain_http_only_on_loopback() -> None:
    local = "http://127.0.0.1:8443"
    assert TransmitterMetadata.parse(metadata(issuer=local), issuer=local).jwks_uri == local + "/ssf/jwks.json"
    with pytest.raises(DiscoveryFailed, match="https"):
        TransmitterMetadata.parse(metadata(issuer="http://deputy.example.com"), issuer="http://deputy.example.com")


BAD_STREAMS = [
    ("iss_differs", stream(iss="https://other.example.com"), "iss"),
    ("aud_not_naming_the_resource", stream(aud=["https://docs.example.com"]), "aud"),
    ("aud_missing", stream(aud=None), "aud"),
    ("push_delivery", stream(delivery={"method": "urn:ietf:rfc:8935", "endpoint_url": "https://rs/x"}), "poll"),
    ("poll_endpoint_elsewhere", stream(delivery={"method": "urn:ietf:rfc:8936",
                                                 "endpoint_url": "https://evil.example.com/poll"}), "origin"),
    ("no_stream_id", stream(stream_id=None), "stream_id"),
]


@pytest.mark.parametrize(("document", "names"), [b[1:] for b in BAD_STREAMS], ids=[b[0] for b in BAD_STREAMS])
def test_ssf_8_1_1_1_the_receiver_checks_the_stream_it_created(document: dict[str, Any], names: str) -> None:
    with pytest.raises(TransmitterError, match=names):
        StreamConfig.parse(document, issuer=ISSUER, audience=AUDIENCE)


def test_ssf_8_1_1_an_aud_array_naming_the_resource_is_accepted() -> None:
    parsed = StreamConfig.parse(stream(aud=[AUDIENCE, "https://docs.example.com"]), issuer=ISSUER, audience=AUDIENCE)
    assert parsed.audience == {AUDIENCE, "https://docs.example.com"} and parsed.poll_url.endswith("/ssf/poll/s1")


@pytest.fixture
def server() -> Iterator[JwksServer]:
    running = JwksServer()
    yield running
    running.close()


async def test_ssf_7_2_discovery_of_an_issuer_with_a_path_fetches_the_inserted_well_known(server: JwksServer) -> None:
    issuer = server.url + "/tenant1"
    server.documents["/.well-known/ssf-configuration/tenant1"] = metadata(issuer=issuer)
    server.documents["/tenant1/.well-known/ssf-configuration"] = metadata(issuer="https://appended.example.com")
    async with httpx2.AsyncClient(timeout=5) as client:
        assert (await discover(client, issuer)).configuration_endpoint == issuer + "/ssf/streams"
        with pytest.raises(DiscoveryFailed, match="unavailable"):
            await discover(client, server.url + "/tenant2")
