"""Issue 7 item 14: `deputy keys rotate` is taken up by a running gateway, every worker of it, without a
restart; tokens signed before the rotation keep verifying (the previous key stays published)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx2
import jwt
import pytest

from tests.conftest import MAIL, make_setup
from tests.support import ACCESS_TOKEN, GRANT, JWT, deputy_command, gateway_process


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


@pytest.mark.parametrize("workers", [1, 2])
def test_issue7_14_a_running_gateway_signs_with_a_rotated_key_within_seconds(tmp_path: Path, workers: int) -> None:
    setup = make_setup(tmp_path)
    form = lambda: {"grant_type": GRANT, "subject_token": setup.idp.token(audience=setup.issuer),  # noqa: E731
                    "subject_token_type": ACCESS_TOKEN, "actor_token": setup.domain.svid(audience=setup.issuer),
                    "actor_token_type": JWT, "resource": MAIL, "scope": "mail.read"}
    try:
        with gateway_process(setup.config, workers=workers) as url:
            def mint() -> str:  # a fresh connection each time, so both workers answer over the run
                response = httpx2.post(url + "/token", data=form(), timeout=10)
                assert response.status_code == 200, response.text
                return str(response.json()["access_token"])

            before = mint()
            rotate = subprocess.run(deputy_command("keys", "rotate", "--config", str(setup.config)),
                                    capture_output=True, text=True, timeout=60)
            assert rotate.returncode == 0, rotate.stderr
            assert "within seconds" in rotate.stdout
            deadline, kids = time.monotonic() + 5, set()
            while time.monotonic() < deadline:
                kids = {kid_of(mint()) for _ in range(8)}
                if kids and kid_of(before) not in kids:
                    break
                time.sleep(0.2)
            assert kids and kid_of(before) not in kids, "a worker still signs with the old key"
            published = httpx2.get(url + "/.well-known/jwks.json").json()["keys"]
            assert published[0]["kid"] in kids  # the new key is the current one
            previous = next(k for k in published if k["kid"] == kid_of(before))  # the old one stays published
            key = jwt.PyJWK(previous).key
            assert jwt.decode(before, key, algorithms=["ES256"], audience=MAIL)["aud"] == MAIL
    finally:
        setup.jwks_server.close()
