"""Issue 9 §2, signing keys shared by all replicas: with `[keys] encryption_key_file`, two `deputy serve`
processes (each with its own state directory) on one store serve one JWKS, sign with one key, and take up a
`deputy keys rotate` run anywhere within seconds, every worker of them; tokens signed before keep verifying.
Real processes, a real store and real HTTP on loopback."""

from __future__ import annotations

import asyncio
import base64
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx2
import jwt
import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from delegation.stores import open_store
from gateway.key_ring import KeyRing
from gateway.keystore import KeyFiles
from gateway.sealed_keys import StoreKeys, read_encryption_key
from tests.conftest import MAIL, Setup, make_setup
from tests.support import ACCESS_TOKEN, GRANT, JWT, deputy_command, free_port, gateway_process

ROTATION_SEEN_S = 5.0  # each worker checks the ring's version every second


def kek_file(path: Path) -> Path:
    """What docs/configuration.md says to run: `head -c 32 /dev/urandom | base64 > kek && chmod 600 kek`."""
    path.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    path.chmod(0o600)
    return path


def shared_keys(store: Path, kek: Path) -> str:
    return f'\n[store]\nurl = "sqlite:///{store}"\n\n[keys]\nencryption_key_file = "{kek}"\n'


def replica(setup: Setup, name: str) -> Path:
    """Another replica's config: its own port and state directory; the same issuer, store and KEK."""
    text = setup.config.read_text()
    config = setup.directory / f"{name}.toml"
    config.write_text(text.replace(f'listen = "127.0.0.1:{setup.port}"', f'listen = "127.0.0.1:{free_port()}"')
                      .replace('state_dir = "state"', f'state_dir = "state-{name}"'))
    return config


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    made = make_setup(tmp_path, extra=shared_keys(tmp_path / "shared.db", kek_file(tmp_path / "kek")))
    yield made
    made.jwks_server.close()


def mint(setup: Setup, url: str) -> str:
    form = {"grant_type": GRANT, "subject_token": setup.idp.token(audience=setup.issuer),
            "subject_token_type": ACCESS_TOKEN, "actor_token": setup.domain.svid(audience=setup.issuer),
            "actor_token_type": JWT, "resource": MAIL, "scope": "mail.read"}
    response = httpx2.post(url + "/token", data=form, timeout=10)  # a new connection: any worker may answer
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def jwks(url: str) -> dict[str, list[dict[str, str]]]:
    response = httpx2.get(url + "/.well-known/jwks.json", timeout=10)
    assert response.status_code == 200
    return dict(response.json())


def store_ring(setup: Setup) -> KeyRing:
    """The ring as it is in the store, opened with the KEK (as a replica reads it)."""
    async def read() -> KeyRing:
        store = await open_store(f"sqlite:///{setup.directory / 'shared.db'}")
        try:
            stored = await StoreKeys(store, read_encryption_key(setup.directory / "kek")).read()
        finally:
            await store.close()
        assert stored is not None and stored.ring() is not None
        return stored.ring()  # type: ignore[return-value]

    return asyncio.run(read())


def rotate(config: Path) -> str:
    done = subprocess.run(deputy_command("keys", "rotate", "--config", str(config)), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_issue9_replicas_on_one_store_share_keys_and_take_up_a_rotation_within_seconds(setup: Setup) -> None:
    with ExitStack() as running:
        urls = [running.enter_context(gateway_process(setup.config, workers=2)),
                running.enter_context(gateway_process(replica(setup, "b")))]
        ring = store_ring(setup)
        assert jwks(urls[0]) == jwks(urls[1]) == ring.public_jwks()  # jwks_uri answers the same everywhere
        before = [mint(setup, url) for url in urls]
        assert {kid_of(t) for t in before} == {ring.tokens.current.kid}
        assert not {k["kid"] for k in ring.events_jwks()["keys"]} & {k["kid"] for k in jwks(urls[0])["keys"]}
        assert "new event signing key" in rotate(replica(setup, "c"))  # from a third config: any replica's
        rotated = store_ring(setup)
        assert rotated.tokens.previous is not None and rotated.events.previous is not None
        assert (rotated.tokens.previous.kid, rotated.events.previous.kid) == (ring.tokens.current.kid,
                                                                              ring.events.current.kid)
        deadline, seen = time.monotonic() + ROTATION_SEEN_S, False
        while not seen and time.monotonic() < deadline:
            time.sleep(0.2)
            seen = all(jwks(url) == rotated.public_jwks() and {kid_of(mint(setup, url)) for _ in range(8)} ==
                       {rotated.tokens.current.kid} for url in urls)
        assert seen, "a replica or a worker still serves the old key ring"
        for url in urls:
            keys = KeySet.import_key_set(jwks(url))
            for old in before:  # tokens signed before the rotation still verify against every replica's JWKS
                assert jose_jwt.decode(old, keys, algorithms=["ES256"]).claims["aud"] == MAIL
    assert not (setup.directory / "state" / "keys").exists() and not (setup.directory / "state-b").exists()
    with sqlite3.connect(setup.directory / "shared.db") as db:
        sealed = db.execute("SELECT sealed FROM signing_key_ring").fetchone()[0]
    assert b"PRIVATE KEY" not in sealed and rotated.tokens.current.kid.encode() not in sealed


def test_issue9_a_replica_with_another_kek_stops_with_one_line_and_changes_nothing(setup: Setup) -> None:
    with gateway_process(setup.config):
        pass  # the first replica made the ring
    before = store_ring(setup)
    other = setup.directory / "other"
    other.mkdir()
    config = replica(setup, "b")
    config.write_text(config.read_text().replace(str(setup.directory / "kek"), str(kek_file(other / "kek"))))
    for command in (["serve", "--config", str(config)], ["keys", "rotate", "--config", str(config)]):
        done = subprocess.run(deputy_command(*command), capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stdout + done.stderr
        assert (done.stdout + done.stderr).splitlines() == [
            "deputy: keys.encryption_key_file: cannot open the key ring in the store (a different key-encryption "
            "key?)"]
    after = store_ring(setup)
    assert after.public_jwks() == before.public_jwks() and after.events_jwks() == before.events_jwks()


def test_issue9_a_kek_open_to_others_stops_serve_with_one_line_exit_2(setup: Setup) -> None:
    (setup.directory / "kek").chmod(0o644)
    done = subprocess.run(deputy_command("serve", "--config", str(setup.config)), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    path = setup.directory / "kek"
    assert (done.stdout + done.stderr).splitlines() == [
        f"deputy: keys.encryption_key_file: {path} is open to group or others (mode 0644); chmod 600 {path}"]


def test_issue9_without_a_kek_the_ring_stays_in_files(tmp_path: Path) -> None:
    """SQLite without `[keys]`: the key files of before, now with the event keys beside the token keys."""
    setup = make_setup(tmp_path)
    try:
        with gateway_process(setup.config) as url:
            token = mint(setup, url)
        stored = asyncio.run(KeyFiles(tmp_path / "state").read())
        assert stored is not None and stored.events is not None
        assert stored.tokens.current.kid == kid_of(token) and stored.events.current.algorithm == "RS256"
        with sqlite3.connect(tmp_path / "state" / "deputy.db") as db:
            assert db.execute("SELECT count(*) FROM signing_key_ring").fetchone()[0] == 0
    finally:
        setup.jwks_server.close()
