"""Issue 9 §2, signing keys shared by all replicas: the key ring (token keys and SSF event keys), made and
rotated in one way whatever keeps it — key files, or sealed in a real store — with compare-and-set saves, and
taken up by every `LiveKeys` that follows it."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from delegation.store import Store
from delegation.stores import open_store
from gateway import key_ring
from gateway.key_ring import KeyRing, KeyStoreError, KeyVault
from gateway.keystore import KeyFiles
from gateway.live_keys import LiveKeys
from gateway.sealed_keys import CANNOT_OPEN, KeyEncryptionKey, StoreKeys
from tests.delegation.test_store_contract import IMPLEMENTATIONS, new_store_url, store_url
from token_exchange.signing import SigningKey

ISSUER = "https://deputy.example.com"
VAULTS = ["files", *IMPLEMENTATIONS]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(store_url(IMPLEMENTATIONS[0], tmp_path))
    yield opened
    await opened.close()


@pytest.fixture
def kek() -> KeyEncryptionKey:
    return KeyEncryptionKey(os.urandom(32))


VaultMaker = Callable[[], KeyVault]


@pytest.fixture(params=VAULTS)
async def vaults(request: pytest.FixtureRequest, tmp_path: Path, kek: KeyEncryptionKey
                 ) -> AsyncIterator[VaultMaker]:
    """Makes vaults on one shared place (the same key directory, or the same store and KEK), as separate
    processes or replicas would each have their own."""
    if request.param == "files":
        yield lambda: KeyFiles(tmp_path / "state")
        return
    url = new_store_url(request, request.param, tmp_path)
    opened = [await open_store(url) for _ in range(3)]
    turn = iter(range(1_000_000))
    yield lambda: StoreKeys(opened[next(turn) % len(opened)], kek)
    for each in opened:
        await each.close()


def kids(ring: KeyRing) -> tuple[str, str | None, str, str | None]:
    t, e = ring.tokens, ring.events
    return t.current.kid, t.previous and t.previous.kid, e.current.kid, e.previous and e.previous.kid


async def test_issue9_first_start_makes_token_keys_and_rs256_event_keys_of_3072_bits(vaults: VaultMaker) -> None:
    ring, version = await key_ring.load_or_create(vaults(), "ES256")
    assert version == 1
    assert (ring.tokens.current.algorithm, ring.tokens.previous, ring.events.previous) == ("ES256", None, None)
    event_key = ring.events.current
    assert event_key.algorithm == "RS256"  # CAEP interoperability profile §2.6
    assert isinstance(event_key.private_key, rsa.RSAPrivateKey) and event_key.private_key.key_size == 3072
    assert ring.events.current.kid != ring.tokens.current.kid
    again = await key_ring.load_or_create(vaults(), "ES256")
    assert (kids(again[0]), again[1]) == (kids(ring), 1)  # the ring in the vault, not a new one


async def test_issue9_the_token_jwks_never_holds_the_event_keys(vaults: VaultMaker) -> None:
    """The SETs' RS256 keys are published apart, so a SET can never verify as one of Deputy's tokens."""
    ring, _ = await key_ring.load_or_create(vaults(), "RS256")
    ring, _ = await key_ring.rotate(vaults(), "RS256")
    token_kids = {k["kid"] for k in ring.public_jwks()["keys"]}
    event_kids = {k["kid"] for k in ring.events_jwks()["keys"]}
    assert len(token_kids) == 2 and len(event_kids) == 2 and not token_kids & event_kids
    assert all(set(k) >= {"kty", "n", "e", "kid", "alg", "use"} and "d" not in k for k in ring.events_jwks()["keys"])


async def test_issue9_rotate_makes_current_keys_previous_and_drops_the_ones_before(vaults: VaultMaker) -> None:
    first, _ = await key_ring.load_or_create(vaults(), "ES256")
    second, v2 = await key_ring.rotate(vaults(), "ES256")
    third, v3 = await key_ring.rotate(vaults(), "ES256")
    assert (v2, v3) == (2, 3)
    assert kids(second)[1::2] == kids(first)[0::2]  # token and event keys rotate together
    assert kids(third)[1::2] == kids(second)[0::2]
    stored = await vaults().read()
    assert stored is not None and stored.version == 3 and stored.ring() is not None
    assert kids(stored.ring()) == kids(third)  # type: ignore[arg-type]


async def test_issue9_a_changed_algorithm_makes_a_new_token_key_and_keeps_the_old_one_published(
        vaults: VaultMaker) -> None:
    first, _ = await key_ring.load_or_create(vaults(), "ES256")
    changed, version = await key_ring.load_or_create(vaults(), "EdDSA")
    assert (changed.tokens.current.algorithm, version) == ("EdDSA", 2)
    assert kids(changed)[1:] == (first.tokens.current.kid, *kids(first)[2:])  # event keys: not the algorithm's


async def test_issue9_workers_starting_at_once_agree_on_one_ring(vaults: VaultMaker) -> None:
    """Compare-and-set: of the processes that find no ring, one saves its own; the others read the winner's."""
    rings = await asyncio.gather(*(key_ring.load_or_create(vaults(), "ES256") for _ in range(4)))
    assert len({kids(ring) for ring, _ in rings}) == 1 and {version for _, version in rings} == {1}


async def test_issue9_rotations_at_once_are_both_saved_one_after_the_other(vaults: VaultMaker) -> None:
    await key_ring.load_or_create(vaults(), "ES256")
    rotated = await asyncio.gather(key_ring.rotate(vaults(), "ES256"), key_ring.rotate(vaults(), "ES256"))
    assert sorted(version for _, version in rotated) == [2, 3]
    first, last = sorted(rotated, key=lambda r: r[1])
    assert kids(last[0])[1::2] == kids(first[0])[0::2]  # the loser re-read the winner's ring and rotated it


async def test_issue9_a_stale_save_writes_nothing(vaults: VaultMaker) -> None:
    ring, version = await key_ring.load_or_create(vaults(), "ES256")
    rotated, _ = await key_ring.rotate(vaults(), "ES256")
    assert await vaults().save(ring, replaces=version) is None  # another process saved version 2 meanwhile
    stored = await vaults().read()
    assert stored is not None and stored.version == 2 and kids(stored.ring()) == kids(rotated)  # type: ignore[arg-type]


async def test_issue9_live_keys_take_up_a_rotation_and_keep_old_tokens_verifying(vaults: VaultMaker) -> None:
    """Two followers of one vault (two workers, or two replicas on one store): a rotation by a third party is
    taken up by both: new kid for tokens and SETs, both JWKS, old tokens still verify."""
    a = await LiveKeys.open(vaults(), algorithm="ES256", issuer=ISSUER)
    b = await LiveKeys.open(vaults(), algorithm="ES256", issuer=ISSUER)
    assert a.public_jwks() == b.public_jwks() and a.events_jwks() == b.events_jwks()
    old = a.signer.sign({"aud": "https://mail", "iat": 1, "exp": 2**31}, typ="at+jwt").token
    assert not await a.refresh()  # nothing changed
    rotated, _ = await key_ring.rotate(vaults(), "ES256")
    assert await a.refresh() and await b.refresh()
    for keys in (a, b):
        assert keys.public_jwks() == rotated.public_jwks() and keys.events_jwks() == rotated.events_jwks()
        new = keys.signer.sign({"aud": "https://mail", "iat": 1, "exp": 2**31}, typ="at+jwt").token
        assert jwt.get_unverified_header(new)["kid"] == rotated.tokens.current.kid
        event = keys.events_signer.sign_event({"events": {"urn:example:e": {}}})
        assert jwt.get_unverified_header(event)["kid"] == rotated.events.current.kid
        key = await keys.own_keys.key_for(jwt.get_unverified_header(old)["kid"])  # the previous token key
        assert jwt.decode(old, key.public_key, algorithms=[key.algorithm], audience="https://mail")["iss"] == ISSUER


async def test_issue9_the_store_ring_does_not_open_under_another_kek_and_is_never_replaced(store: Store) -> None:
    """A replica with a different KEK must not take the ring for absent and make new keys for everyone."""
    await key_ring.load_or_create(StoreKeys(store, KeyEncryptionKey(os.urandom(32))), "ES256")
    before = await store.key_ring()
    other = StoreKeys(store, KeyEncryptionKey(os.urandom(32)))
    for attempt in (key_ring.load_or_create(other, "ES256"), key_ring.rotate(other, "ES256")):
        with pytest.raises(KeyStoreError) as caught:
            await attempt
        assert str(caught.value) == CANNOT_OPEN
    assert await store.key_ring() == before


async def test_issue9_a_follower_keeps_its_ring_when_the_store_ring_does_not_open(store: Store,
                                                                                  kek: KeyEncryptionKey) -> None:
    keys = await LiveKeys.open(StoreKeys(store, kek), algorithm="ES256", issuer=ISSUER)
    before = keys.public_jwks()
    found = await store.key_ring()
    assert found is not None
    assert await store.save_key_ring(found.sealed, replaces=1) == 2  # version 1's ring written back as version 2
    assert not await keys.refresh()
    assert keys.public_jwks() == before and await store.key_ring_version() == 2


async def test_issue9_a_follower_never_goes_back_to_an_older_ring_put_back_in_the_store(
        store: Store, kek: KeyEncryptionKey, tmp_path: Path) -> None:
    """Someone who can write the database restores an older sealed ring with its own version (so it opens):
    a rotated-out key must not become current again on the replicas."""
    vault = StoreKeys(store, kek)
    keys = await LiveKeys.open(vault, algorithm="ES256", issuer=ISSUER)
    old = await store.key_ring()
    assert old is not None
    await key_ring.rotate(vault, "ES256")
    assert await keys.refresh()
    rotated = keys.public_jwks()
    with sqlite3.connect(tmp_path / "deputy.db") as db:
        db.execute("UPDATE signing_key_ring SET version = ?, sealed = ?", (old.version, old.sealed))
    assert not await keys.refresh()
    assert keys.public_jwks() == rotated


async def test_issue9_key_files_of_an_older_deputy_gain_event_keys_and_keep_their_token_keys(tmp_path: Path) -> None:
    """A `keys.json` from before this issue (no version, no event keys) is upgraded at the next start."""
    directory = tmp_path / "state" / "keys"
    directory.mkdir(parents=True)
    old = SigningKey.generate("ES256")
    (directory / f"{old.kid}.pem").write_bytes(old.to_pem())
    (directory / "keys.json").write_text(json.dumps({"current": {"kid": old.kid, "alg": "ES256"}, "previous": None}))
    ring, version = await key_ring.load_or_create(KeyFiles(tmp_path / "state"), "ES256")
    assert (ring.tokens.current.kid, ring.events.current.algorithm, version) == (old.kid, "RS256", 1)
    assert sorted(p.name for p in directory.glob("*.pem")) == sorted(
        [f"{old.kid}.pem", f"{ring.events.current.kid}.pem"])
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in directory.iterdir() if p.name != ".lock")


@pytest.mark.parametrize(("manifest", "says"), [
    ("{not json", "unreadable signing keys"),
    ("[1]", "keys.json is not a JSON object"),
    ('{"version": "2", "current": {"kid": "x", "alg": "ES256"}}', "no valid version"),
    ('{"version": 1, "current": {"kid": "x", "alg": "ES256"}}', "x.pem"),
])
async def test_issue9_unreadable_key_files_are_one_error_never_new_keys(tmp_path: Path, manifest: str,
                                                                        says: str) -> None:
    directory = tmp_path / "state" / "keys"
    directory.mkdir(parents=True)
    (directory / "keys.json").write_text(manifest)
    with pytest.raises(KeyStoreError) as caught:
        await key_ring.load_or_create(KeyFiles(tmp_path / "state"), "ES256")
    assert says in str(caught.value) and "\n" not in str(caught.value)
    assert (directory / "keys.json").read_text() == manifest
