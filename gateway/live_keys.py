"""The signing key ring in force: reloaded when `deputy keys rotate` changes it on disk, so every worker
of a running gateway signs with the new key within seconds, without a restart."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from token_exchange.keys import KeySet, StaticKeys, parse_key_set
from token_exchange.rfc9068 import Signer, new_id
from token_exchange.signing import SIGNING_ALGORITHMS, SigningKey

from . import keystore

log = logging.getLogger(__name__)
RELOAD_CHECK_S = 1.0


class LiveKeys:
    """The ring, the signer that signs with its current key and the verifier keys of Deputy's own tokens
    (current and previous), kept in step."""

    def __init__(self, state_dir: Path, ring: keystore.KeyRing, *, signer: Signer, own_keys: StaticKeys) -> None:
        self.state_dir = state_dir
        self.ring = ring
        self._signer = signer
        self._own_keys = own_keys
        self._stamp = keystore.stamp(state_dir)
        self._events_signer = EventSigner(issuer=signer.issuer)

    @classmethod
    def of(cls, state_dir: Path, ring: keystore.KeyRing, *, issuer: str) -> LiveKeys:
        signer = Signer(issuer=issuer, key=ring.current)
        return cls(state_dir, ring, signer=signer, own_keys=StaticKeys(_verification_keys(ring)))

    @property
    def signer(self) -> Signer:
        return self._signer

    @property
    def own_keys(self) -> StaticKeys:
        return self._own_keys

    def public_jwks(self) -> dict[str, list[dict[str, object]]]:
        return self.ring.public_jwks()

    @property
    def events_signer(self) -> EventSigner:
        return self._events_signer

    def events_jwks(self) -> dict[str, list[dict[str, object]]]:
        return {"keys": [self._events_signer.key.public_jwk]}

    async def follow(self, every: float = RELOAD_CHECK_S) -> None:
        """Check the ring on disk every `every` seconds; never ends."""
        while True:
            await asyncio.sleep(every)
            try:
                await self.refresh()
            except Exception:  # a bug, logged with its traceback; the ring in force stays, checks go on
                log.exception("keys.reload_failed")

    async def refresh(self) -> bool:
        """Take up a rotated ring; an unreadable one is logged and the ring in force kept. True if changed."""
        try:
            stamp = await asyncio.to_thread(keystore.stamp, self.state_dir)
            if stamp == self._stamp or stamp is None:
                return False
            ring = await asyncio.to_thread(keystore.load, self.state_dir)
        except keystore.KeyStoreError as exc:
            log.error("keys.reload_failed", extra={"error": str(exc)})
            return False
        self._own_keys.replace(_verification_keys(ring))
        self._signer.use(ring.current)
        self.ring, self._stamp = ring, stamp
        log.warning("keys.reloaded", extra={"kid": ring.current.kid, "previous": ring.previous and ring.previous.kid})
        return True


class EventSigner:
    """TEMPORARY (until the keys branch lands): SETs signed RS256 with a key made by this process."""

    def __init__(self, *, issuer: str) -> None:
        self.issuer = issuer
        self.key = SigningKey.of("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def sign_event(self, claims: Mapping[str, Any]) -> str:
        body = {"iss": self.issuer, "iat": int(time.time()), "jti": new_id(), **claims}
        return jwt.encode(body, self.key.private_key, algorithm="RS256",
                          headers={"typ": "secevent+jwt", "kid": self.key.kid})


def _verification_keys(ring: keystore.KeyRing) -> KeySet:
    return parse_key_set(ring.public_jwks(), allowed=frozenset(SIGNING_ALGORITHMS))
