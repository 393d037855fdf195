"""An admin revocation bars the credentials it names at every endpoint (issue 7, item 1), over real HTTP.

After `/admin/revoke?user=` / `?agent=` / `?trust_domain=`, a user token or SVID of that party issued
(`iat`) at or before the revocation, or carrying no `iat`, is refused at /admin, /introspect,
/revocations, /revocations/stream, /tasks/{id}/complete and /revoke with 401 `invalid_client`, not only
at /token; one issued after it works again. Each case of the table has a party of its own (an agent, a
trust domain, a user), so the cutoffs one case records never touch another.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest

from tests.conftest import IDP, MAIL_AGENT, POLICY_DATA, Deployment, deployed
from tests.support import ACCESS_TOKEN, GRANT, JWT, TrustDomain, feed_head

NOTES = "https://notes.example.com"
OPS = "spiffe://example.org/ops/admin"  # revokes; never revoked itself
ADMIN_GROUP = "deputy-admins"
ENDPOINTS = ("admin", "introspect", "revocations", "stream", "complete", "revoke")
RESOURCE_CLIENT_ENDPOINTS = ("introspect", "revocations", "stream")
ACCEPTED = {"admin": 200, "introspect": 200, "revocations": 200, "stream": 200, "complete": 404, "revoke": 200}
CASES = [(endpoint, kind) for endpoint in ENDPOINTS for kind in ("agent", "trust_domain")] + [("admin", "user")]
STREAM_RS, CONTROL_RS = "spiffe://example.org/rs/doomed-stream", "spiffe://example.org/rs/control-stream"


def holder_id(endpoint: str, kind: str) -> str:
    """The SPIFFE ID of the case's party: an agent of example.org, or the one workload of its own domain."""
    return f"spiffe://example.org/holds/{endpoint}" if kind == "agent" else f"spiffe://{endpoint}.holds.test/holder"


def config_for(directory: Path, domains: dict[str, TrustDomain]) -> str:
    """The table's parties: admins, resource clients of NOTES, and a trust domain for each domain case."""
    admins = [OPS, *(holder_id("admin", kind) for kind in ("agent", "trust_domain"))]
    clients = [STREAM_RS, CONTROL_RS,
               *(holder_id(e, k) for e in RESOURCE_CLIENT_ENDPOINTS for k in ("agent", "trust_domain"))]
    lines = ["[admin]", f'value = "{ADMIN_GROUP}"', f"spiffe_ids = {json.dumps(admins)}", "",
             "[[resources]]", f'audience = "{NOTES}"', 'scopes = ["notes.read"]', "max_ttl = 300",
             f"clients = {json.dumps(clients)}", ""]
    for name, domain in domains.items():
        (directory / f"{name}.jwks").write_text(json.dumps(domain.jwks()))
        lines += ["[[trust_domains]]", f'name = "{name}"', f'bundle_file = "{name}.jwks"', ""]
    return "\n".join(lines)


@dataclass
class Env:
    deployment: Deployment
    domains: dict[str, TrustDomain]

    @property
    def client(self) -> httpx2.Client:
        return self.deployment.client

    def svid(self, spiffe_id: str, **claims: Any) -> str:
        domain = spiffe_id.removeprefix("spiffe://").partition("/")[0]
        issuer = self.deployment.domain if domain == "example.org" else self.domains[domain]
        return issuer.svid(sub=spiffe_id, audience=self.deployment.issuer, **claims)

    def admin_user(self, sub: str, *, at_remote: bool = False, **claims: Any) -> str:
        idp = self.deployment.remote_idp if at_remote else self.deployment.idp
        return idp.token(sub, audience=f"{self.deployment.issuer}/admin", groups=[ADMIN_GROUP], **claims)

    def credential(self, endpoint: str, kind: str, **claims: Any) -> str:
        return self.admin_user("root", **claims) if kind == "user" else self.svid(holder_id(endpoint, kind), **claims)

    def revoke(self, **party: str) -> None:
        response = self.client.post("/admin/revoke", params=party, headers=bearer(self.svid(OPS)))
        assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    directory = tmp_path_factory.mktemp("holds")
    domains = {f"{endpoint}.holds.test": TrustDomain(f"{endpoint}.holds.test") for endpoint in ENDPOINTS}
    data = json.loads(json.dumps(POLICY_DATA))
    next(iter(data.values()))["grants"][MAIL_AGENT][NOTES] = ["notes.read"]
    with deployed(directory, extra=config_for(directory, domains),
                  policy_files={"data.json": json.dumps(data)}) as deployment:
        yield Env(deployment, domains)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def call(env: Env, endpoint: str, token: str) -> int:
    """One authenticated request to `endpoint` that needs nothing but the caller to be accepted; its status."""
    client, headers = env.client, bearer(token)
    if endpoint == "stream":
        with client.stream("GET", "/revocations/stream", headers=headers) as response:
            if response.status_code == 200:
                assert next(response.iter_lines()) == ": deputy revocation feed"
            else:
                response.read()
                refused(response)
            return response.status_code
    response = {
        "admin": lambda: client.get("/admin/tasks", headers=headers),
        "introspect": lambda: client.post("/introspect", data={"token": "not-a-token"}, headers=headers),
        "revocations": lambda: client.get("/revocations", headers=headers),
        "complete": lambda: client.post("/tasks/no-such-task/complete", headers=headers),
        "revoke": lambda: client.post("/revoke", data={"token": "not-a-token"}, headers=headers),
    }[endpoint]()
    if response.status_code == 401:
        refused(response)
    return response.status_code


def refused(response: httpx2.Response) -> None:
    """RFC 6750 §3 / RFC 6749 §5.2: 401 invalid_client with a Bearer challenge, saying why."""
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client", response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "issued before an admin revoked this" in response.json()["error_description"], response.text


def party(endpoint: str, kind: str) -> dict[str, str]:
    if kind == "user":
        return {"user": "root"}
    if kind == "agent":
        return {"agent": holder_id(endpoint, kind)}
    return {"trust_domain": f"{endpoint}.holds.test"}


@pytest.mark.parametrize(("endpoint", "kind"), CASES)
def test_issue7_1_an_admin_revocation_bars_its_party_at_every_endpoint(env: Env, endpoint: str, kind: str) -> None:
    before = int(time.time()) - 5
    issued_before, without_iat = env.credential(endpoint, kind, iat=before), env.credential(endpoint, kind, iat=None)
    assert call(env, endpoint, issued_before) == ACCEPTED[endpoint]
    assert call(env, endpoint, without_iat) == ACCEPTED[endpoint]  # no iat is fine while there is no cutoff
    env.revoke(**party(endpoint, kind))
    assert call(env, endpoint, issued_before) == 401
    assert call(env, endpoint, without_iat) == 401  # it cannot show it was issued after the revocation
    issued_after = env.credential(endpoint, kind, iat=int(time.time()) + 2)  # within the clock-skew leeway
    assert call(env, endpoint, issued_after) == ACCEPTED[endpoint]


def test_issue7_1_revoking_a_user_at_one_issuer_spares_that_sub_at_another(env: Env) -> None:
    before = int(time.time()) - 5
    here, elsewhere = env.admin_user("ops-root", iat=before), env.admin_user("ops-root", at_remote=True, iat=before)
    assert (call(env, "admin", here), call(env, "admin", elsewhere)) == (200, 200)
    env.revoke(user="ops-root", issuer=IDP)
    assert (call(env, "admin", here), call(env, "admin", elsewhere)) == (401, 200)
    env.revoke(user="ops-root")  # without an issuer: that subject at every issuer
    assert call(env, "admin", elsewhere) == 401


def notes_token(env: Env) -> str:
    """A one-shot access token for NOTES, of MAIL_AGENT for alice."""
    user = env.deployment.user_token(scope="notes.read")
    response = env.client.post("/token", data={
        "grant_type": GRANT, "subject_token": user, "subject_token_type": ACCESS_TOKEN,
        "actor_token": env.deployment.svid(), "actor_token_type": JWT, "resource": NOTES, "scope": "notes.read"})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


@contextmanager
def two_streams(env: Env, doomed_svid: str) -> Iterator[tuple[Iterator[str], Iterator[str]]]:
    """`/revocations/stream` from the head, read with `doomed_svid` and with the control reader's SVID:
    the lines of each, once both streams are open."""
    head, timeout = feed_head(env.client, env.svid(CONTROL_RS)), httpx2.Timeout(10.0)
    with httpx2.Client(base_url=env.deployment.url, timeout=timeout) as doomed_client, \
            httpx2.Client(base_url=env.deployment.url, timeout=timeout) as control_client, \
            doomed_client.stream("GET", "/revocations/stream", params={"since": head},
                                 headers=bearer(doomed_svid)) as doomed, \
            control_client.stream("GET", "/revocations/stream", params={"since": head},
                                  headers=bearer(env.svid(CONTROL_RS))) as control:
        doomed_lines, control_lines = doomed.iter_lines(), control.iter_lines()
        assert next(doomed_lines) == next(control_lines) == ": deputy revocation feed"
        yield doomed_lines, control_lines


def revoke_and_watch(env: Env, token: str, doomed_lines: Iterator[str], control_lines: Iterator[str]) -> None:
    """The agent revokes `token`: the control reader is told, the doomed reader's stream ends without it."""
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    revoked = env.client.post("/revoke", data={"token": token}, headers=bearer(env.deployment.svid()))
    assert revoked.status_code == 200
    assert any(jti in line for line in control_lines if line.startswith("data:"))  # the event was sent...
    assert not any(jti in line for line in doomed_lines)  # ...but not to that reader: its stream ended


def test_issue7_1_an_open_stream_ends_before_its_next_event_once_its_reader_is_revoked(env: Env) -> None:
    token = notes_token(env)
    with two_streams(env, env.svid(STREAM_RS)) as (doomed, control):
        env.revoke(agent=STREAM_RS)
        revoke_and_watch(env, token, doomed, control)


def test_issue7_1_an_open_stream_ends_before_its_next_event_once_its_reader_svid_expires(env: Env) -> None:
    token, short_lived = notes_token(env), env.svid(CONTROL_RS, ttl=1)
    with two_streams(env, short_lived) as (doomed, control):
        expires_at = jwt.decode(short_lived, options={"verify_signature": False})["exp"]
        time.sleep(max(0.0, expires_at - time.time()) + 0.05)
        revoke_and_watch(env, token, doomed, control)
