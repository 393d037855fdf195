"""The resource-server verifier against a real gateway: RFC 9068 §4 checks, RFC 6750 §3.1 errors, and
revocation learned from SSF (the default) or the native feed, failing closed when the feed is gone
(the SSF receiver's own cases: test_ssf_receiver.py)."""

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import httpx2
import jwt
import pytest
from fastapi import Depends, FastAPI

from deputy_client.resource import (
    AccessTokenVerifier,
    FeedStale,
    InsufficientScope,
    InvalidToken,
    VerifiedAccess,
)
from deputy_client.resource.dependency import require_scope
from gateway.dev import DemoIdentities, DemoResource
from tests.support import ACCESS_TOKEN, GRANT, JWT, free_port, gateway_process

TXN = "urn:ietf:params:oauth:token-type:txn_token"
MAIL, DOCS = "https://mail.example.com", "https://docs.example.com"
AGENT = "spiffe://example.org/agents/mail"
WATCHER = "spiffe://example.org/rs/mail"
IDP = "https://idp.example.com"


@dataclass
class Env:
    client: httpx2.Client
    issuer: str
    port: int
    ids: DemoIdentities

    def svid(self, spiffe_id: str = AGENT) -> str:
        return self.ids.svid(spiffe_id)

    def open_task(self, scope: str = "mail.read mail.send") -> dict[str, Any]:
        user = self.ids.user_token("alice", scope="mail.read mail.send docs.read")
        return _ok(self.client.post("/token", data={
            "grant_type": GRANT, "subject_token": user, "subject_token_type": ACCESS_TOKEN,
            "actor_token": self.svid(), "actor_token_type": JWT, "requested_token_type": TXN,
            "scope": scope, "audience": [MAIL, DOCS]}))

    def mint(self, task_token: str, scope: str = "mail.read", resource: str = MAIL) -> str:
        return str(_ok(self.client.post("/token", data={
            "grant_type": GRANT, "subject_token": task_token, "subject_token_type": TXN,
            "actor_token": self.svid(), "actor_token_type": JWT, "scope": scope, "resource": resource,
            "requested_token_type": ACCESS_TOKEN}))["access_token"])

    def complete(self, task_id: str) -> None:
        response = self.client.post(f"/tasks/{task_id}/complete", headers={"Authorization": f"Bearer {self.svid()}"})
        assert response.status_code == 200, response.text


def _ok(response: httpx2.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    ids = DemoIdentities(tmp_path_factory.mktemp("rs") / "deployment")
    data = {"access": {"grants": {AGENT: {MAIL: ["mail.read", "mail.send"], DOCS: ["docs.read"]}},
                       "delegations": {IDP: {"alice": [AGENT]}}}}
    port = free_port()
    config = ids.create(listen=f"127.0.0.1:{port}", idp=IDP, trust_domain="example.org", data=data,
                        resources=(DemoResource(MAIL, ("mail.read", "mail.send"), (WATCHER,)),
                                   DemoResource(DOCS, ("docs.read",))))
    with gateway_process(config) as url, httpx2.Client(base_url=url, timeout=10) as client:
        yield Env(client, ids.issuer, port, ids)


@contextlib.asynccontextmanager
async def running(env: Env, *, audience: str = MAIL, **kw: Any) -> AsyncIterator[AccessTokenVerifier]:
    async with httpx2.AsyncClient(timeout=5) as client, AccessTokenVerifier(
        issuer=env.issuer, audience=audience, client=client, svid=lambda: env.svid(WATCHER), **kw
    ) as verifier:
        yield verifier


@pytest.fixture
async def verifier(env: Env) -> AsyncIterator[AccessTokenVerifier]:
    async with running(env) as v:
        yield v


async def test_rfc9068_4_valid_token_passes(env: Env, verifier: AccessTokenVerifier) -> None:
    task = env.open_task()
    access = await verifier.verify(env.mint(task["access_token"], scope="mail.read mail.send"), "mail.read")
    assert isinstance(access, VerifiedAccess)
    assert (access.subject, access.agent, access.task_id) == ("alice", AGENT, task["task_id"])
    assert access.scope.values == {"mail.read", "mail.send"} and access.claims["aud"] == MAIL


async def test_rfc9068_4_aud_must_contain_this_resource(env: Env) -> None:
    token = env.mint(env.open_task()["access_token"])
    async with running(env, audience=DOCS) as docs:
        with pytest.raises(InvalidToken, match="aud"):
            await docs.verify(token, "mail.read")


async def test_rfc9068_4_task_token_is_not_an_access_token(env: Env, verifier: AccessTokenVerifier) -> None:
    with pytest.raises(InvalidToken, match="typ"):
        await verifier.verify(env.open_task()["access_token"], "mail.read")


async def test_rfc9068_4_expired_beyond_leeway(env: Env, verifier: AccessTokenVerifier) -> None:
    token = env.mint(env.open_task()["access_token"])
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    await verifier.verify(token, "mail.read", now=exp + 29)
    with pytest.raises(InvalidToken, match="expired"):
        await verifier.verify(token, "mail.read", now=exp + 30)


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["scope"] = "mail.read mail.send"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


@pytest.mark.parametrize("mangle", [_tamper, lambda t: t[:-4] + ("AAAA" if t[-4:] != "AAAA" else "BBBB"),
                                    lambda t: "not-a-jwt"])
async def test_rfc9068_4_tampered_or_malformed_rejected(env: Env, verifier: AccessTokenVerifier, mangle: Any) -> None:
    token = env.mint(env.open_task()["access_token"])
    with pytest.raises(InvalidToken):
        await verifier.verify(mangle(token), "mail.read")


async def test_rfc6750_3_1_insufficient_scope_is_distinct(env: Env, verifier: AccessTokenVerifier) -> None:
    token = env.mint(env.open_task()["access_token"], scope="mail.read")
    with pytest.raises(InsufficientScope) as caught:
        await verifier.verify(token, "mail.send")
    assert (caught.value.status, caught.value.error) == (403, "insufficient_scope")
    assert not isinstance(caught.value, InvalidToken)


@pytest.mark.parametrize("revocations", ["ssf", "feed"])
async def test_completed_task_rejected_within_one_second(env: Env, revocations: Any) -> None:
    task = env.open_task()
    token = env.mint(task["access_token"])
    other = env.mint(env.open_task()["access_token"])
    async with running(env, revocations=revocations) as verifier:
        await _refused_within_one_second(env, verifier, task, token, other)


async def _refused_within_one_second(env: Env, verifier: AccessTokenVerifier, task: dict[str, Any], token: str,
                                     other: str) -> None:
    await verifier.verify(token, "mail.read")
    await asyncio.to_thread(env.complete, task["task_id"])
    started = time.monotonic()
    while time.monotonic() - started < 1.0:
        try:
            await verifier.verify(token, "mail.read")
        except InvalidToken as exc:
            assert "revoked" in str(exc)
            break
        await asyncio.sleep(0.005)
    else:
        pytest.fail("completed task's token still accepted after 1 s")
    await verifier.verify(other, "mail.read")  # other tasks unaffected


class Proxy:
    """A loopback TCP forwarder to the gateway that can be cut, to make the feed unreachable."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, upstream_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    async def cut(self) -> None:
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        await self.server.wait_closed()


async def test_fails_closed_when_feed_unreachable_past_bound(env: Env) -> None:
    token = env.mint(env.open_task()["access_token"])
    proxy = Proxy(env.port)
    feed = await proxy.start() + "/revocations"
    async with running(env, revocations="feed", feed_uri=feed, max_feed_staleness=1.0) as verifier:
        await verifier.verify(token, "mail.read")
        await proxy.cut()
        await asyncio.sleep(0.3)
        await verifier.verify(token, "mail.read")  # within the bound: still trusted
        await asyncio.sleep(1.0)
        with pytest.raises(FeedStale):
            await verifier.verify(token, "mail.read")


async def test_fails_closed_when_feed_never_reached(env: Env) -> None:
    token = env.mint(env.open_task()["access_token"])
    async with running(env, revocations="feed", feed_uri=f"http://127.0.0.1:{free_port()}/revocations") as verifier:
        with pytest.raises(FeedStale) as caught:
            await verifier.verify(token, "mail.read")
    assert (caught.value.status, caught.value.error) == (401, "invalid_token")


async def test_rfc6750_3_fastapi_dependency(env: Env, verifier: AccessTokenVerifier) -> None:
    app = FastAPI()

    # No `from __future__ import annotations` in this module: FastAPI must see these local dependencies.
    reading, sending = require_scope(verifier, "mail.read"), require_scope(verifier, "mail.send")

    @app.get("/mail")
    async def mail(access: Annotated[VerifiedAccess, Depends(reading)]) -> dict[str, str]:
        return {"user": access.subject}

    @app.post("/mail")
    async def send(access: Annotated[VerifiedAccess, Depends(sending)]) -> dict[str, str]:
        return {"user": access.subject}

    token = env.mint(env.open_task()["access_token"], scope="mail.read")
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://rs") as client:
        ok = await client.get("/mail", headers=auth)
        assert (ok.status_code, ok.json()) == (200, {"user": "alice"})
        forbidden = await client.post("/mail", headers=auth)
        assert forbidden.status_code == 403
        assert forbidden.headers["www-authenticate"].startswith('Bearer error="insufficient_scope"')
        assert 'scope="mail.send"' in forbidden.headers["www-authenticate"]
        bad = await client.get("/mail", headers={"Authorization": "Bearer " + token[:-4] + "AAAA"})
        assert bad.status_code == 401
        assert bad.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
        missing = await client.get("/mail")
        assert missing.status_code == 401  # RFC 6750 §3.1: no error code; RFC 9449 §7.1: DPoP offered too
        assert missing.headers["www-authenticate"].startswith('Bearer, DPoP algs="')


@pytest.mark.parametrize("scope", ["", " ", 'mail"read', "mail\\read"])
async def test_rfc6750_a_route_cannot_require_an_empty_or_malformed_scope(env: Env, scope: str) -> None:
    async with running(env) as v:
        with pytest.raises(ValueError):
            require_scope(v, scope)


async def test_the_feed_keeps_following_when_the_svid_source_fails_for_a_while(env: Env) -> None:
    """A missing SVID file (the source raises) makes the state go stale, never stops the followers."""
    token = env.mint(env.open_task()["access_token"])
    failing = {"now": False}

    def svid() -> str:
        if failing["now"]:
            raise FileNotFoundError("svid.jwt")
        return env.svid(WATCHER)

    async with httpx2.AsyncClient(timeout=5) as client, AccessTokenVerifier(
            issuer=env.issuer, audience=MAIL, client=client, svid=svid, max_feed_staleness=0.5) as verifier:
        await verifier.verify(token, "mail.read")
        failing["now"] = True
        await asyncio.sleep(0.8)
        with pytest.raises(FeedStale):
            await verifier.verify(token, "mail.read")
        failing["now"] = False
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                await verifier.verify(token, "mail.read")
                break
            except FeedStale:
                await asyncio.sleep(0.05)
        else:
            pytest.fail("the verifier did not recover once the SVID source worked again")
