from tests.conftest import MAIL, Deployment


def test_rfc8693_2_2_1_exchange_returns_a_bearer_access_token(deployment: Deployment) -> None:
    response = deployment.exchange()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "mail.read"
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert response.headers["cache-control"] == "no-store"
    assert MAIL
