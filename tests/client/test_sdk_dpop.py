"""DPoP, the SDK's side (RFC 9449): one key per agent instance, a fresh proof with every exchange (§5) and, for
a DPoP-bound token, with every resource call (§7), carrying `ath`; a server's nonce (§8, §9) is used, once
asked for, by one retry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import jwt
import pytest

from deputy_client import DeputyClient, Retries
from deputy_client.grants import AccessToken
from deputy_client.tasks import Task
from tests.client.sdk_support import FlakyProxy, RecordingApi
from tests.conftest import MAIL, Deployment
from token_exchange.dpop import DpopKey, access_token_hash, target_uri


def proof_claims(proof: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """§4.3: the header and claims of a proof whose signature its own `jwk` verifies."""
    header = jwt.get_unverified_header(proof)
    assert header["typ"] == "dpop+jwt" and header["alg"] == "ES256" and "d" not in header["jwk"]
    key = jwt.PyJWK(header["jwk"], algorithm="ES256")
    return header, jwt.decode(proof, key.key, algorithms=["ES256"])


@pytest.fixture
def nonce_proxy() -> Iterator[FlakyProxy]:
    body = json.dumps({"error": "use_dpop_nonce", "error_description": "a nonce is required"}).encode()
    proxy = FlakyProxy(1, status=400, headers={"DPoP-Nonce": "nonce-1", "Content-Type": "application/json"},
                       body=body, path="/token")
    yield proxy
    proxy.close()


async def test_rfc9449_5_each_exchange_carries_a_fresh_proof_of_the_one_key_and_a_nonce_is_retried_once(
        gateway: Deployment, nonce_proxy: FlakyProxy) -> None:
    transport = httpx2.AsyncHTTPTransport(proxy=nonce_proxy.url)
    async with DeputyClient(gateway.url, identity=lambda: gateway.svid(), transport=transport,
                            retries=Retries(attempts=1)) as deputy:
        await deputy.exchange(gateway.user_token(), resource=MAIL, scope=["mail.read"])
        await deputy.exchange(gateway.user_token(), resource=MAIL, scope=["mail.read"])
        assert deputy.dpop_key is not None
        thumbprint = deputy.dpop_key.jkt
    proofs = [proof_claims(seen["dpop"]) for seen in nonce_proxy.seen if "dpop" in seen]
    assert len(proofs) == 3  # refused for want of a nonce, retried with it, then the second exchange
    assert {h["jwk"]["x"] for h, _ in proofs} == {deputy.dpop_key.public_jwk["x"]} and thumbprint
    assert len({c["jti"] for _, c in proofs}) == 3
    assert all(c["htm"] == "POST" and c["htu"] == f"{gateway.issuer}/token" and "ath" not in c for _, c in proofs)
    assert [c.get("nonce") for _, c in proofs] == [None, "nonce-1", "nonce-1"]  # remembered


async def test_rfc9449_without_dpop_no_proof_is_sent(gateway: Deployment) -> None:
    proxy = FlakyProxy(0)
    try:
        async with DeputyClient(gateway.url, identity=lambda: gateway.svid(), dpop=False,
                                transport=httpx2.AsyncHTTPTransport(proxy=proxy.url)) as deputy:
            await deputy.exchange(gateway.user_token(), resource=MAIL, scope=["mail.read"])
        assert deputy.dpop_key is None and not any("dpop" in seen for seen in proxy.seen)
    finally:
        proxy.close()


class BoundTokens:
    """Stands in for a gateway that binds tokens (RFC 9449 §5: `token_type: DPoP`), which this branch's
    gateway does not yet do; the proofs are real, made by the agent's key."""

    issuer = "https://deputy.example.com"

    def __init__(self) -> None:
        self.key, self.minted = DpopKey(), 0

    async def grant(self, form: dict[str, Any]) -> AccessToken:
        self.minted += 1
        return AccessToken.parse({"access_token": f"bound-{self.minted}", "token_type": "DPoP", "expires_in": 60,
                                  "task_id": "task-1"})

    async def complete(self, task_id: str) -> dict[str, Any]:
        return {}

    def proof(self, method: str, url: str, access_token: str, nonce: str | None) -> str:
        return self.key.proof(method, url, access_token=access_token, nonce=nonce)


async def test_rfc9449_7_a_bound_token_goes_as_dpop_with_ath_and_a_nonce_challenge_is_retried_once() -> None:
    gateway, api = BoundTokens(), RecordingApi(challenge="rs-nonce")
    try:
        task = Task(gateway, await gateway.grant({}), audiences=[MAIL])
        async with httpx2.AsyncClient(auth=task.auth(MAIL, "mail.read")) as http:
            first = await http.get(api.url + "/inbox?page=2")
            second = await http.get(api.url + "/inbox")
    finally:
        api.close()
    assert first.status_code == second.status_code == 200 and gateway.minted == 2  # task token, one access token
    assert [seen["authorization"] for seen in api.seen] == ["DPoP bound-2"] * 3
    proofs = [proof_claims(seen["dpop"])[1] for seen in api.seen]
    assert all(p["ath"] == access_token_hash("bound-2") and p["htm"] == "GET" for p in proofs)
    assert proofs[0]["htu"] == target_uri(api.url + "/inbox") and len({p["jti"] for p in proofs}) == 3
    assert [p.get("nonce") for p in proofs] == [None, "rs-nonce", "rs-nonce"]
