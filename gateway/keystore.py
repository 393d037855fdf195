"""The key ring as files: `<state_dir>/keys/`, each key a PEM file (0600) named by its kid, and `keys.json`,
the manifest that names the current and previous token and event keys and the ring's version.

This is the vault when `[keys] encryption_key_file` is not set (one machine: the gateway's workers share
the directory). Writers hold an exclusive lock on `keys/.lock`, readers a shared one; the manifest is
replaced atomically after the key files it names are written.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from token_exchange.event_signing import EVENT_SIGNING_ALGORITHM
from token_exchange.signing import SigningKey

from .key_ring import KeyPair, KeyRing, KeyStoreError, Stored

MANIFEST = "keys.json"


class KeyFiles:
    """`KeyVault` over the key files in `state_dir`."""

    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "keys"

    async def version(self) -> int | None:
        return await asyncio.to_thread(self._version)

    async def read(self) -> Stored | None:
        return await asyncio.to_thread(self._read)

    async def save(self, ring: KeyRing, *, replaces: int | None) -> int | None:
        return await asyncio.to_thread(self._save, ring, replaces)

    def _version(self) -> int | None:
        entries = self._manifest()
        return None if entries is None else _version_of(entries, self.directory)

    def _read(self) -> Stored | None:
        with self._locked(fcntl.LOCK_SH):
            entries = self._manifest()
            return None if entries is None else _parse(self.directory, entries)

    def _save(self, ring: KeyRing, replaces: int | None) -> int | None:
        with self._locked(fcntl.LOCK_EX):
            entries = self._manifest()
            if (None if entries is None else _version_of(entries, self.directory)) != replaces:
                return None
            version = (replaces or 0) + 1
            keys = [k for pair in (ring.tokens, ring.events) for k in (pair.current, pair.previous) if k]
            for key in keys:
                _write_private(self.directory / f"{key.kid}.pem", key.to_pem())
            manifest = {"version": version, **_pair_entries(ring.tokens), "events": _pair_entries(ring.events)}
            _write_private(self.directory / MANIFEST, json.dumps(manifest, indent=2).encode())
            keep = {f"{key.kid}.pem" for key in keys} | {MANIFEST, ".lock"}
            for stale in self.directory.iterdir():
                if stale.name not in keep:
                    stale.unlink()
            return version

    def _manifest(self) -> dict[str, Any] | None:
        try:
            entries = json.loads((self.directory / MANIFEST).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise KeyStoreError(f"{self.directory}: unreadable signing keys: {exc}") from exc
        if not isinstance(entries, dict):
            raise KeyStoreError(f"{self.directory}: unreadable signing keys: {MANIFEST} is not a JSON object")
        return entries

    @contextmanager
    def _locked(self, operation: int) -> Iterator[None]:
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(self.directory / ".lock", "a") as lock:
                fcntl.flock(lock, operation)
                yield
        except OSError as exc:
            raise KeyStoreError(f"{self.directory}: {exc.strerror or exc}") from exc


def _version_of(entries: dict[str, Any], directory: Path) -> int:
    version = entries.get("version", 0)  # 0: a manifest written before rings had versions
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise KeyStoreError(f"{directory}: unreadable signing keys: {MANIFEST} has no valid version")
    return version


def _parse(directory: Path, entries: dict[str, Any]) -> Stored:
    version = _version_of(entries, directory)
    try:
        tokens = _pair(directory, entries, None)
        events = _pair(directory, entries["events"], EVENT_SIGNING_ALGORITHM) if "events" in entries else None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyStoreError(f"{directory}: unreadable signing keys: {exc}") from exc
    return Stored(version, tokens, events)


def _pair(directory: Path, entries: dict[str, Any], algorithm: str | None) -> KeyPair:
    previous = entries.get("previous")
    return KeyPair(_read_key(directory, entries["current"], algorithm),
                   _read_key(directory, previous, algorithm) if previous else None)


def _read_key(directory: Path, entry: dict[str, str], algorithm: str | None) -> SigningKey:
    if algorithm is not None and entry["alg"] != algorithm:
        raise ValueError(f"event key {entry['kid']} is {entry['alg']}, not {algorithm}")
    key = SigningKey.from_pem(entry["alg"], (directory / f"{entry['kid']}.pem").read_bytes())
    if key.kid != entry["kid"]:
        raise ValueError(f"key file {entry['kid']}.pem does not match its kid")
    return key


def _pair_entries(pair: KeyPair) -> dict[str, Any]:
    previous = pair.previous
    return {"current": {"kid": pair.current.kid, "alg": pair.current.algorithm},
            "previous": {"kid": previous.kid, "alg": previous.algorithm} if previous else None}


def _write_private(path: Path, data: bytes) -> None:
    """Write atomically, readable by the owner only."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
