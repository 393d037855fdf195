"""The SDK's errors (RFC 6749 §5.2, RFC 8693 §2.2.2): typed exceptions carrying `error` and `error_description`,
and retries that are bounded and only for transient failures (503, connection errors), never for 4xx."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest

from deputy_client import (
    DeputyClient,
    DiscoveryError,
    GatewayUnavailable,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    Retries,
    UnauthorizedClient,
)
from deputy_client.connection import Metadata
from deputy_client.errors import from_response
from tests.client.sdk_support import FlakyProxy
from tests.conftest import IDP, MAIL, Deployment
from tests.support import RFC6749_CHARSET, UserIdp, free_port

FAST = Retries(attempts=3, backoff=0.01)


@pytest.fixture
def deputy(gateway: Deployment) -> DeputyClient:
    return DeputyClient(gateway.url, identity=lambda: gateway.svid(), retries=FAST)


async def refused(deputy: DeputyClient, user_token: str, resource: str = MAIL, scope: str = "mail.read") -> OAuthError:
    async with deputy:
        with pytest.raises(OAuthError) as raised:
            await deputy.exchange(user_token, resource=resource, scope=[scope])
    assert RFC6749_CHARSET.fullmatch(raised.value.error_description) and raised.value.error_description
    return raised.value


@pytest.mark.parametrize("kind", ["forged", "expired"])
async def test_errors_rfc8693_2_2_2_a_bad_user_token_raises_invalid_request(
        gateway: Deployment, deputy: DeputyClient, kind: str) -> None:
    """RFC 8693 §2.2.2 names `invalid_request` for a subject_token that is invalid (not RFC 6749's invalid_grant)."""
    bad = (UserIdp(IDP).token("alice", audience=gateway.issuer) if kind == "forged"  # the issuer, another key
           else gateway.user_token(ttl=-120))
    error = await refused(deputy, bad)
    assert type(error) is InvalidRequest and error.error == "invalid_request"
    assert "subject_token" in error.error_description


async def test_errors_rfc8707_2_an_unknown_resource_raises_invalid_target(
        gateway: Deployment, deputy: DeputyClient) -> None:
    error = await refused(deputy, gateway.user_token(), resource="https://unknown.example.com")
    assert isinstance(error, InvalidTarget) and error.error == "invalid_target"


async def test_errors_rfc6749_3_3_a_scope_nobody_offers_raises_invalid_scope(
        gateway: Deployment, deputy: DeputyClient) -> None:
    error = await refused(deputy, gateway.user_token(), scope="mail.delete")
    assert isinstance(error, InvalidScope) and error.error == "invalid_scope"


async def test_errors_a_user_who_did_not_delegate_raises_unauthorized_client(
        gateway: Deployment, deputy: DeputyClient) -> None:
    error = await refused(deputy, gateway.user_token("mallory"))
    assert isinstance(error, UnauthorizedClient)


@pytest.fixture
def proxy() -> Iterator[FlakyProxy]:
    flaky = FlakyProxy(failures=2)
    yield flaky
    flaky.close()


def through(proxy: FlakyProxy) -> httpx2.AsyncHTTPTransport:
    return httpx2.AsyncHTTPTransport(proxy=proxy.url)


async def test_errors_a_503_is_retried_with_backoff_then_succeeds(gateway: Deployment, proxy: FlakyProxy) -> None:
    async with DeputyClient(gateway.url, identity=lambda: gateway.svid(), retries=FAST,
                            transport=through(proxy)) as deputy:  # the metadata: 503, 503, then forwarded
        assert proxy.attempts == 3
        token = await deputy.exchange(gateway.user_token(), resource=MAIL, scope=["mail.read"])
    assert token.access_token and proxy.attempts == 4


async def test_errors_retries_are_bounded_then_gateway_unavailable(gateway: Deployment) -> None:
    proxy = FlakyProxy(failures=10, headers={"Retry-After": "0"})
    try:
        with pytest.raises(GatewayUnavailable, match="3 attempts") as raised:
            async with DeputyClient(gateway.url, identity=lambda: gateway.svid(), retries=FAST,
                                    transport=through(proxy)):
                pass
        assert proxy.attempts == 3 and raised.value.error == "temporarily_unavailable"
    finally:
        proxy.close()


async def test_errors_a_4xx_is_never_retried(gateway: Deployment) -> None:
    proxy = FlakyProxy(failures=0)
    try:
        async with DeputyClient(gateway.url, identity=lambda: gateway.svid(), retries=FAST,
                                transport=through(proxy)) as deputy:
            with pytest.raises(InvalidTarget):
                await deputy.exchange(gateway.user_token(), resource="https://unknown.example.com", scope=["x"])
        assert proxy.attempts == 2  # the metadata, then one exchange
    finally:
        proxy.close()


async def test_errors_a_gateway_that_cannot_be_reached_is_unavailable_after_bounded_attempts() -> None:
    deputy = DeputyClient(f"http://127.0.0.1:{free_port()}", identity=lambda: "svid", retries=FAST)
    with pytest.raises(GatewayUnavailable) as raised:
        async with deputy:
            pass
    assert isinstance(raised.value.__cause__, httpx2.TransportError)


async def test_errors_rfc8414_3_3_metadata_of_another_issuer_is_refused(gateway: Deployment) -> None:
    with pytest.raises(DiscoveryError, match="is not issuer"):
        async with DeputyClient(gateway.url.replace("127.0.0.1", "localhost"), identity=lambda: "svid"):
            pass


@pytest.mark.parametrize("url", ["http://deputy.example.com", "ftp://127.0.0.1", "deputy.example.com"])
def test_errors_a_gateway_url_without_https_outside_loopback_is_refused_before_any_credential_is_sent(
        url: str) -> None:
    with pytest.raises(DiscoveryError, match="must use https"):
        DeputyClient(url, identity=lambda: pytest.fail("an SVID was asked for"))


def test_errors_rfc8414_3_3_a_plain_http_token_endpoint_outside_loopback_is_refused() -> None:
    issuer = "https://deputy.example.com"
    with pytest.raises(DiscoveryError, match="token_endpoint must use https"):
        Metadata.parse({"issuer": issuer, "token_endpoint": "http://deputy.example.com/token"}, issuer)
    assert Metadata.parse({"issuer": issuer, "token_endpoint": f"{issuer}/token"}, issuer).token_endpoint


@pytest.mark.parametrize(("body", "error"), [
    ({"error": "invalid_grant", "error_description": "expired"}, InvalidGrant),
    ({"error": "invalid_scope"}, InvalidScope),
    ({"error": "use_dpop_nonce", "error_description": "fresh nonce"}, OAuthError),
    ("<html>", OAuthError),
])
def test_errors_rfc6749_5_2_each_code_raises_its_class_and_unknown_codes_keep_theirs(
        body: object, error: type[OAuthError]) -> None:
    raised = from_response(400, body)
    assert isinstance(raised, error)
    if isinstance(body, dict):
        assert raised.error == body["error"]
    else:
        assert raised.error == "invalid_response" and "HTTP 400" in raised.error_description
