"""DPoP nonces (RFC 9449 §8) that every worker and replica issues and accepts without shared state.

A nonce is `<slot>.<mac>`: the current time slot (`now // PERIOD_S`) and a truncated HMAC-SHA256 of the
issuer and that slot, keyed with a secret derived (HKDF-SHA256, its own `info`) from the gateway's token
signing keys: the key ring that every worker reads and every replica shares (sealed in the store), so a
nonce one replica gave is accepted by all, while another server's, without these keys, is not (§9), and no
one can predict the next (§8). A nonce is accepted in the slot it was made in and the slots next to it
(clock skew between replicas), so it lives between one and two periods; after a key rotation, nonces made
with the previous key still count. The syntax is NQCHAR only (§8.1): digits, a dot, base64url.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .dpop import b64url
from .signing import SigningKey

PERIOD_S = 60
_INFO = b"deputy dpop-nonce v1"
_MAC_BYTES = 16


class DpopNonces:
    """Issues and checks nonces for `issuer`, keyed by the signing keys `keys()` gives (current first)."""

    def __init__(self, keys: Callable[[], Sequence[SigningKey]], *, issuer: str) -> None:
        self._keys = keys
        self._issuer = issuer.encode()
        self._secrets: dict[str, bytes] = {}  # by kid: the derivation runs once per key

    def issue(self, now: int) -> str:
        slot = now // PERIOD_S
        return f"{slot}.{self._mac(self._keys()[0], slot)}"

    def valid(self, nonce: str | None, now: int) -> bool:
        """Whether `nonce` was issued by a holder of these keys for this issuer, recently enough."""
        if nonce is None or len(nonce) > 64:
            return False
        text, _, mac = nonce.partition(".")
        if not text.isdigit() or not text.isascii() or len(text) > 12 or abs(int(text) - now // PERIOD_S) > 1:
            return False
        return any(hmac.compare_digest(mac, self._mac(key, int(text))) for key in self._keys())

    def _mac(self, key: SigningKey, slot: int) -> str:
        secret = self._secrets.get(key.kid)
        if secret is None:
            derive = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO)
            secret = self._secrets[key.kid] = derive.derive(key.to_pem())
        digest = hmac.new(secret, self._issuer + b"|" + str(slot).encode(), hashlib.sha256).digest()
        return b64url(digest[:_MAC_BYTES])
