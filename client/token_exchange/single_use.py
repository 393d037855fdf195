"""Values that may be presented only once (a proof's `jti`), remembered by every worker process alike.

draft-ietf-oauth-attestation-based-client-auth-10 §9.7 and §11.1 (attestation PoP `jti`s) and RFC 9449
§11.1 (DPoP proof `jti`s) ask a server to remember each value for the window in which its proof is
accepted, and to refuse it when it comes again. The store behind this seam is shared by the gateway's
workers, so a proof replayed to another worker is refused too.
"""

from __future__ import annotations

from typing import Protocol


class SingleUse(Protocol):
    """Remembers (namespace, value) pairs until their `expires_at`; each kind of proof has its namespace."""

    async def first_use(self, namespace: str, value: str, *, expires_at: int) -> bool:
        """Record the value and return True if it was not already recorded; else False, recording nothing.

        A value stays recorded until it is purged after `expires_at` (by `Maintenance.expire_and_purge`),
        so a caller must refuse, before asking, any proof that is older than its window."""
        ...
