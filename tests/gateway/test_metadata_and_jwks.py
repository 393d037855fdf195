"""RFC 8414 metadata and the live `jwks_uri`; minted tokens checked with joserfc, an independent JOSE
library (RFC 9068 §2, §4; RFC 8693 §4.1)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from joserfc import jwt as jose_jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import ECKey, KeySet

from tests.conftest import MAIL, MAIL_AGENT, Deployment, make_setup, running
from tests.support import GRANT, b64url
from token_exchange.rfc8414 import well_known_path

WELL_KNOWN = "/.well-known/oauth-authorization-server"
PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k", "oth"}


@pytest.fixture(scope="module")
def document(deployment: Deployment) -> dict[str, Any]:
    response = deployment.client.get(WELL_KNOWN)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return dict(response.json())


def test_rfc8414_3_3_issuer_is_identical_to_the_configured_issuer(deployment: Deployment,
                                                                   document: dict[str, Any]) -> None:
    assert document["issuer"] == deployment.issuer  # byte for byte: no trailing slash, same port


def test_rfc8414_2_token_endpoint_and_jwks_uri(deployment: Deployment, document: dict[str, Any]) -> None:
    assert document["token_endpoint"] == deployment.issuer + "/token"
    assert document["jwks_uri"].startswith(deployment.issuer + "/")


def test_rfc8414_2_grant_types_supported_lists_token_exchange(document: dict[str, Any]) -> None:
    assert GRANT in document["grant_types_supported"]


def test_rfc8414_2_token_endpoint_auth_methods_are_stated(document: dict[str, Any]) -> None:
    methods = document["token_endpoint_auth_methods_supported"]
    assert methods and all(isinstance(m, str) and m for m in methods)


def test_rfc8414_3_2_no_member_is_an_empty_array(document: dict[str, Any]) -> None:
    assert all(value != [] for value in document.values()), document
    # §2 REQUIRES response_types_supported, §3.2 forbids empty arrays: Deputy has no authorization
    # endpoint and omits it (the documented choice in token_exchange/rfc8414.py).
    assert "response_types_supported" not in document
    assert "authorization_endpoint" not in document


def test_rfc8414_2_every_advertised_endpoint_answers(deployment: Deployment, document: dict[str, Any]) -> None:
    endpoints = {k: v for k, v in document.items() if k.endswith("_endpoint") or k == "jwks_uri"}
    for name, url in endpoints.items():
        assert url.startswith(deployment.issuer), (name, url)
        response = httpx2.get(url) if name == "jwks_uri" else httpx2.post(url, data={})
        assert response.status_code not in (404, 405) and response.status_code < 500, (name, response.text)


def test_rfc8414_2_scopes_supported_are_the_configured_scopes(document: dict[str, Any]) -> None:
    assert {"mail.read", "mail.send", "calendar.read"} <= set(document.get("scopes_supported", []))


@pytest.mark.parametrize(("issuer", "path"), [
    ("https://deputy.example.com", WELL_KNOWN),
    ("https://deputy.example.com/", WELL_KNOWN),
    ("https://deputy.example.com/tenant1", WELL_KNOWN + "/tenant1"),
    ("https://deputy.example.com/tenant1/", WELL_KNOWN + "/tenant1"),
])
def test_rfc8414_3_1_well_known_is_inserted_before_the_issuer_path(issuer: str, path: str) -> None:
    assert well_known_path(issuer) == path


@pytest.fixture(scope="module")
def path_issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, dict[str, Any]]]:
    """A gateway whose issuer has a path: its metadata lives at the inserted location (§3.1)."""
    setup = make_setup(tmp_path_factory.mktemp("tenant"))
    text = setup.config.read_text()
    setup.config.write_text(text.replace(f'issuer = "{setup.issuer}"', f'issuer = "{setup.issuer}/tenant1"'))
    try:
        with running(setup) as deployment:
            response = deployment.client.get(WELL_KNOWN + "/tenant1")
            assert response.status_code == 200, response.text
            yield deployment, dict(response.json())
    finally:
        setup.jwks_server.close()


# --- jwks_uri ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jwks(deployment: Deployment, document: dict[str, Any]) -> dict[str, Any]:
    response = httpx2.get(document["jwks_uri"])
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_rfc8414_item9_jwks_keys_have_kid_alg_and_use_sig_and_nothing_private(jwks: dict[str, Any]) -> None:
    assert jwks["keys"]
    for key in jwks["keys"]:
        assert key["kid"] and key["alg"] == "ES256" and key["use"] == "sig" and key["kty"] == "EC"
        assert not PRIVATE_JWK_MEMBERS & key.keys(), key


# --- Minted tokens verify with joserfc against the live jwks_uri --------------------------------------------


@pytest.fixture(scope="module")
def minted(deployment: Deployment) -> tuple[dict[str, Any], str]:
    response = deployment.exchange(scope="mail.read mail.send")
    assert response.status_code == 200, response.text
    return dict(response.json()), deployment.issuer


def verify(token: str, jwks: dict[str, Any]) -> jose_jwt.Token:
    return jose_jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["ES256", "RS256", "PS256", "EdDSA"])


def test_rfc9068_4_minted_token_verifies_with_joserfc(minted: tuple[dict[str, Any], str],
                                                      jwks: dict[str, Any]) -> None:
    body, issuer = minted
    token = verify(body["access_token"], jwks)
    jose_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": MAIL},
        sub={"essential": True, "value": "alice"},
        client_id={"essential": True, "value": MAIL_AGENT},
        scope={"essential": True, "value": "mail.read mail.send"},
        exp={"essential": True},
        iat={"essential": True},
        jti={"essential": True},
    ).validate(token.claims)


def test_rfc9068_2_1_header_is_typed_at_jwt_with_a_published_kid(minted: tuple[dict[str, Any], str],
                                                                   jwks: dict[str, Any]) -> None:
    token = verify(minted[0]["access_token"], jwks)
    assert token.header["typ"] == "at+jwt"
    assert token.header["alg"] == "ES256"
    assert token.header["kid"] in {k["kid"] for k in jwks["keys"]}


def test_rfc9068_2_2_claims(minted: tuple[dict[str, Any], str], jwks: dict[str, Any]) -> None:
    body, issuer = minted
    claims = verify(body["access_token"], jwks).claims
    assert claims["iss"] == issuer and claims["sub"] == "alice" and claims["aud"] == MAIL
    assert claims["client_id"] == MAIL_AGENT and claims["scope"] == body["scope"] == "mail.read mail.send"
    assert isinstance(claims["iat"], int) and claims["exp"] - claims["iat"] == body["expires_in"]
    assert abs(claims["iat"] - time.time()) < 60
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 27  # RFC 6749 §10.10: >= 160 bits


def test_rfc8693_4_1_act_names_the_agent_and_nothing_else(minted: tuple[dict[str, Any], str],
                                                          jwks: dict[str, Any]) -> None:
    act = verify(minted[0]["access_token"], jwks).claims["act"]
    assert act["sub"] == MAIL_AGENT
    assert not {"exp", "nbf", "aud", "iat"} & act.keys()  # §4.1: not meaningful inside act


def test_rfc9068_4_jti_is_unique_per_token(deployment: Deployment) -> None:
    jtis = set()
    for _ in range(3):
        response = deployment.exchange()
        assert response.status_code == 200, response.text
        jtis.add(jose_jwt.decode(response.json()["access_token"], KeySet.import_key_set(
            deployment.client.get("/.well-known/jwks.json").json())).claims["jti"])
    assert len(jtis) == 3


def test_rfc9068_4_joserfc_rejects_a_tampered_token(minted: tuple[dict[str, Any], str],
                                                    jwks: dict[str, Any]) -> None:
    """The verification above can fail: a changed claim, or another key set, is refused."""
    header, _, signature = minted[0]["access_token"].split(".")
    claims = verify(minted[0]["access_token"], jwks).claims
    forged = ".".join([header, b64url({**claims, "scope": "mail.admin"}), signature])
    with pytest.raises(BadSignatureError):
        verify(forged, jwks)
    other = ECKey.generate_key("P-256", parameters={"kid": jwks["keys"][0]["kid"]})
    with pytest.raises(JoseError):
        verify(minted[0]["access_token"], KeySet([other]).as_dict())


# --- An issuer with a path (RFC 8414 §3.1) ----------------------------------------------------------------


def test_rfc8414_3_1_issuer_with_a_path_serves_metadata_at_the_inserted_location(
        path_issuer: tuple[Deployment, dict[str, Any]]) -> None:
    deployment, document = path_issuer
    assert document["issuer"] == deployment.url + "/tenant1"


def test_rfc8414_2_issuer_with_a_path_advertises_endpoints_that_answer(
        path_issuer: tuple[Deployment, dict[str, Any]]) -> None:
    _, document = path_issuer
    assert httpx2.get(document["jwks_uri"]).status_code == 200, document["jwks_uri"]
    response = httpx2.post(document["token_endpoint"], data={})
    assert response.status_code == 400 and response.json()["error"] == "invalid_request", document["token_endpoint"]
