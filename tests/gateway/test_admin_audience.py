"""RFC 8707 / RFC 9068 audience restriction, RFC 8725 §3.9: a user token opens /admin only when it was
issued for the admin API (`[admin] audience`, by default `<issuer>/admin`), an audience no subject token
has; and a token for the admin API is never taken as a `subject_token`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Deployment, deployed

ADMINS = """
[admin]
claim = "groups"
value = "deputy-admins"
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployed(tmp_path_factory.mktemp("admin-audience"), extra=ADMINS) as running:
        yield running


def _admin_tasks(gateway: Deployment, token: str) -> tuple[int, str]:
    response = gateway.client.get("/admin/tasks", headers={"Authorization": f"Bearer {token}"})
    return response.status_code, response.json().get("error_description", "") if response.status_code >= 400 else ""


def test_rfc8725_3_9_an_admins_subject_token_does_not_open_the_admin_api(gateway: Deployment) -> None:
    status, description = _admin_tasks(gateway, gateway.user_token("bob", groups=["deputy-admins"]))
    assert status == 401, description
    assert description == f"admin token rejected: aud does not include {gateway.issuer}/admin"


def test_rfc8707_a_user_token_for_the_admin_audience_opens_the_admin_api(gateway: Deployment) -> None:
    assert _admin_tasks(gateway, gateway.admin_user_token("bob", groups=["deputy-admins"]))[0] == 200
    status, description = _admin_tasks(gateway, gateway.admin_user_token("dave", groups=["staff"]))
    assert (status, description) == (403, "this user is not in the admin group")


@pytest.mark.parametrize("audiences", [["{issuer}/admin"], ["{issuer}", "{issuer}/admin"]])
def test_rfc8725_3_9_a_token_for_the_admin_audience_is_never_a_subject_token(gateway: Deployment,
                                                                              audiences: list[str]) -> None:
    token = gateway.user_token("bob", audience=[a.format(issuer=gateway.issuer) for a in audiences],
                               groups=["deputy-admins"])
    response = gateway.exchange(subject_token=token)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"  # RFC 8693 section 2.2.2: an invalid subject_token
    expected = (f"aud does not include {gateway.issuer}" if len(audiences) == 1 else "the audience of the admin API: "
                "such a token is an admin credential, never a subject_token (RFC 8725 section 3.9)")
    assert expected in response.json()["error_description"], response.text
