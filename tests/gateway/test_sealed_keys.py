"""Issue 9 §2: the key ring sealed with AES-256-GCM under `[keys] encryption_key_file`, and the key-encryption
key's file checked at start-up (one line naming the key, exit 2)."""

from __future__ import annotations

import base64
import os
import textwrap
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.key_ring import KeyPair, KeyRing, KeyStoreError
from gateway.sealed_keys import CANNOT_OPEN, NONCE_BYTES, KeyEncryptionKey
from token_exchange.signing import SigningKey

RECIPE = "head -c 32 /dev/urandom | base64 > kek && chmod 600 kek"


@pytest.fixture(scope="module")
def ring() -> KeyRing:
    return KeyRing(KeyPair(SigningKey.generate("ES256"), SigningKey.generate("ES256")),
                   KeyPair(SigningKey.generate("RS256")))


@pytest.fixture
def kek() -> KeyEncryptionKey:
    return KeyEncryptionKey(os.urandom(32))


def same_keys(a: KeyRing, b: KeyRing) -> bool:
    pems = lambda r: [k and k.to_pem() for p in (r.tokens, r.events) for k in (p.current, p.previous)]  # noqa: E731
    return pems(a) == pems(b)


def test_issue9_a_sealed_ring_opens_as_the_same_keys(ring: KeyRing, kek: KeyEncryptionKey) -> None:
    stored = kek.open(kek.seal(ring, version=7), version=7)
    assert stored.version == 7 and stored.ring() is not None and same_keys(stored.ring(), ring)  # type: ignore[arg-type]


def test_issue9_each_seal_has_a_fresh_nonce_and_no_key_in_the_clear(ring: KeyRing, kek: KeyEncryptionKey) -> None:
    first, second = kek.seal(ring, version=1), kek.seal(ring, version=1)
    assert first[1:1 + NONCE_BYTES] != second[1:1 + NONCE_BYTES] and first != second
    assert b"PRIVATE KEY" not in first and ring.tokens.current.kid.encode() not in first


def test_issue9_another_kek_cannot_open_the_ring(ring: KeyRing, kek: KeyEncryptionKey) -> None:
    with pytest.raises(KeyStoreError) as caught:
        KeyEncryptionKey(os.urandom(32)).open(kek.seal(ring, version=1), version=1)
    assert str(caught.value) == CANNOT_OPEN == (
        "keys.encryption_key_file: cannot open the key ring in the store (a different key-encryption key?)")


@pytest.mark.parametrize("where", ["format", "first nonce byte", "last nonce byte", "first ciphertext byte",
                                   "middle", "last tag byte"])
def test_issue9_a_changed_bit_anywhere_is_refused(ring: KeyRing, kek: KeyEncryptionKey, where: str) -> None:
    sealed = bytearray(kek.seal(ring, version=1))
    position = {"format": 0, "first nonce byte": 1, "last nonce byte": NONCE_BYTES, "first ciphertext byte":
                NONCE_BYTES + 1, "middle": len(sealed) // 2, "last tag byte": len(sealed) - 1}[where]
    sealed[position] ^= 0x01
    with pytest.raises(KeyStoreError, match="cannot open the key ring"):
        kek.open(bytes(sealed), version=1)


@pytest.mark.parametrize("cut", [0, 1, 1 + NONCE_BYTES, 1 + NONCE_BYTES + 15, -1])
def test_issue9_a_truncated_ring_is_refused(ring: KeyRing, kek: KeyEncryptionKey, cut: int) -> None:
    with pytest.raises(KeyStoreError, match="cannot open the key ring"):
        kek.open(kek.seal(ring, version=1)[:cut], version=1)


@pytest.mark.parametrize(("sealed_as", "opened_as"), [(1, 2), (2, 1), (3, 30)])
def test_issue9_a_ring_sealed_for_one_version_does_not_open_as_another(ring: KeyRing, kek: KeyEncryptionKey,
                                                                       sealed_as: int, opened_as: int) -> None:
    """An old sealed ring written back as a newer version (a replay) is refused, not taken up."""
    with pytest.raises(KeyStoreError, match="cannot open the key ring"):
        kek.open(kek.seal(ring, version=sealed_as), version=opened_as)


def test_issue9_the_kek_never_shows_in_a_repr() -> None:
    secret = os.urandom(32)
    shown = repr(KeyEncryptionKey(secret))
    assert base64.b64encode(secret).decode() not in shown and secret.hex() not in shown and "secret" in shown


# --- The key-encryption key's file, through `deputy check` -------------------------------------------------


def write_config(directory: Path, keys: str, store: str = "") -> Path:
    config = directory / "deputy.toml"
    config.write_text(textwrap.dedent(f"""
        listen = "127.0.0.1:8699"
        state_dir = "state"
        {store}
        [keys]
        {keys}
        """))
    return config


def kek_file(directory: Path, content: bytes, mode: int = 0o600) -> Path:
    path = directory / "kek"
    path.write_bytes(content)
    path.chmod(mode)
    return path


GOOD = base64.b64encode(os.urandom(32)) + b"\n"  # what `head -c 32 /dev/urandom | base64` writes
KEK_CASES = {
    "missing_file": (None, 0o600, "keys.encryption_key_file: cannot read {path}: No such file or directory"),
    "group_readable": (GOOD, 0o640, "keys.encryption_key_file: {path} is open to group or others (mode 0640); "
                                    "chmod 600 {path}"),
    "other_readable": (GOOD, 0o604, "keys.encryption_key_file: {path} is open to group or others (mode 0604); "
                                    "chmod 600 {path}"),
    "group_writable": (GOOD, 0o620, "keys.encryption_key_file: {path} is open to group or others (mode 0620); "
                                    "chmod 600 {path}"),
    "not_base64": (b"this is not base64!\n", 0o600,
                   f"keys.encryption_key_file: {{path}} does not hold base64 (make one with: {RECIPE})"),
    "sixteen_bytes": (base64.b64encode(os.urandom(16)), 0o400, "keys.encryption_key_file: {path} must hold 32 random "
                      f"bytes, base64-encoded, not 16 (make one with: {RECIPE})"),
    "empty": (b"", 0o600, "keys.encryption_key_file: {path} must hold 32 random bytes, base64-encoded, not 0 "
                          f"(make one with: {RECIPE})"),
    "raw_bytes_not_base64": (os.urandom(32), 0o600,
                             f"keys.encryption_key_file: {{path}} does not hold base64 (make one with: {RECIPE})"),
}


@pytest.mark.parametrize("case", KEK_CASES)
def test_issue9_a_bad_kek_file_is_one_line_naming_the_key_exit_2(tmp_path: Path, case: str,
                                                                  capfd: pytest.CaptureFixture[str]) -> None:
    content, mode, message = KEK_CASES[case]
    path = kek_file(tmp_path, content, mode) if content is not None else tmp_path / "kek"
    config = write_config(tmp_path, 'encryption_key_file = "kek"')
    assert main(["check", "--config", str(config)]) == 2
    out, err = capfd.readouterr()
    assert (out + err).splitlines() == [f"deputy: {message.format(path=path)}"]


@pytest.mark.parametrize(("keys", "store", "message"), [
    ("", '[store]\nurl = "postgresql:///deputy?host=/run/postgresql"',
     "keys.encryption_key_file: required with a PostgreSQL store (replicas share their signing keys through "
     "the database, which needs a key-encryption key)"),
    ("", '[store]\nurl = "postgres://db.example.com/deputy"', "keys.encryption_key_file: required with a "
     "PostgreSQL store (replicas share their signing keys through the database, which needs a key-encryption key)"),
    ('encryption_key = "kek"', "", "keys.encryption_key: unknown key"),
    ("encryption_key_file = 32", "", "keys.encryption_key_file: must be a string"),
    ('encryption_key_file = "."', "", "keys.encryption_key_file: {directory} is not a regular file"),
])
def test_issue9_keys_table_errors_are_one_line_exit_2(tmp_path: Path, keys: str, store: str, message: str,
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, keys, store)
    assert main(["check", "--config", str(config)]) == 2
    out, err = capfd.readouterr()
    assert (out + err).splitlines() == [f"deputy: {message.format(directory=tmp_path)}"]


def test_issue9_a_good_kek_file_checks_ok(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    kek_file(tmp_path, GOOD, 0o400)
    assert main(["check", "--config", str(write_config(tmp_path, 'encryption_key_file = "kek"'))]) == 0
    assert "config ok" in capfd.readouterr().out


def test_issue9_a_kek_path_that_is_a_fifo_is_refused_without_waiting(tmp_path: Path,
                                                                      capfd: pytest.CaptureFixture[str]) -> None:
    os.mkfifo(tmp_path / "kek", 0o600)
    assert main(["check", "--config", str(write_config(tmp_path, 'encryption_key_file = "kek"'))]) == 2
    assert capfd.readouterr().err.splitlines() == [
        f"deputy: keys.encryption_key_file: {tmp_path / 'kek'} is not a regular file"]
