"""Fixtures: one gateway process per test module, configured with real keys and loopback JWKS."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    ACCESS_TOKEN,
    GRANT,
    JWT,
    JwksServer,
    TrustDomain,
    UserIdp,
    free_port,
    gateway_process,
)

MAIL = "https://mail.example.com"
CALENDAR = "https://calendar.example.com"
MAIL_AGENT = "spiffe://example.org/agents/mail"


@dataclass
class Deployment:
    """A running gateway and the identities that talk to it."""

    url: str
    issuer: str
    state_dir: Path
    idp: UserIdp  # JWKS from a file
    remote_idp: UserIdp  # JWKS from jwks_uri on loopback
    domain: TrustDomain  # bundle from a file
    remote_domain: TrustDomain  # bundle from bundle_uri on loopback
    jwks_server: JwksServer
    client: httpx.Client

    def user_token(self, sub: str = "alice", **kw: Any) -> str:
        kw.setdefault("audience", self.issuer)
        return self.idp.token(sub, **kw)

    def svid(self, path: str = "/agents/mail", **kw: Any) -> str:
        kw.setdefault("audience", self.issuer)
        return self.domain.svid(path, **kw)

    def exchange_form(self, **overrides: Any) -> dict[str, Any]:
        form: dict[str, Any] = {
            "grant_type": GRANT,
            "subject_token": self.user_token(),
            "subject_token_type": ACCESS_TOKEN,
            "actor_token": self.svid(),
            "actor_token_type": JWT,
            "resource": MAIL,
            "scope": "mail.read",
        }
        form.update(overrides)
        return {k: v for k, v in form.items() if v is not None}

    def exchange(self, **overrides: Any) -> httpx.Response:
        return self.client.post("/token", data=self.exchange_form(**overrides))

    def issued_count(self) -> int:
        with sqlite3.connect(self.state_dir / "deputy.db") as db:
            return int(db.execute("SELECT count(*) FROM issued_tokens").fetchone()[0])

    def audit(self) -> list[dict[str, Any]]:
        with sqlite3.connect(self.state_dir / "deputy.db") as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM audit_events ORDER BY id")]


def write_config(directory: Path, *, port: int, idp: UserIdp, remote_idp: UserIdp, domain: TrustDomain,
                 remote_domain: TrustDomain, jwks_url: str, extra: str = "") -> Path:
    (directory / "idp.jwks.json").write_text(json.dumps(idp.jwks()))
    (directory / "example.org.jwks").write_text(json.dumps(domain.jwks()))
    config = directory / "deputy.toml"
    config.write_text(textwrap.dedent(f"""
        issuer = "http://127.0.0.1:{port}"
        listen = "127.0.0.1:{port}"
        state_dir = "state"

        [[subject_issuers]]
        issuer = "{idp.name}"
        jwks_file = "idp.jwks.json"

        [[subject_issuers]]
        issuer = "{remote_idp.name}"
        jwks_uri = "{jwks_url}/idp"

        [[trust_domains]]
        name = "{domain.name}"
        bundle_file = "example.org.jwks"

        [[trust_domains]]
        name = "{remote_domain.name}"
        bundle_uri = "{jwks_url}/bundle"

        [[resources]]
        audience = "{MAIL}"
        scopes = ["mail.read", "mail.send"]
        max_ttl = 300

        [[resources]]
        audience = "{CALENDAR}"
        scopes = ["calendar.read"]
        max_ttl = 120
    """) + extra)
    return config


POLICY_DATA = {
    "deputy": {
        "ttl": 600,
        "grants": {
            MAIL_AGENT: {MAIL: ["mail.read", "mail.send"]},
            "spiffe://remote.example/agents/mail": {MAIL: ["mail.read"]},
        },
        "delegations": [
            {"issuer": "https://idp.example.com", "user": "alice", "agent": MAIL_AGENT},
            {"issuer": "https://idp.example.com", "user": "alice", "agent": "spiffe://remote.example/agents/mail"},
            {"issuer": "https://idp2.example.com", "user": "bob", "agent": MAIL_AGENT},
        ],
    }
}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    directory = tmp_path_factory.mktemp("deputy")
    policy_dir = directory / "policies"
    (policy_dir / "deputy").mkdir(parents=True)
    packaged = Path(__file__).resolve().parent.parent / "policies"
    for rego in (packaged / "deputy").glob("*.rego"):
        (policy_dir / "deputy" / rego.name).write_text(rego.read_text())
    (policy_dir / "data.json").write_text(json.dumps(POLICY_DATA))
    idp, remote_idp = UserIdp("https://idp.example.com"), UserIdp("https://idp2.example.com")
    domain, remote_domain = TrustDomain("example.org"), TrustDomain("remote.example")
    server = JwksServer()
    server.documents["/idp"] = remote_idp.jwks()
    server.documents["/bundle"] = remote_domain.jwks()
    port = free_port()
    config = write_config(directory, port=port, idp=idp, remote_idp=remote_idp, domain=domain,
                          remote_domain=remote_domain, jwks_url=server.url,
                          extra='\n[policy]\ndir = "policies"\n')
    try:
        with gateway_process(config) as url, httpx.Client(base_url=url, timeout=10) as client:
            yield Deployment(url, f"http://127.0.0.1:{port}", directory / "state", idp, remote_idp, domain,
                             remote_domain, server, client)
    finally:
        server.close()
