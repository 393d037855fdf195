"""The signing key ring in force: reloaded when `deputy keys rotate` changes it in its vault (the key files,
or the store), so every worker of every replica signs with the new keys within seconds, without a restart."""

from __future__ import annotations

import asyncio
import logging

from delegation.records import StoreError
from token_exchange.event_signing import EventSigner
from token_exchange.keys import KeySet, StaticKeys, parse_key_set
from token_exchange.rfc9068 import Signer
from token_exchange.signing import SIGNING_ALGORITHMS

from .key_ring import Jwks, KeyRing, KeyStoreError, KeyVault, load_or_create

log = logging.getLogger(__name__)
RELOAD_CHECK_S = 1.0


class LiveKeys:
    """The ring, the signers that sign with its current token and event keys, and the verifier keys of
    Deputy's own tokens (current and previous token keys), kept in step."""

    def __init__(self, vault: KeyVault, ring: KeyRing, version: int, *, issuer: str) -> None:
        self.ring = ring
        self._vault, self._version = vault, version
        self._signer = Signer(issuer=issuer, key=ring.tokens.current)
        self._events_signer = EventSigner(issuer=issuer, key=ring.events.current)
        self._own_keys = StaticKeys(_verification_keys(ring))

    @classmethod
    async def open(cls, vault: KeyVault, *, algorithm: str, issuer: str) -> LiveKeys:
        """The ring in `vault`, made on first start (`key_ring.load_or_create`)."""
        ring, version = await load_or_create(vault, algorithm)
        return cls(vault, ring, version, issuer=issuer)

    @property
    def signer(self) -> Signer:
        return self._signer

    @property
    def events_signer(self) -> EventSigner:
        """Signs SSF SETs (`sign_event(claims)`) with the current event key."""
        return self._events_signer

    @property
    def own_keys(self) -> StaticKeys:
        return self._own_keys

    def public_jwks(self) -> Jwks:
        return self.ring.public_jwks()

    def events_jwks(self) -> Jwks:
        return self.ring.events_jwks()

    async def follow(self, every: float = RELOAD_CHECK_S) -> None:
        """Check the ring's version every `every` seconds; never ends."""
        while True:
            await asyncio.sleep(every)
            try:
                await self.refresh()
            except Exception:  # a bug, logged with its traceback; the ring in force stays, checks go on
                log.exception("keys.reload_failed")

    async def refresh(self) -> bool:
        """Take up a changed ring; one that cannot be read or opened is logged and the ring in force kept.
        True if it changed."""
        try:
            if (version := await self._vault.version()) is None or version <= self._version:
                if version is not None and version < self._version:  # never back to a rotated-out key
                    log.error("keys.reload_failed", extra={"error": f"the stored key ring went back from version "
                                                                    f"{self._version} to {version}; kept"})
                return False
            stored = await self._vault.read()
        except (KeyStoreError, StoreError) as exc:
            log.error("keys.reload_failed", extra={"error": str(exc)})
            return False
        if stored is None or stored.version <= self._version:
            return False
        if (ring := stored.ring()) is None:
            log.error("keys.reload_failed", extra={"error": "the saved key ring has no event keys"})
            return False
        self._own_keys.replace(_verification_keys(ring))
        self._signer.use(ring.tokens.current)
        self._events_signer.use(ring.events.current)
        self.ring, self._version = ring, stored.version
        log.warning("keys.reloaded", extra={"kid": ring.tokens.current.kid, "events_kid": ring.events.current.kid,
                                            "version": stored.version})
        return True


def _verification_keys(ring: KeyRing) -> KeySet:
    return parse_key_set(ring.public_jwks(), allowed=frozenset(SIGNING_ALGORITHMS))
