"""Deputy's verifier as an SSF receiver (deputy_client.resource.ssf) against a real gateway, through a loopback proxy
that stands where the network is (tests/client/ssf_proxy.py): it records the receiver's polls and can
add SETs, keys and tampered verification states, as a hostile network or a broken transmitter would.

Every wait is a bounded poll for the expected outcome, never a sleep taken as the assertion.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import jwt
import pytest

import deputy_client.resource.ssf
from deputy_client.resource import AccessTokenVerifier, FeedStale, InvalidToken
from deputy_client.resource.ssf import SsfReceiver
from gateway.dev import DemoIdentities, DemoResource
from tests.client.ssf_proxy import TransmitterProxy, eventually
from tests.client.ssf_support import (
    CREDENTIAL_CHANGE,
    STREAM_UPDATED,
    SetSigner,
    rsa_key,
    session_subject,
)
from tests.support import ACCESS_TOKEN, GRANT, JWT, free_port, gateway_process

TXN = "urn:ietf:params:oauth:token-type:txn_token"
MAIL, DOCS = "https://mail.example.com", "https://docs.example.com"
AGENT = "spiffe://example.org/agents/mail"
WATCHER = "spiffe://example.org/rs/mail"
IDP = "https://idp.example.com"


@dataclass
class Env:
    client: httpx2.Client  # straight to the gateway
    issuer: str  # the proxy's address
    ids: DemoIdentities
    proxy: TransmitterProxy

    def svid(self, spiffe_id: str = AGENT) -> str:
        return self.ids.svid(spiffe_id)

    def as_watcher(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.svid(WATCHER)}"}

    def open_task(self) -> dict[str, Any]:
        user = self.ids.user_token("alice", scope="mail.read mail.send")
        return _ok(self.client.post("/token", data={
            "grant_type": GRANT, "subject_token": user, "subject_token_type": ACCESS_TOKEN,
            "actor_token": self.svid(), "actor_token_type": JWT, "requested_token_type": TXN,
            "scope": "mail.read", "audience": MAIL}))

    def mint(self, task: dict[str, Any]) -> str:
        return str(_ok(self.client.post("/token", data={
            "grant_type": GRANT, "subject_token": task["access_token"], "subject_token_type": TXN,
            "actor_token": self.svid(), "actor_token_type": JWT, "scope": "mail.read", "resource": MAIL,
            "requested_token_type": ACCESS_TOKEN}))["access_token"])

    def complete(self, task: dict[str, Any]) -> None:
        _ok(self.client.post(f"/tasks/{task['task_id']}/complete", headers={"Authorization": f"Bearer {self.svid()}"}))

    def stream_status(self, stream_id: str, status: str) -> None:
        _ok(self.client.post("/ssf/status", json={"stream_id": stream_id, "status": status}, headers=self.as_watcher()))


def _ok(response: httpx2.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return dict(response.json()) if response.content else {}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    ids = DemoIdentities(tmp_path_factory.mktemp("ssf-rs") / "deployment")
    data = {"access": {"grants": {AGENT: {MAIL: ["mail.read", "mail.send"]}},
                       "delegations": {IDP: {"alice": [AGENT]}}}}
    port, proxy_port = free_port(), free_port()
    config = ids.create(listen=f"127.0.0.1:{port}", idp=IDP, trust_domain="example.org", data=data,
                        resources=(DemoResource(MAIL, ("mail.read", "mail.send"), (WATCHER,)),
                                   DemoResource(DOCS, ("docs.read",))))
    issuer = f"http://127.0.0.1:{proxy_port}"  # every URL of the metadata leads through the proxy
    config.write_text(config.read_text().replace(f'issuer = "http://127.0.0.1:{port}"', f'issuer = "{issuer}"'))
    state = ids.directory / "demo.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "issuer": issuer}))
    proxy = TransmitterProxy(f"http://127.0.0.1:{port}", proxy_port)
    proxy.start()
    try:
        with gateway_process(config) as url, httpx2.Client(base_url=url, timeout=10) as client:
            yield Env(client, issuer, ids, proxy)
    finally:
        proxy.stop()


@pytest.fixture(autouse=True)
def clean_controls(env: Env) -> None:
    controls = env.proxy.controls
    controls.inject.clear()
    controls.always.clear()
    controls.extra_keys.clear()
    controls.rewrite_state, controls.down, controls.keys_down = None, False, False


@contextlib.asynccontextmanager
async def running(env: Env, **kw: Any) -> AsyncIterator[AccessTokenVerifier]:
    async with httpx2.AsyncClient(timeout=5) as client, AccessTokenVerifier(
        issuer=env.issuer, audience=MAIL, client=client, svid=lambda: env.svid(WATCHER), **kw
    ) as verifier:
        yield verifier


def receiver_of(verifier: AccessTokenVerifier) -> SsfReceiver:
    assert isinstance(verifier.feed, SsfReceiver)
    return verifier.feed


async def accepted(verifier: AccessTokenVerifier, token: str, *, timeout: float = 5.0) -> None:
    async def check() -> None:
        try:
            await verifier.verify(token, "mail.read")
        except FeedStale as exc:
            raise AssertionError("not in sync yet") from exc

    await eventually(check, timeout=timeout)


async def refused(verifier: AccessTokenVerifier, token: str, kind: type[InvalidToken] = InvalidToken, *,
                  timeout: float = 5.0) -> InvalidToken:
    async def check() -> InvalidToken:
        try:
            await verifier.verify(token, "mail.read")
        except kind as exc:
            return exc
        except InvalidToken:
            pass
        raise AssertionError(f"still not refused with {kind.__name__}")

    result: InvalidToken = await eventually(check, timeout=timeout)
    return result


def claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


async def test_ssf_8_1_1_1_each_verifier_has_its_own_poll_stream_verified_at_start_and_deleted_on_close(
        env: Env) -> None:
    token = env.mint(env.open_task())
    async with running(env) as first, running(env) as second:
        ids = {receiver_of(first).stream_id, receiver_of(second).stream_id}
        assert len(ids) == 2 and ids <= set(env.proxy.controls.created)
        await first.verify(token, "mail.read")  # start waited for the handshake and a confirmed round
        for stream_id in ids:
            config = _ok(env.client.get("/ssf/streams", params={"stream_id": stream_id}, headers=env.as_watcher()))
            assert (config["aud"], config["delivery"]["method"]) == (MAIL, "urn:ietf:rfc:8936")
    for stream_id in ids:  # SSF 8.1.1.5: deleted on close
        gone = env.client.get("/ssf/streams", params={"stream_id": stream_id}, headers=env.as_watcher())
        assert gone.status_code == 404, gone.text


async def test_caep_3_1_a_completed_tasks_token_is_refused_within_a_second(env: Env) -> None:
    async with running(env) as verifier:
        task, other = env.open_task(), env.open_task()
        token, untouched = env.mint(task), env.mint(other)
        await verifier.verify(token, "mail.read")
        await asyncio.to_thread(env.complete, task)
        started = time.monotonic()
        exc = await refused(verifier, token, timeout=1.0)
        assert "revoked" in str(exc) and time.monotonic() - started < 1.0
        await verifier.verify(untouched, "mail.read")


async def test_rfc7009_a_token_revoked_on_its_own_is_refused_by_its_jwt_id(env: Env) -> None:
    task = env.open_task()
    token, sibling = env.mint(task), env.mint(task)
    async with running(env) as verifier:
        await verifier.verify(token, "mail.read")
        _ok(env.client.post("/revoke", data={"token": token}, headers={"Authorization": f"Bearer {env.svid()}"}))
        assert "revoked" in str(await refused(verifier, token))
        await verifier.verify(sibling, "mail.read")  # the task lives on


async def test_ssf_a_fresh_verifier_starts_complete_from_its_streams_backlog(env: Env) -> None:
    task = env.open_task()
    token = env.mint(task)
    env.complete(task)
    async with running(env) as verifier:
        with pytest.raises(InvalidToken, match="revoked"):
            await verifier.verify(token, "mail.read")


@pytest.mark.parametrize("status", ["paused", "disabled"])
async def test_ssf_8_1_2_1_a_stream_not_enabled_refuses_every_token_until_enabled_and_replaced(
        env: Env, status: str) -> None:
    token = env.mint(env.open_task())
    async with running(env, max_feed_staleness=8) as verifier:  # staleness alone would not refuse for 8 s
        paused = receiver_of(verifier).stream_id
        assert paused is not None
        await verifier.verify(token, "mail.read")
        env.stream_status(paused, status)
        started = time.monotonic()
        await refused(verifier, token, FeedStale)
        assert time.monotonic() - started < 4  # the status, not the staleness bound
        env.stream_status(paused, "enabled")
        await accepted(verifier, token, timeout=6)  # seen at the next status read (every 2 s)
        assert receiver_of(verifier).stream_id not in (None, paused)  # a new stream: its backlog is complete
        revoked_meanwhile = env.open_task()
        later = env.mint(revoked_meanwhile)
        env.complete(revoked_meanwhile)
        await refused(verifier, later)


@pytest.mark.parametrize("status", ["paused", "disabled"])
async def test_ssf_8_1_5_a_stream_updated_event_makes_the_state_stale_and_the_stream_replaced(
        env: Env, status: str) -> None:
    """Announced by the transmitter (here: a SET the proxy adds, signed with a key of the SET key set). Paused,
    the status read that follows says enabled again; disabled, the transmitter will carry nothing more."""
    token = env.mint(env.open_task())
    signer = _injector(env)
    async with running(env, max_feed_staleness=8) as verifier:
        old = receiver_of(verifier).stream_id
        body = signer.claims(STREAM_UPDATED, event={"status": status, "reason": "maintenance"},
                             sub_id={"format": "opaque", "id": old})
        env.proxy.controls.inject.append((body["jti"], signer.sign(body)))
        await refused(verifier, token, FeedStale)
        await accepted(verifier, token, timeout=6)
        assert receiver_of(verifier).stream_id not in (None, old)
        assert body["jti"] in env.proxy.controls.acked()


async def test_ssf_8_1_1_5_a_stream_deleted_on_the_gateway_is_recreated_and_verified_again(env: Env) -> None:
    token = env.mint(env.open_task())
    async with running(env, max_feed_staleness=8) as verifier:
        old = receiver_of(verifier).stream_id
        deleted = env.client.delete("/ssf/streams", params={"stream_id": old}, headers=env.as_watcher())
        assert deleted.status_code == 204, deleted.text

        def replaced() -> None:
            assert receiver_of(verifier).stream_id not in (None, old)

        await eventually(replaced)
        await accepted(verifier, token)
        task = env.open_task()
        after = env.mint(task)
        env.complete(task)
        await refused(verifier, after)


async def test_fails_closed_when_the_transmitter_is_unreachable_past_the_bound(env: Env) -> None:
    token = env.mint(env.open_task())
    async with running(env, max_feed_staleness=1.0) as verifier:
        await verifier.verify(token, "mail.read")
        env.proxy.controls.down = True
        started = time.monotonic()
        await refused(verifier, token, FeedStale, timeout=3.0)
        assert time.monotonic() - started > 0.5  # within the bound it was still trusted
        env.proxy.controls.down = False
        await accepted(verifier, token)


def _injector(env: Env) -> SetSigner:
    """A signer whose key the proxy adds to the gateway's SET key set, so its SETs verify."""
    signer = SetSigner(issuer=env.issuer, audience=MAIL)
    env.proxy.controls.extra_keys.append(signer.key.public_jwk)
    return signer


BAD_SETS = [
    ("signature_by_a_key_not_in_jwks_uri", lambda s, c: s.sign(c, key=rsa_key()), "invalid_key"),
    ("typ_jwt", lambda s, c: s.sign(c, header={"typ": "JWT"}), "invalid_request"),
    ("aud_another_resource", lambda s, c: s.sign({**c, "aud": DOCS}), "invalid_audience"),
    ("iss_another_issuer", lambda s, c: s.sign({**c, "iss": "https://evil.example.com"}), "invalid_issuer"),
    ("sub_present", lambda s, c: s.sign({**c, "sub": "alice"}), "invalid_request"),
    ("exp_present", lambda s, c: s.sign({**c, "exp": int(time.time()) + 60}), "invalid_request"),
]


@pytest.mark.parametrize(("sign", "err"), [b[1:] for b in BAD_SETS], ids=[b[0] for b in BAD_SETS])
async def test_rfc8936_2_4_4_a_bad_set_is_refused_reported_in_set_errs_and_the_stream_replaced(
        env: Env, sign: Any, err: str) -> None:
    task = env.open_task()
    token = env.mint(task)
    signer = _injector(env)  # before start: the receiver fetches the SET keys once, then on an unknown kid
    async with running(env, max_feed_staleness=8) as verifier:
        old = receiver_of(verifier).stream_id
        body = signer.claims(sub_id=session_subject(task["task_id"]))
        env.proxy.controls.inject.append((body["jti"], sign(signer, body)))

        def reported() -> None:
            assert env.proxy.controls.reported().get(body["jti"], {}).get("err") == err

        await eventually(reported)
        assert body["jti"] not in env.proxy.controls.acked()
        await accepted(verifier, token)  # not applied: the task lives; and in sync again on a new stream
        assert receiver_of(verifier).stream_id != old


async def test_rfc8936_2_4_a_redelivered_set_is_acknowledged_again_and_not_reprocessed(env: Env) -> None:
    task = env.open_task()
    token = env.mint(task)
    signer = _injector(env)
    async with running(env) as verifier:
        stream = receiver_of(verifier).stream_id
        body = signer.claims(sub_id=session_subject(task["task_id"]))
        env.proxy.controls.inject.append((body["jti"], signer.sign(body)))
        assert "revoked" in str(await refused(verifier, token))
        await eventually(lambda: _assert(env.proxy.controls.acked().count(body["jti"]) == 1))
        # Again under the same jti, now signed by a stranger: a redelivery is acknowledged, not checked again.
        env.proxy.controls.inject.append((body["jti"], signer.sign(body, key=rsa_key())))
        await eventually(lambda: _assert(env.proxy.controls.acked().count(body["jti"]) == 2))
        assert body["jti"] not in env.proxy.controls.reported()
        assert receiver_of(verifier).stream_id == stream


async def test_a_set_that_cannot_be_checked_now_is_neither_acknowledged_nor_reported_and_holds_confirmation(
        env: Env) -> None:
    """Its key is not in the key set the receiver holds, and the key set cannot be fetched again (502)."""
    task = env.open_task()
    token = env.mint(task)
    async with running(env, max_feed_staleness=1.0) as verifier:
        stream = receiver_of(verifier).stream_id
        env.proxy.controls.keys_down = True
        unknown = SetSigner(issuer=env.issuer, audience=MAIL)
        body = unknown.claims(sub_id=session_subject(task["task_id"]))
        env.proxy.controls.always.append((body["jti"], unknown.sign(body)))
        await refused(verifier, token, FeedStale, timeout=3.0)
        assert body["jti"] not in env.proxy.controls.acked() and body["jti"] not in env.proxy.controls.reported()
        assert receiver_of(verifier).stream_id == stream  # no verdict on the SET, so no reason to replace
        env.proxy.controls.always.clear()
        await accepted(verifier, token)


def _assert(condition: bool) -> None:
    assert condition


async def test_ssf_8_1_4_1_a_verification_with_another_state_is_invalid_state_and_never_completes_the_handshake(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deputy_client.resource.ssf, "VERIFY_RETRY_S", 0.5)
    monkeypatch.setattr(deputy_client.resource.ssf, "START_SYNC_S", 0.5)
    token = env.mint(env.open_task())
    env.proxy.controls.rewrite_state = "not-the-receivers"
    async with running(env) as verifier:
        with pytest.raises(FeedStale):
            await verifier.verify(token, "mail.read")

        def invalid_state() -> None:
            assert "invalid_state" in {e["err"] for e in env.proxy.controls.reported().values()}

        await eventually(invalid_state)
        with pytest.raises(FeedStale):
            await verifier.verify(token, "mail.read")
        env.proxy.controls.rewrite_state = None
        await accepted(verifier, token)  # the next verification request carries the receiver's state


async def test_ssf_8_1_4_1_a_stray_verification_event_leaves_a_verified_stream_in_sync(env: Env) -> None:
    token = env.mint(env.open_task())
    async with running(env) as verifier:
        stream = receiver_of(verifier).stream_id
        before = len(env.proxy.controls.reported())

        def ask() -> None:  # 429 until the gateway's min_verification_interval has passed since the receiver's
            asked = env.client.post("/ssf/verify", json={"stream_id": stream, "state": "someone-else"},
                                    headers=env.as_watcher())
            assert asked.status_code == 204, asked.text

        await eventually(ask, timeout=3.0, every=0.2)
        await eventually(lambda: _assert(len(env.proxy.controls.reported()) > before))
        assert list(env.proxy.controls.reported().values())[-1]["err"] == "invalid_state"
        await verifier.verify(token, "mail.read")
        assert receiver_of(verifier).stream_id == stream


async def test_caep_3_3_a_credential_change_cuts_off_the_agents_tokens_issued_before_it(env: Env) -> None:
    task = env.open_task()
    before = env.mint(task)
    signer = _injector(env)
    async with running(env) as verifier:
        at = claims(before)["iat"]
        body = signer.claims(CREDENTIAL_CHANGE, event={
            "credential_type": "spiffe-jwt-svid", "change_type": "revoke", "event_timestamp": at,
            "initiating_entity": "admin", "reason_admin": {"en": "agent revoked"}},
            sub_id={"format": "uri", "uri": AGENT})
        env.proxy.controls.inject.append((body["jti"], signer.sign(body)))
        assert "credentials were revoked" in str(await refused(verifier, before))

        def minted_after() -> str:
            token = env.mint(task)
            assert claims(token)["iat"] > at
            return token

        await verifier.verify(await eventually(minted_after, timeout=3.0, every=0.2), "mail.read")
