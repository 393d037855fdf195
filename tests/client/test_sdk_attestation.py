"""Client attestation through the SDK (draft-ietf-oauth-attestation-based-client-auth-10): the attested
`cnf.jwk` is the agent instance's DPoP key, and the PoP (§5.1) is signed by it; with a healthy posture the
packaged policy grants the sensitive scope it otherwise drops."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from deputy_client import DeputyClient
from tests.conftest import MAIL, Deployment, running
from tests.gateway.test_posture import SCOPES, posture_setup
from tests.support import AgentInstance


@pytest.fixture(scope="module")
def posture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, AgentInstance]]:
    setup, mail, _ = posture_setup(tmp_path_factory.mktemp("sdk-posture"))
    try:
        with running(setup) as deployment:
            yield deployment, mail
    finally:
        setup.jwks_server.close()


async def test_abca_5_1_the_attested_key_is_the_dpop_key_and_the_posture_grants_the_sensitive_scope(
        posture: tuple[Deployment, AgentInstance]) -> None:
    deployment, mail = posture
    asked: list[dict[str, Any]] = []

    async def attest(jwk: dict[str, Any]) -> str:  # the attester vouches for the key the SDK holds
        asked.append(jwk)
        return instance.attestation()

    deputy = DeputyClient(deployment.url, identity=lambda: deployment.svid(), attestation=attest)
    assert deputy.dpop_key is not None
    instance = AgentInstance(mail.agent, deployment.issuer, attester=mail.attester, key=deputy.dpop_key.signing_key)
    async with deputy:
        token = await deputy.exchange(deployment.user_token(scope=SCOPES), resource=MAIL, scope=["mail.delete"])
        plain = DeputyClient(deployment.url, identity=lambda: deployment.svid())
        async with plain:
            dropped = await plain.exchange(deployment.user_token(scope=SCOPES), resource=MAIL,
                                           scope=["mail.read", "mail.delete"])
    assert token.scope == ("mail.delete",) and dropped.scope == ("mail.read",)
    assert asked == [deputy.dpop_key.public_jwk]


def test_abca_an_attestation_without_dpop_is_refused() -> None:
    with pytest.raises(ValueError, match="dpop"):
        DeputyClient("http://127.0.0.1:1", identity=lambda: "svid", dpop=False, attestation=lambda jwk: "a")
