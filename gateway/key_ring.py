"""Deputy's signing key ring and the one way it is made and rotated, wherever it is kept.

The ring holds two pairs, each a current key and the one before it: the token keys (`[tokens] signing_alg`),
published at the metadata's `jwks_uri`, and the SSF event keys (RS256), which sign Security Event Tokens and
are published apart. A `KeyVault` keeps the ring: key files (`keystore.KeyFiles`), or sealed in the store
(`sealed_keys.StoreKeys`) so that every replica signs with the same keys. Saves are compare-and-set on the
ring's version: of two processes that change the ring at once, the second reads the first's and starts again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from token_exchange.event_signing import EVENT_SIGNING_ALGORITHM
from token_exchange.signing import SigningKey

SAVE_ATTEMPTS = 8  # each failed attempt means another process saved a ring meanwhile

Jwks = dict[str, list[dict[str, object]]]


class KeyStoreError(Exception):
    """The key ring cannot be read, does not hold valid keys, or cannot be opened: one line, never a new ring."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A current key and the previous one, both published so tokens signed before a rotation keep verifying."""

    current: SigningKey
    previous: SigningKey | None = None

    def rotated(self, key: SigningKey) -> KeyPair:
        return KeyPair(key, self.current)

    def jwks(self) -> Jwks:
        keys = [self.current] + ([self.previous] if self.previous else [])
        return {"keys": [k.public_jwk for k in keys]}


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The token keys and the SSF event keys."""

    tokens: KeyPair
    events: KeyPair

    def public_jwks(self) -> Jwks:
        """The token keys' public JWK Set (the metadata's `jwks_uri`); never the event keys."""
        return self.tokens.jwks()

    def events_jwks(self) -> Jwks:
        """The event keys' public JWK Set (the SSF transmitter's `jwks_uri`, SSF 1.0 §4.1.4)."""
        return self.events.jwks()


class Stored(NamedTuple):
    """A ring as a vault holds it, and the version it was saved as. `events` is None in key files written
    before Deputy signed SETs: the next start adds event keys and keeps the token keys."""

    version: int
    tokens: KeyPair
    events: KeyPair | None

    def ring(self) -> KeyRing | None:
        return None if self.events is None else KeyRing(self.tokens, self.events)


class KeyVault(Protocol):
    """Where the ring is kept; `version` grows with each save."""

    async def version(self) -> int | None:
        """The saved ring's version (cheap: polled every second to see rotations); None if there is none."""
        ...

    async def read(self) -> Stored | None: ...

    async def save(self, ring: KeyRing, *, replaces: int | None) -> int | None:
        """Save `ring` only if the saved version is still `replaces` (None: no ring yet); the new version, or
        None (nothing written) when another process saved first."""
        ...


async def load_or_create(vault: KeyVault, algorithm: str) -> tuple[KeyRing, int]:
    """The ring and its version. Keys are made on first start; a ring whose current token key has another
    algorithm than `algorithm` gets a new one (the old one stays as previous), one without event keys gets them."""
    return await _update(vault, lambda stored: _started(stored, algorithm), keep=lambda ring: _fits(ring, algorithm))


async def rotate(vault: KeyVault, algorithm: str) -> tuple[KeyRing, int]:
    """New current token and event keys; the current ones become previous, the previous ones are dropped."""
    return await _update(vault, lambda stored: _rotated(stored, algorithm), keep=lambda ring: False)


async def _update(vault: KeyVault, change: Callable[[Stored | None], KeyRing],
                  keep: Callable[[KeyRing], bool]) -> tuple[KeyRing, int]:
    """Read the ring; unless `keep` takes it as it is, save `change` of it compare-and-set, and when another
    process saved first, read its ring and try again."""
    for _ in range(SAVE_ATTEMPTS):
        stored = await vault.read()
        ring = stored.ring() if stored is not None else None
        if stored is not None and ring is not None and keep(ring):
            return ring, stored.version
        changed = await asyncio.to_thread(change, stored)  # key generation: tens to hundreds of ms
        version = await vault.save(changed, replaces=None if stored is None else stored.version)
        if version is not None:
            return changed, version
    raise KeyStoreError(f"keys: the key ring changed under {SAVE_ATTEMPTS} attempts in a row to save it; try again")


def _fits(ring: KeyRing, algorithm: str) -> bool:
    return ring.tokens.current.algorithm == algorithm


def _started(stored: Stored | None, algorithm: str) -> KeyRing:
    if stored is None:
        return KeyRing(KeyPair(SigningKey.generate(algorithm)), KeyPair(SigningKey.generate(EVENT_SIGNING_ALGORITHM)))
    tokens = stored.tokens
    if tokens.current.algorithm != algorithm:
        tokens = tokens.rotated(SigningKey.generate(algorithm))
    return KeyRing(tokens, stored.events or KeyPair(SigningKey.generate(EVENT_SIGNING_ALGORITHM)))


def _rotated(stored: Stored | None, algorithm: str) -> KeyRing:
    tokens = KeyPair(SigningKey.generate(algorithm), stored.tokens.current if stored else None)
    previous_events = stored.events.current if stored and stored.events else None
    events = KeyPair(SigningKey.generate(EVENT_SIGNING_ALGORITHM), previous_events)
    return KeyRing(tokens, events)
