"""Deputy's signing keys on disk: `<state_dir>/keys/`, files 0600, a current key and the previous one.

Keys are made on first start and by `deputy keys rotate`; the JWKS publishes both so tokens signed
before a rotation keep verifying until they expire.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from token_exchange.signing import SigningKey

MANIFEST = "keys.json"


class KeyStoreError(Exception):
    """Key files that cannot be read or do not hold valid key material."""


@dataclass(frozen=True, slots=True)
class KeyRing:
    current: SigningKey
    previous: SigningKey | None

    def public_jwks(self) -> dict[str, list[dict[str, object]]]:
        keys = [self.current] + ([self.previous] if self.previous else [])
        return {"keys": [k.public_jwk for k in keys]}


def load_or_create(state_dir: Path, algorithm: str) -> KeyRing:
    """The key ring, generating a key on first start or when the configured algorithm changed."""
    with _locked(state_dir) as directory:
        ring = _load(directory)
        if ring is not None and ring.current.algorithm == algorithm:
            return ring
        return _save(directory, SigningKey.generate(algorithm), ring.current if ring else None)


def rotate(state_dir: Path, algorithm: str) -> KeyRing:
    """A new current key; the old current one is kept as previous, the one before is dropped."""
    with _locked(state_dir) as directory:
        ring = _load(directory)
        return _save(directory, SigningKey.generate(algorithm), ring.current if ring else None)


def stamp(state_dir: Path) -> tuple[int, int] | None:
    """Identifies the key ring on disk as it is now (its manifest's inode and mtime), None if absent:
    `rotate` replaces the manifest, so the stamp changes with every rotation."""
    try:
        status = (state_dir / "keys" / MANIFEST).stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyStoreError(f"{state_dir / 'keys'}: {exc.strerror or exc}") from exc
    return status.st_ino, status.st_mtime_ns


def load(state_dir: Path) -> KeyRing:
    """The existing key ring; raises KeyStoreError when there is none."""
    ring = _load(state_dir / "keys")
    if ring is None:
        raise KeyStoreError(f"no signing keys in {state_dir / 'keys'}")
    return ring


@contextmanager
def _locked(state_dir: Path) -> Iterator[Path]:
    directory = state_dir / "keys"
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield directory
    except OSError as exc:
        raise KeyStoreError(f"{directory}: {exc.strerror or exc}") from exc


def _load(directory: Path) -> KeyRing | None:
    manifest = directory / MANIFEST
    if not manifest.exists():
        return None
    try:
        entries = json.loads(manifest.read_text())
        current = _read_key(directory, entries["current"])
        previous = _read_key(directory, entries["previous"]) if entries.get("previous") else None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyStoreError(f"{directory}: unreadable signing keys: {exc}") from exc
    return KeyRing(current, previous)


def _read_key(directory: Path, entry: dict[str, str]) -> SigningKey:
    key = SigningKey.from_pem(entry["alg"], (directory / f"{entry['kid']}.pem").read_bytes())
    if key.kid != entry["kid"]:
        raise ValueError(f"key file {entry['kid']}.pem does not match its kid")
    return key


def _save(directory: Path, current: SigningKey, previous: SigningKey | None) -> KeyRing:
    _write_private(directory / f"{current.kid}.pem", current.to_pem())
    entries = {
        "current": {"kid": current.kid, "alg": current.algorithm},
        "previous": {"kid": previous.kid, "alg": previous.algorithm} if previous else None,
    }
    _write_private(directory / MANIFEST, json.dumps(entries, indent=2).encode())
    keep = {f"{current.kid}.pem", MANIFEST, ".lock"} | ({f"{previous.kid}.pem"} if previous else set())
    for stale in directory.iterdir():
        if stale.name not in keep:
            stale.unlink()
    return KeyRing(current, previous)


def _write_private(path: Path, data: bytes) -> None:
    """Write atomically, readable by the owner only."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
