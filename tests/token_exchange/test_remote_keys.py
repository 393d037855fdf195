"""Remote key sets (`jwks_uri`, SPIFFE `bundle_uri`) driven by a fake monotonic clock against a real
loopback server: unknown kids refetch at most once per REFETCH_INTERVAL_S, keys older than MAX_KEY_AGE_S
are refetched, and a fetch that fails keeps the keys already trusted and trusts no new one (fail closed).

The last test is the gateway's own proof of the same rotation, in process, through its HTTP interface:
real config, keys, SQLite, Rego and loopback bundle server, with only the key sources' clock faked.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest

import gateway.wiring
from gateway.app import build_app
from gateway.settings import load_settings
from gateway.wiring import prepare
from tests.conftest import MAIL, Setup, make_setup
from tests.support import ACCESS_TOKEN, GRANT, JWT, RFC6749_CHARSET, JwksServer, TrustDomain, free_port
from tests.token_exchange.conftest import T0, FakeClock
from token_exchange.jws import TokenError, unverified_parts, verify_signature
from token_exchange.keys import (
    ASYMMETRIC_ALGORITHMS,
    MAX_JWKS_BYTES,
    MAX_KEY_AGE_S,
    REFETCH_INTERVAL_S,
    KeySetUnavailable,
    RemoteKeys,
    UnknownKey,
    VerificationKey,
    parse_key_set,
)
from token_exchange.signing import SigningKey


@pytest.fixture(scope="module")
def old() -> SigningKey:
    return SigningKey.generate("ES256")


@pytest.fixture(scope="module")
def new() -> SigningKey:
    return SigningKey.generate("ES256")


_paths = iter(range(1_000_000))


def publish(server: JwksServer, *keys: SigningKey) -> str:
    """A fresh path on the server holding these keys' JWK Set (each test gets its own hit count)."""
    path = f"/jwks/{next(_paths)}"
    server.documents[path] = {"keys": [k.public_jwk for k in keys]}
    return path


def remote(url: str, client: httpx2.AsyncClient, clock: FakeClock) -> RemoteKeys:
    return RemoteKeys(url, client=client, clock=clock,
                      parse=lambda document: parse_key_set(document, allowed=ASYMMETRIC_ALGORITHMS))


async def verifies(keys: RemoteKeys, signer: SigningKey) -> dict[str, Any]:
    """A token signed by `signer` verifies against `keys` (a real signature check)."""
    token = jwt.encode({"sub": "alice", "exp": 2_000_000_000}, signer.private_key, algorithm="ES256",
                       headers={"kid": signer.kid})
    header, _ = unverified_parts(token)
    return dict((await verify_signature(token, header, keys, allowed=ASYMMETRIC_ALGORITHMS)).claims)


# --- fetching, caching, refetching on an unknown kid ----------------------------------------------------


def test_deputy_an_unknown_kid_refetches_at_most_every_30_s_and_keys_live_at_most_5_minutes() -> None:
    """The documented intervals (RemoteKeys docstring, docs): the tests below are written against them."""
    assert (REFETCH_INTERVAL_S, MAX_KEY_AGE_S, MAX_JWKS_BYTES) == (30.0, 300.0, 256 * 1024)


async def test_rfc7517_the_first_lookup_fetches_and_known_kids_are_then_served_from_memory(
        server: JwksServer, client: httpx2.AsyncClient, old: SigningKey) -> None:
    path, clock = publish(server, old), FakeClock()
    keys = remote(server.url + path, client, clock)
    assert server.hits.get(path, 0) == 0  # nothing is fetched before a token needs a key
    assert await verifies(keys, old) == {"sub": "alice", "exp": 2_000_000_000}
    for seconds in (0.0, 100.0, MAX_KEY_AGE_S - 0.1):
        clock.now = T0 + seconds
        key = await keys.key_for(old.kid)
        assert (key.kid, key.algorithm) == (old.kid, "ES256")
    assert server.hits[path] == 1


async def test_jwt_svid_6_an_unknown_kid_refetches_only_once_the_refetch_interval_has_passed(
        server: JwksServer, client: httpx2.AsyncClient, old: SigningKey, new: SigningKey) -> None:
    path, clock = publish(server, old), FakeClock()
    keys = remote(server.url + path, client, clock)
    await keys.key_for(old.kid)
    server.documents[path] = {"keys": [new.public_jwk]}  # the bundle rotates
    for seconds in (0.0, 10.0, REFETCH_INTERVAL_S - 0.1):
        clock.now = T0 + seconds
        for _ in range(3):
            with pytest.raises(UnknownKey):
                await keys.key_for(new.kid)
    assert server.hits[path] == 1  # no refetch storm
    clock.now = T0 + REFETCH_INTERVAL_S
    assert await verifies(keys, new)
    assert server.hits[path] == 2
    with pytest.raises(TokenError, match="no trusted key with kid"):
        await verifies(keys, old)  # rotated out: no longer trusted
    assert server.hits[path] == 2  # and asking for it right after a fetch does not fetch again


async def test_jwt_svid_6_a_kid_the_first_fetch_lacks_waits_for_the_interval_too(
        server: JwksServer, client: httpx2.AsyncClient, old: SigningKey, new: SigningKey) -> None:
    path, clock = publish(server, old), FakeClock()
    keys = remote(server.url + path, client, clock)
    with pytest.raises(UnknownKey):
        await keys.key_for(new.kid)  # the first lookup fetches, whatever the kid
    assert server.hits[path] == 1
    clock.now = T0 + REFETCH_INTERVAL_S - 0.1
    with pytest.raises(UnknownKey):
        await keys.key_for("kid-nobody-has")
    assert server.hits[path] == 1
    assert (await keys.key_for(old.kid)).kid == old.kid  # known kids are unaffected
    assert server.hits[path] == 1


async def test_deputy_concurrent_lookups_of_an_unknown_kid_share_one_refetch(
        server: JwksServer, client: httpx2.AsyncClient, old: SigningKey, new: SigningKey) -> None:
    path, clock = publish(server, old), FakeClock()
    keys = remote(server.url + path, client, clock)
    await keys.key_for(old.kid)
    server.documents[path] = {"keys": [old.public_jwk, new.public_jwk]}
    clock.now = T0 + REFETCH_INTERVAL_S
    found = await asyncio.gather(*(keys.key_for(new.kid) for _ in range(5)))
    assert {key.kid for key in found} == {new.kid}
    assert server.hits[path] == 2


async def test_deputy_keys_older_than_the_maximum_age_are_refetched_even_for_a_known_kid(
        server: JwksServer, client: httpx2.AsyncClient, old: SigningKey, new: SigningKey) -> None:
    path, clock = publish(server, old), FakeClock()
    keys = remote(server.url + path, client, clock)
    await keys.key_for(old.kid)
    server.documents[path] = {"keys": [new.public_jwk]}  # the old key was removed upstream
    clock.now = T0 + MAX_KEY_AGE_S - 0.1
    assert (await keys.key_for(old.kid)).kid == old.kid
    assert server.hits[path] == 1
    clock.now = T0 + MAX_KEY_AGE_S
    with pytest.raises(UnknownKey):
        await keys.key_for(old.kid)  # refetched: a removed key stops being trusted within MAX_KEY_AGE_S
    assert server.hits[path] == 2
    assert (await keys.key_for(new.kid)).kid == new.kid
    assert server.hits[path] == 2


# --- failures: old keys kept, nothing new trusted, no refetch storm -------------------------------------


async def test_deputy_a_failed_refetch_keeps_the_old_keys_and_trusts_no_unseen_kid(
        server: JwksServer, client: httpx2.AsyncClient, old: SigningKey, new: SigningKey) -> None:
    path, clock = publish(server, old), FakeClock()
    keys = remote(server.url + path, client, clock)
    await keys.key_for(old.kid)
    del server.documents[path]  # the key set is now answered 404
    clock.now = T0 + MAX_KEY_AGE_S
    assert (await keys.key_for(old.kid)).kid == old.kid  # the refetch failed: the old key stays in use
    assert server.hits[path] == 2
    with pytest.raises(KeySetUnavailable, match="HTTPStatusError") as info:
        await keys.key_for(new.kid)  # never seen: a failure is never a reason to trust it
    assert server.url + path in str(info.value)
    assert server.hits[path] == 2  # the failure counts as a fetch: no storm
    server.documents[path] = {"keys": [old.public_jwk, new.public_jwk]}  # the key set is back
    clock.now = T0 + MAX_KEY_AGE_S + REFETCH_INTERVAL_S
    assert await verifies(keys, new)
    assert server.hits[path] == 3


def _oversized(size: int, key: SigningKey) -> dict[str, Any]:
    """A JWK Set whose JSON text (as JwksServer writes it) is exactly `size` bytes."""
    document: dict[str, Any] = {"keys": [key.public_jwk], "pad": ""}
    document["pad"] = "x" * (size - len(json.dumps(document).encode()))
    assert len(json.dumps(document).encode()) == size
    return document


@pytest.mark.parametrize(("document", "error"), [
    (None, "HTTPStatusError"),  # 404
    ("this is not a JWK Set", "ValueError"),
    ({"keys": "none"}, "ValueError"),
    ([], "ValueError"),
    ("oversized", "ValueError"),
], ids=["not_found", "json_string", "keys_not_a_list", "json_array", "over_MAX_JWKS_BYTES"])
async def test_deputy_a_key_set_that_cannot_be_fetched_or_read_is_unavailable(
        server: JwksServer, client: httpx2.AsyncClient, old: SigningKey, document: Any, error: str) -> None:
    path = publish(server, old)
    if document is None:
        del server.documents[path]
    else:
        server.documents[path] = _oversized(MAX_JWKS_BYTES + 1, old) if document == "oversized" else document
    keys = remote(server.url + path, client, FakeClock())
    with pytest.raises(KeySetUnavailable, match=f"unavailable: {error}$"):
        await keys.key_for(old.kid)
    with pytest.raises(TokenError, match="unavailable"):
        await verifies(keys, old)  # the verifier fails closed
    assert server.hits[path] == 1


async def test_deputy_a_key_set_of_exactly_max_jwks_bytes_is_read(
        server: JwksServer, client: httpx2.AsyncClient, old: SigningKey) -> None:
    path = publish(server, old)
    server.documents[path] = _oversized(MAX_JWKS_BYTES, old)
    assert (await remote(server.url + path, client, FakeClock()).key_for(old.kid)).kid == old.kid


@pytest.mark.parametrize(("body", "error"), [
    (b"", "JSONDecodeError"), (b"<html>503</html>", "JSONDecodeError"), (b"\xff\xfe\x00", "UnicodeDecodeError"),
    (b'{"keys": [', "JSONDecodeError"), (b"123" * 2000, "ValueError"),  # a number past the int digit limit
], ids=["empty", "html", "not_utf8", "truncated", "huge_number"])
async def test_deputy_a_body_that_is_not_json_is_unavailable(
        server: JwksServer, client: httpx2.AsyncClient, body: bytes, error: str) -> None:
    path = f"/raw/{next(_paths)}"
    server.documents[path] = body
    with pytest.raises(KeySetUnavailable, match=f"unavailable: {error}$"):
        await remote(server.url + path, client, FakeClock()).key_for("any")


async def test_deputy_a_deeply_nested_body_is_unavailable(server: JwksServer, client: httpx2.AsyncClient) -> None:
    path = f"/raw/{next(_paths)}"
    server.documents[path] = b'{"keys": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    with pytest.raises(KeySetUnavailable):
        await remote(server.url + path, client, FakeClock()).key_for("any")


async def test_deputy_an_unreachable_key_set_is_unavailable(client: httpx2.AsyncClient) -> None:
    keys = remote(f"http://127.0.0.1:{free_port()}/jwks", client, FakeClock())
    with pytest.raises(KeySetUnavailable, match="ConnectError"):
        await keys.key_for("any")


async def test_spiffe_bundle_4_2_2_the_parse_function_decides_which_keys_count(
        server: JwksServer, client: httpx2.AsyncClient, old: SigningKey) -> None:
    path = publish(server, old)  # its JWK has use "sig", not "jwt-svid"
    keys = RemoteKeys(server.url + path, client=client, clock=FakeClock(),
                      parse=lambda d: parse_key_set(d, allowed=ASYMMETRIC_ALGORITHMS, use="jwt-svid"))
    with pytest.raises(UnknownKey):
        await keys.key_for(old.kid)


def test_deputy_verification_keys_are_bound_to_one_algorithm(old: SigningKey) -> None:
    loaded = parse_key_set({"keys": [old.public_jwk]}, allowed=ASYMMETRIC_ALGORITHMS)
    assert loaded == {old.kid: VerificationKey(old.kid, "ES256", loaded[old.kid].public_key)}


# --- the gateway: a rotated remote SPIFFE bundle, through /token ------------------------------------------


@asynccontextmanager
async def in_process_gateway(setup: Setup) -> AsyncIterator[httpx2.AsyncClient]:
    """`deputy serve`'s start-up (settings, prepare, app, lifespan with the store and keys) in this process,
    served over ASGI."""
    app = build_app(prepare(load_settings(setup.config)))
    thresholds = gc.get_threshold()
    try:
        async with app.app.router.lifespan_context(app.app), httpx2.AsyncClient(
                transport=httpx2.ASGITransport(app=app), base_url=setup.issuer) as http:
            yield http
    finally:  # the lifespan tunes the collector for a server process; give the test process its own back
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def _issued(state_dir: Path) -> int:
    with sqlite3.connect(state_dir / "deputy.db") as db:
        return int(db.execute("SELECT count(*) FROM issued_tokens").fetchone()[0])


def _refused_naming_actor_token(response: httpx2.Response) -> None:
    """RFC 8693 §2.2.2: a rejected actor token is invalid_request, named in the description, no-store."""
    assert response.status_code == 400, response.text
    assert response.headers.get("cache-control") == "no-store"
    body = response.json()
    assert body["error"] == "invalid_request", body
    assert RFC6749_CHARSET.fullmatch(body["error_description"])
    assert "actor_token " in body["error_description"], body
    assert "access_token" not in body


@pytest.fixture
def rotation_setup(tmp_path: Path) -> Iterator[Setup]:
    setup = make_setup(tmp_path)
    yield setup
    setup.jwks_server.close()


async def test_jwt_svid_6_remote_bundle_rotated_to_a_new_key_is_refetched_on_unknown_kid(
        rotation_setup: Setup, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A bundle fetched, then rotated: within 30 s the new kid is refused without a refetch; at 30 s it
    triggers one refetch and is trusted; the removed key no longer is."""
    setup, clock = rotation_setup, FakeClock()
    monkeypatch.setattr(gateway.wiring, "RemoteKeys", functools.partial(RemoteKeys, clock=clock))
    server, state_dir = setup.jwks_server, setup.directory / "state"
    old_domain, new_domain = setup.remote_domain, TrustDomain("remote.example")

    def form(domain: TrustDomain) -> dict[str, str]:
        return {"grant_type": GRANT, "subject_token": setup.idp.token(audience=setup.issuer),
                "subject_token_type": ACCESS_TOKEN, "actor_token": domain.svid(audience=setup.issuer),
                "actor_token_type": JWT, "resource": MAIL, "scope": "mail.read"}

    async with in_process_gateway(setup) as http:
        first = await http.post("/token", data=form(old_domain))
        assert first.status_code == 200, first.text
        assert server.hits["/bundle"] == 1
        server.documents["/bundle"] = new_domain.jwks()
        issued = _issued(state_dir)

        clock.now = T0 + 29.9
        _refused_naming_actor_token(await http.post("/token", data=form(new_domain)))
        assert server.hits["/bundle"] == 1  # within 30 s: no refetch yet
        assert _issued(state_dir) == issued

        clock.now = T0 + 30.0
        granted = await http.post("/token", data=form(new_domain))
        assert granted.status_code == 200, granted.text
        assert server.hits["/bundle"] == 2
        assert _issued(state_dir) == issued + 1

        _refused_naming_actor_token(await http.post("/token", data=form(old_domain)))
        assert _issued(state_dir) == issued + 1
    assert not [r for r in caplog.records if r.getMessage() == "server_error"]  # no input is a server error
