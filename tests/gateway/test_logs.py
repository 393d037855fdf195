"""Issue 7 item 15: at the default level nothing is logged per request; at info every decision is one JSON
line named after it, carrying the audit facts and never a token (docs/operations.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.conftest import MAIL, Setup, make_setup
from tests.support import ACCESS_TOKEN, GRANT, JWT, gateway_log, gateway_process


def requests(setup: Setup, url: str) -> list[str]:
    """A granted exchange, refusals of several kinds, and calls to other endpoints; returns the tokens sent."""
    user, svid = setup.idp.token(audience=setup.issuer), setup.domain.svid(audience=setup.issuer)
    form = {"grant_type": GRANT, "subject_token": user, "subject_token_type": ACCESS_TOKEN, "actor_token": svid,
            "actor_token_type": JWT, "resource": MAIL, "scope": "mail.read"}
    with httpx2.Client(base_url=url, timeout=10) as client:
        granted = client.post("/token", data=form)
        assert granted.status_code == 200, granted.text
        assert client.post("/token", data={**form, "scope": "mail.delete"}).status_code == 400
        assert client.post("/token", data={**form, "actor_token": "x.y.z"}).status_code == 400
        assert client.post("/token", data={"grant_type": "password"}).status_code == 400
        assert client.post("/introspect", data={"token": "x"}).status_code == 401
        assert client.get("/nothing").status_code == 404
    return [user, svid, granted.json()["access_token"]]


def lines(setup: Setup) -> list[dict[str, Any]]:
    return [json.loads(line) for line in gateway_log(setup.config).read_text().splitlines() if line.startswith("{")]


@pytest.mark.parametrize("level", ["warning", "info"])
def test_issue7_15_per_request_logs_only_at_info_each_decision_once_without_tokens(tmp_path: Path,
                                                                                  level: str) -> None:
    setup = make_setup(tmp_path)
    try:
        with gateway_process(setup.config, log_level=level) as url:
            sent = requests(setup, url)
        logged = lines(setup)
    finally:
        setup.jwks_server.close()
    if level == "warning":
        assert logged == [], logged
        return
    events = [entry["event"] for entry in logged]
    assert events == ["exchange.granted", "exchange.refused", "exchange.refused", "exchange.refused"], events
    granted = logged[0]
    assert granted["level"] == "info" and granted["decision"]["outcome"] == "granted"
    assert granted["decision"]["agent"] == "spiffe://example.org/agents/mail" and granted["decision"]["jti"]
    assert [entry["decision"]["error"] for entry in logged[1:]] == [
        "invalid_scope", "invalid_request", "unsupported_grant_type"]
    text = gateway_log(setup.config).read_text()
    assert not any(token in text for token in sent)  # never a token, not even the one minted
