"""Fixtures: one gateway process per test module, configured with real keys and loopback JWKS; the shared
`deployment` runs each module's black-box tests on SQLite and again on PostgreSQL (`STORES`).

A deployment trusts two identity providers (JWKS from a file, JWKS from a loopback server), two SPIFFE
trust domains (bundle from a file, bundle from a loopback server), and, to prove that a fetch failure
denies, one IdP and one trust domain whose key sets cannot be fetched.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import sqlite3
import tempfile
import textwrap
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from psycopg.rows import dict_row

from delegation.stores import open_store
from gateway.key_ring import Stored
from gateway.keystore import KeyFiles
from gateway.sealed_keys import StoreKeys, read_encryption_key
from tests.postgres import postgresql_cluster, postgresql_server, postgresql_url  # noqa: F401 (fixtures)
from tests.support import (
    ACCESS_TOKEN,
    GRANT,
    JWT,
    RFC6749_CHARSET,
    JwksServer,
    TrustDomain,
    UserIdp,
    free_port,
    gateway_log,
    gateway_process,
)
from token_exchange.signing import SigningKey

ROOT = Path(__file__).resolve().parent.parent
MAIL = "https://mail.example.com"
CALENDAR = "https://calendar.example.com"
FILES = "https://files.example.com"  # max_ttl above the policy's ttl: the policy's lifetime binds
MAIL_AGENT = "spiffe://example.org/agents/mail"
HELPER_AGENT = "spiffe://example.org/agents/helper"  # has grants, but no user delegates to it in data
REMOTE_AGENT = "spiffe://remote.example/agents/mail"
IDP, REMOTE_IDP = "https://idp.example.com", "https://idp2.example.com"
DOWN_IDP, MISSING_IDP, GARBAGE_IDP = (f"https://idp-{n}.example.com" for n in ("down", "404", "garbage"))
DOWN_DOMAIN = "down.example"
AUDIENCE_IDP, AUDIENCE = "https://idp3.example.com", "https://deputy.example.com"  # `audience` configured
POLICY_TTL = 600


def _policy_namespace() -> str:
    """The data document the packaged policy reads (`data.<namespace>.grants`), taken from its data.json."""
    return next(iter(json.loads((ROOT / "policies" / "data.json").read_text())))


POLICY_DATA = {
    _policy_namespace(): {
        "ttl": POLICY_TTL,
        "grants": {
            MAIL_AGENT: {MAIL: ["mail.read", "mail.send"], FILES: ["files.read"]},
            HELPER_AGENT: {MAIL: ["mail.read"]},
            REMOTE_AGENT: {MAIL: ["mail.read"]},
        },
        "delegations": {
            IDP: {"alice": [MAIL_AGENT, REMOTE_AGENT]},
            REMOTE_IDP: {"bob": [MAIL_AGENT]},
        },
    }
}


@dataclass
class Setup:
    """Everything a gateway needs on disk and on loopback, before its process starts."""

    directory: Path
    config: Path
    port: int
    idp: UserIdp  # JWKS from a file; also holds an RS256 key (`rsa_key`)
    remote_idp: UserIdp  # JWKS from jwks_uri on loopback
    domain: TrustDomain  # bundle from a file; also holds an x509-svid key (`x509_key`)
    remote_domain: TrustDomain  # bundle from bundle_uri on loopback
    jwks_server: JwksServer
    rsa_key: SigningKey
    x509_key: SigningKey

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def write_config(directory: Path, *, port: int, idp: UserIdp, remote_idp: UserIdp, domain: TrustDomain,
                 remote_domain: TrustDomain, jwks_url: str, extra: str = "", dead_url: str | None = None) -> Path:
    (directory / "idp.jwks.json").write_text(json.dumps(idp.jwks()))
    (directory / "example.org.jwks").write_text(json.dumps(domain.jwks()))
    unreachable = ""
    if dead_url is not None:
        unreachable = f"""
        [[subject_issuers]]
        issuer = "{DOWN_IDP}"
        jwks_uri = "{dead_url}/jwks"

        [[subject_issuers]]
        issuer = "{MISSING_IDP}"
        jwks_uri = "{jwks_url}/missing"

        [[subject_issuers]]
        issuer = "{GARBAGE_IDP}"
        jwks_uri = "{jwks_url}/garbage"

        [[trust_domains]]
        name = "{DOWN_DOMAIN}"
        bundle_uri = "{dead_url}/bundle"
        """
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

        [[subject_issuers]]
        issuer = "{AUDIENCE_IDP}"
        jwks_file = "idp.jwks.json"
        audience = "{AUDIENCE}"

        [[trust_domains]]
        name = "{domain.name}"
        bundle_file = "example.org.jwks"

        [[trust_domains]]
        name = "{remote_domain.name}"
        bundle_uri = "{jwks_url}/bundle"
        {unreachable}
        [[resources]]
        audience = "{MAIL}"
        scopes = ["mail.read", "mail.send"]
        max_ttl = 300

        [[resources]]
        audience = "{CALENDAR}"
        scopes = ["calendar.read"]
        max_ttl = 120

        [[resources]]
        audience = "{FILES}"
        scopes = ["files.read"]
        max_ttl = 3600
    """) + extra)
    return config


def make_setup(directory: Path, *, extra: str = "", policy_files: Mapping[str, str] | None = None,
               policy: str = "") -> Setup:
    """Keys, JWKS files and server, packaged Rego with test data, and a deputy.toml in `directory`.

    `extra` is appended to the TOML (tables only, e.g. `[tokens]`); `policy_files` (path in the policy
    directory → text) replace or add to the packaged Rego and the test data (`data.json`); `policy` holds
    more keys of the `[policy]` table (e.g. `engine = "opa"`)."""
    policy_dir = directory / "policies"
    (policy_dir / "deputy").mkdir(parents=True)
    for rego in (ROOT / "policies" / "deputy").glob("*.rego"):
        (policy_dir / "deputy" / rego.name).write_text(rego.read_text())
    (policy_dir / "data.json").write_text(json.dumps(POLICY_DATA))
    for name, text in (policy_files or {}).items():
        (policy_dir / name).write_text(text)
    rsa_key = SigningKey.of("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    x509_key = SigningKey.generate("ES256")
    x509_jwk = {k: v for k, v in x509_key.public_jwk.items() if k != "alg"} | {"use": "x509-svid"}
    idp = UserIdp(IDP, extra_jwks=[rsa_key.public_jwk])
    remote_idp = UserIdp(REMOTE_IDP)
    domain = TrustDomain("example.org", extra_jwks=[x509_jwk])
    remote_domain = TrustDomain("remote.example")
    server = JwksServer()
    server.documents["/idp"] = remote_idp.jwks()
    server.documents["/bundle"] = remote_domain.jwks()
    server.documents["/garbage"] = "this is not a JWK Set"
    port = free_port()
    config = write_config(directory, port=port, idp=idp, remote_idp=remote_idp, domain=domain,
                          remote_domain=remote_domain, jwks_url=server.url,
                          dead_url=f"http://127.0.0.1:{free_port()}",
                          extra=f'\n[policy]\ndir = "policies"\n{policy}\n' + extra)
    return Setup(directory, config, port, idp, remote_idp, domain, remote_domain, server, rsa_key, x509_key)


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
    client: httpx2.Client
    setup: Setup | None = field(default=None, repr=False)
    store_url: str | None = None  # None: the SQLite file in state_dir

    def user_token(self, sub: str = "alice", **kw: Any) -> str:
        kw.setdefault("audience", self.issuer)
        return self.idp.token(sub, **kw)

    def admin_user_token(self, sub: str = "carol", **kw: Any) -> str:
        """A user token for the admin API (`[admin] audience`, by default `<issuer>/admin`)."""
        return self.user_token(sub, audience=f"{self.issuer}/admin", **kw)

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

    def exchange(self, **overrides: Any) -> httpx2.Response:
        return self.client.post("/token", data=self.exchange_form(**overrides))

    def rows(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        """What `sql` (with `?` placeholders) selects from the gateway's store, whichever it is, with JSON
        columns as text."""
        if self.store_url is not None and self.store_url.startswith("postgres"):
            with psycopg.connect(self.store_url, row_factory=dict_row) as connection:
                rows = connection.execute(sql.replace("?", "%s"), params).fetchall()  # type: ignore[arg-type]
            # JSON columns as the SQLite store keeps them: text
            return [{k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in r.items()} for r in rows]
        with sqlite3.connect(self.state_dir / "deputy.db") as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute(sql, params)]

    def signing_keys(self) -> Stored:
        """Deputy's key ring as it holds it: its key files, or sealed in the store under the deployment's KEK."""
        async def read() -> Stored | None:
            if self.store_url is None:
                return await KeyFiles(self.state_dir).read()
            store = await open_store(self.store_url)
            try:
                return await StoreKeys(store, read_encryption_key(self.state_dir.parent / "kek")).read()
            finally:
                await store.close()

        stored = asyncio.run(read())
        assert stored is not None
        return stored

    def issued_count(self) -> int:
        return int(self.rows("SELECT count(*) AS n FROM issued_tokens")[0]["n"])

    def audit(self) -> list[dict[str, Any]]:
        return self.rows("SELECT * FROM audit_events ORDER BY id")

    def log(self) -> str:
        """What the gateway process wrote to stdout and stderr so far."""
        return gateway_log(self.setup.config).read_text(errors="replace") if self.setup else ""


@contextmanager
def running(setup: Setup, store_url: str | None = None) -> Iterator[Deployment]:
    """Start `deputy serve` for `setup`; stop it on exit (the JWKS server keeps running)."""
    with gateway_process(setup.config) as url, httpx2.Client(base_url=url, timeout=10) as client:
        yield Deployment(url, setup.issuer, setup.directory / "state", setup.idp, setup.remote_idp, setup.domain,
                         setup.remote_domain, setup.jwks_server, client, setup, store_url)


def store_config(directory: Path, store_url: str | None) -> str:
    """The config tables for `store_url`: none for the embedded SQLite file; for PostgreSQL its URL and a
    key-encryption key (its keys live in the store)."""
    if store_url is None:
        return ""
    kek = directory / "kek"
    kek.write_text(base64.b64encode(secrets.token_bytes(32)).decode())
    kek.chmod(0o600)
    return f'\n[store]\nurl = "{store_url}"\n\n[keys]\nencryption_key_file = "{kek}"\n'


@contextmanager
def deployed(directory: Path, *, extra: str = "", check_log: bool = True,
             policy_files: Mapping[str, str] | None = None, policy: str = "",
             store_url: str | None = None) -> Iterator[Deployment]:
    """A running gateway on `store_url` (a PostgreSQL database with the current schema), or on SQLite."""
    setup = make_setup(directory, extra=store_config(directory, store_url) + extra, policy_files=policy_files,
                       policy=policy)
    try:
        with running(setup, store_url) as deployment:
            yield deployment
        if check_log:  # no input ever yields a server error
            assert "Traceback" not in deployment.log() and "server_error" not in deployment.log(), deployment.log()
    finally:
        setup.jwks_server.close()


STORES = ("sqlite", "postgresql")
"""The gateway's black-box suite (the tests on the shared `deployment`) runs on each store (issue 9)."""


def store_for(request: pytest.FixtureRequest, store: str) -> str | None:
    """None for SQLite; for PostgreSQL a fresh database with the current schema on the tests' server."""
    if store == "sqlite":
        return None
    return str(request.getfixturevalue("postgresql_server").create())


@pytest.fixture(scope="module", params=STORES)
def deployment(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployed(tmp_path_factory.mktemp("deputy"), store_url=store_for(request, request.param)) as running_deployment:
        yield running_deployment


@dataclass
class Probe:
    """A deployment seen from one test: what was issued and audited before it, and the refusal checks."""

    deployment: Deployment
    issued_before: int
    audited_before: int

    def refused(self, response: httpx2.Response, status: int, error: str, *, names: str | None = None) -> str:
        """RFC 6749 §5.2: JSON error, the expected code and status, no-store, and nothing issued.

        Returns the error_description; `names` must appear in it (e.g. which token was rejected)."""
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/json")
        assert response.headers.get("cache-control") == "no-store"  # RFC 6749 §5.2 example
        body = response.json()
        assert body["error"] == error, body
        description = body.get("error_description", "")
        assert RFC6749_CHARSET.fullmatch(description), description
        assert "access_token" not in body
        if names is not None:
            assert names in description, description
        assert self.deployment.issued_count() == self.issued_before
        return str(description)

    def granted(self, response: httpx2.Response) -> dict[str, Any]:
        assert response.status_code == 200, response.text
        assert self.deployment.issued_count() == self.issued_before + 1
        return dict(response.json())

    def new_audit(self) -> list[dict[str, Any]]:
        return self.deployment.audit()[self.audited_before:]


@pytest.fixture
def probe(deployment: Deployment) -> Probe:
    return Probe(deployment, deployment.issued_count(), len(deployment.audit()))


def pytest_configure(config: pytest.Config) -> None:
    """`deputy serve --dev` records its state for this user (gateway.dev.dev_pointer): keep the tests' own."""
    os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="deputy-test-state-")
