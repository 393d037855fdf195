"""What the SSF transmitter tests share: a gateway with two resources served by different resource servers
(DOCS: RS_DOCS and RS_BOTH; PHOTOS: RS_PHOTOS and RS_BOTH), agents that may open, delegate and be revoked,
and helpers that talk SSF to it as a receiver would, checking every SET they are given (RFC 8417, SSF §4)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import jwt

from tests.conftest import MAIL_AGENT, POLICY_DATA, Deployment, deployed
from tests.support import ACCESS_TOKEN, GRANT, JWT

TXN = "urn:ietf:params:oauth:token-type:txn_token"
DOCS, PHOTOS = "https://docs.example.com", "https://photos.example.com"
RS_DOCS, RS_PHOTOS = "spiffe://example.org/rs/docs", "spiffe://example.org/rs/photos"
RS_BOTH = "spiffe://example.org/rs/gallery"
SUB = "spiffe://example.org/agents/summarizer"
DOOMED = "spiffe://example.org/agents/doomed"  # revoked by an admin in a test: nobody else uses it
ADMIN = "spiffe://example.org/ops/admin"
SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
CREDENTIAL_CHANGE = "https://schemas.openid.net/secevent/caep/event-type/credential-change"
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"
STREAM_UPDATED = "https://schemas.openid.net/secevent/ssf/event-type/stream-updated"
POLL, PUSH = "urn:ietf:rfc:8936", "urn:ietf:rfc:8935"
SCOPE = {DOCS: "docs.read", PHOTOS: "photos.read"}


def resources(both_photos: bool = True) -> str:
    photos_clients = [RS_PHOTOS, RS_BOTH] if both_photos else [RS_PHOTOS]
    return f"""
[[resources]]
audience = "{DOCS}"
scopes = ["docs.read"]
max_ttl = 300
clients = {json.dumps([RS_DOCS, RS_BOTH])}

[[resources]]
audience = "{PHOTOS}"
scopes = ["photos.read"]
max_ttl = 300
clients = {json.dumps(photos_clients)}

[admin]
spiffe_ids = ["{ADMIN}"]
"""


def policy_data() -> str:
    data = json.loads(json.dumps(POLICY_DATA))
    access = next(iter(data.values()))
    both = {DOCS: ["docs.read"], PHOTOS: ["photos.read"]}
    access["grants"][MAIL_AGENT].update(both)
    access["grants"].update({SUB: both, DOOMED: both})
    access["delegations"]["https://idp.example.com"]["alice"].append(DOOMED)
    access.update({"subagents": {MAIL_AGENT: [SUB]}, "max_delegation_depth": 2})
    return json.dumps(data)


@contextmanager
def ssf_deployment(directory: Path, ssf: str = "", both_photos: bool = True) -> Iterator[Deployment]:
    """A gateway with the two resources; `ssf` holds `[ssf]` keys (e.g. "min_verification_interval = 5")."""
    extra = resources(both_photos) + (f"\n[ssf]\n{ssf}\n" if ssf else "")
    with deployed(directory, extra=extra, policy_files={"data.json": policy_data()}) as deployment:
        yield deployment


@dataclass
class Receiver:
    """One resource server talking SSF to the gateway with its JWT-SVID."""

    env: Deployment
    spiffe_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.env.svid(sub=self.spiffe_id)}"}

    def request(self, method: str, path: str, **kw: Any) -> httpx2.Response:
        return self.env.client.request(method, path, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def create(self, **body: Any) -> dict[str, Any]:
        response = self.request("POST", "/ssf/streams", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def poll(self, stream_id: str, timeout: float = 10, **body: Any) -> httpx2.Response:
        return self.request("POST", f"/ssf/poll/{stream_id}", json=body, timeout=timeout)

    def drain(self, stream_id: str, audience: str | list[str]) -> list[dict[str, Any]]:
        """Every SET waiting on the stream, checked and acknowledged, oldest first (by `iat`, then order given)."""
        claims: list[dict[str, Any]] = []
        ack: list[str] = []
        while True:
            response = self.poll(stream_id, returnImmediately=True, ack=ack)
            assert response.status_code == 200, response.text
            sets = response.json()["sets"]
            if not sets:
                return claims
            claims += [checked_set(self.env, token, jti=jti, audience=audience) for jti, token in sets.items()]
            ack = list(sets)

    def drop_backlog(self, stream_id: str) -> None:
        """Acknowledge what the stream holds now, so a test sees only what it causes."""
        self.drain(stream_id, self.audience)

    @property
    def audience(self) -> str | list[str]:
        return {RS_DOCS: DOCS, RS_PHOTOS: PHOTOS, RS_BOTH: [DOCS, PHOTOS]}[self.spiffe_id]


def checked_set(env: Deployment, token: str, *, jti: str, audience: str | list[str]) -> dict[str, Any]:
    """The SET's claims, once everything a receiver must check holds: RFC 8417 §2.3 and SSF §4.1.1 explicit
    typing, RS256 (interoperability profile §2.6) with a kid of /ssf/jwks.json, the issuer, the stream's
    audience, one event, `sub_id` and `txn`, no `sub` or `exp` (SSF §4.1.2, §4.1.7)."""
    header = jwt.get_unverified_header(token)
    assert (header["typ"], header["alg"]) == ("secevent+jwt", "RS256"), header
    keys = {k["kid"]: k for k in env.client.get("/ssf/jwks.json").json()["keys"]}
    assert header["kid"] in keys and header["kid"] not in {k["kid"] for k in env.client.get(
        "/.well-known/jwks.json").json()["keys"]}
    key = jwt.PyJWK(keys[header["kid"]])
    assert key.key.key_size >= 2048
    claims: dict[str, Any] = jwt.decode(token, key, algorithms=["RS256"], issuer=env.issuer,
                                        options={"verify_aud": False, "require": ["iss", "iat", "jti"]})
    assert claims["aud"] == audience and claims["jti"] == jti
    assert "sub" not in claims and "exp" not in claims and "toe" not in claims
    assert isinstance(claims["txn"], str) and claims["txn"] and isinstance(claims["sub_id"], dict)
    assert isinstance(claims["events"], dict) and len(claims["events"]) == 1
    return claims


def event_of(claims: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    [(event, payload)] = claims["events"].items()
    return event, payload


def exchange(env: Deployment, agent: str = "/agents/mail", **form: Any) -> dict[str, Any]:
    """An exchange by `agent` (a path in example.org, or a SPIFFE ID)."""
    svid = env.svid(sub=agent) if agent.startswith("spiffe://") else env.svid(agent)
    response = env.client.post("/token", data={"grant_type": GRANT, "actor_token": svid,
                                               "actor_token_type": JWT, **form})
    assert response.status_code == 200, response.text
    return dict(response.json())


def one_shot(env: Deployment, resource: str, agent: str = "/agents/mail") -> str:
    user = env.user_token(scope="docs.read photos.read")
    return str(exchange(env, agent, subject_token=user, subject_token_type=ACCESS_TOKEN, resource=resource,
                        scope=SCOPE[resource])["access_token"])


def open_task(env: Deployment, *audiences: str, agent: str = "/agents/mail") -> dict[str, Any]:
    return exchange(env, agent, subject_token=env.user_token(scope="docs.read photos.read"),
                    subject_token_type=ACCESS_TOKEN, requested_token_type=TXN, audience=list(audiences),
                    scope=" ".join(SCOPE[a] for a in audiences))


def within(env: Deployment, task_token: str, resource: str, agent: str = "/agents/mail") -> str:
    return str(exchange(env, agent, subject_token=task_token, subject_token_type=TXN, resource=resource,
                        scope=SCOPE[resource])["access_token"])


def delegate(env: Deployment, task_token: str, agent: str, scope: str) -> dict[str, Any]:
    return exchange(env, agent, subject_token=task_token, subject_token_type=TXN, requested_token_type=TXN,
                    scope=scope)


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def as_agent(env: Deployment, spiffe_id: str = MAIL_AGENT) -> dict[str, str]:
    return {"Authorization": f"Bearer {env.svid(sub=spiffe_id)}"}


def complete(env: Deployment, task_id: str, agent: str = MAIL_AGENT) -> None:
    response = env.client.post(f"/tasks/{task_id}/complete", headers=as_agent(env, agent))
    assert response.status_code == 200, response.text


def revoke(env: Deployment, token: str) -> None:
    assert env.client.post("/revoke", data={"token": token}, headers=as_agent(env)).status_code == 200


def queued(env: Deployment, stream_id: str) -> int:
    """How many SETs the stream's queue holds (read from the store's database)."""
    with sqlite3.connect(env.state_dir / "deputy.db") as db:
        return int(db.execute("SELECT count(*) FROM ssf_pending WHERE stream_id = ?", (stream_id,)).fetchone()[0])
