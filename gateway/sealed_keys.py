"""The key ring in the store, sealed with AES-256-GCM under the key-encryption key (`[keys]
encryption_key_file`): every replica reads the same ring, and the database never holds a key in the clear.

A sealed ring is `format (1 byte) ‖ nonce (12 random bytes) ‖ ciphertext and tag`. The associated data
binds the format and the ring version it is saved as, so a ring sealed for one version does not open as
another (an old ring written back over a newer one is refused, not taken up). A wrong key-encryption key, a
changed byte or a replayed ring all fail the same way: one line, and never new keys in its place, which would
silently change the keys of every replica.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from delegation.store import KeyRecords
from token_exchange.event_signing import EVENT_SIGNING_ALGORITHM
from token_exchange.signing import SigningKey

from .key_ring import KeyPair, KeyRing, KeyStoreError, Stored
from .settings import ConfigError

KEK_BYTES = 32  # AES-256
NONCE_BYTES = 12  # 96 bits, fresh for every seal (NIST SP 800-38D §8.2.2)
FORMAT = 1
PURPOSE = b"deputy key ring"
KEY = "keys.encryption_key_file"
CANNOT_OPEN = f"{KEY}: cannot open the key ring in the store (a different key-encryption key?)"
RECIPE = "head -c 32 /dev/urandom | base64 > kek && chmod 600 kek"


class KeyEncryptionKey:
    """The 32-byte key-encryption key; it never appears in a repr or a log."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEK_BYTES:
            raise ValueError(f"a key-encryption key has {KEK_BYTES} bytes")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "KeyEncryptionKey(<secret>)"

    def seal(self, ring: KeyRing, *, version: int) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return bytes([FORMAT]) + nonce + self._aead.encrypt(nonce, _document(ring), _associated(version))

    def open(self, sealed: bytes, *, version: int) -> Stored:
        """The ring sealed as `version`; KeyStoreError (CANNOT_OPEN) for any other key, version or byte."""
        if len(sealed) < 1 + NONCE_BYTES + 16 or sealed[0] != FORMAT:
            raise KeyStoreError(CANNOT_OPEN)
        nonce, ciphertext = sealed[1:1 + NONCE_BYTES], sealed[1 + NONCE_BYTES:]
        try:
            plaintext = self._aead.decrypt(nonce, ciphertext, _associated(version))
        except InvalidTag:
            raise KeyStoreError(CANNOT_OPEN) from None
        return _stored(plaintext, version)


def read_encryption_key(path: Path) -> KeyEncryptionKey:
    """The key-encryption key in `path`: 32 bytes, base64, in a file only its owner may read or write.
    ConfigError naming `keys.encryption_key_file` for a missing or unreadable file, group or other
    permission bits, text that is not base64, or another length."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO would block: it is refused below instead
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise ConfigError(f"{KEY}: {path} is not a regular file")
            if status.st_mode & 0o077:
                raise ConfigError(f"{KEY}: {path} is open to group or others (mode {stat.S_IMODE(status.st_mode):04o})"
                                  f"; chmod 600 {path}")
            text = os.read(fd, 4 * KEK_BYTES)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError(f"{KEY}: cannot read {path}: {exc.strerror or exc}") from exc
    try:
        key = base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{KEY}: {path} does not hold base64 (make one with: {RECIPE})") from None
    if len(key) != KEK_BYTES:
        raise ConfigError(f"{KEY}: {path} must hold {KEK_BYTES} random bytes, base64-encoded, not {len(key)}"
                          f" (make one with: {RECIPE})")
    return KeyEncryptionKey(key)


class StoreKeys:
    """`KeyVault` over the store's `KeyRecords`: the ring sealed under the key-encryption key, each save
    sealed for the version it is saved as."""

    def __init__(self, records: KeyRecords, kek: KeyEncryptionKey) -> None:
        self._records = records
        self._kek = kek

    async def version(self) -> int | None:
        return await self._records.key_ring_version()

    async def read(self) -> Stored | None:
        found = await self._records.key_ring()
        return None if found is None else self._kek.open(found.sealed, version=found.version)

    async def save(self, ring: KeyRing, *, replaces: int | None) -> int | None:
        version = (replaces or 0) + 1  # KeyRecords: each save is the next version, the first is 1
        saved = await self._records.save_key_ring(self._kek.seal(ring, version=version), replaces=replaces)
        if saved is not None and saved != version:
            raise KeyStoreError(f"keys: the store saved the key ring as version {saved}, not {version}")
        return saved


def _associated(version: int) -> bytes:
    return b"%s/%d/%d" % (PURPOSE, FORMAT, version)


def _document(ring: KeyRing) -> bytes:
    return json.dumps({"tokens": _pair_document(ring.tokens), "events": _pair_document(ring.events)}).encode()


def _pair_document(pair: KeyPair) -> dict[str, Any]:
    keys = {"current": pair.current, "previous": pair.previous}
    return {name: key and {"alg": key.algorithm, "pem": key.to_pem().decode()} for name, key in keys.items()}


def _stored(plaintext: bytes, version: int) -> Stored:
    try:
        document = json.loads(plaintext)
        return Stored(version, _pair(document["tokens"], None), _pair(document["events"], EVENT_SIGNING_ALGORITHM))
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyStoreError(f"keys: the key ring in the store holds no valid keys: {exc}") from exc


def _pair(document: dict[str, Any], algorithm: str | None) -> KeyPair:
    current, previous = document["current"], document["previous"]
    return KeyPair(_key(current, algorithm), _key(previous, algorithm) if previous else None)


def _key(document: dict[str, str], algorithm: str | None) -> SigningKey:
    if algorithm is not None and document["alg"] != algorithm:
        raise ValueError(f"an event key is {document['alg']}, not {algorithm}")
    return SigningKey.from_pem(document["alg"], document["pem"].encode())
