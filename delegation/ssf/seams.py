"""What the SSF transmitter needs from the rest of Deputy: a SET signer, and the store's streams and feed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..store import EventStreams, RevocationFeed, TokenState


class SetSigner(Protocol):
    def sign_event(self, claims: dict[str, Any]) -> str:
        """A signed SET (header `typ: secevent+jwt`, RS256, `kid`); adds `iss`, and `iat` and `jti` when absent."""
        ...


class SsfStore(EventStreams, RevocationFeed, Protocol):
    async def token(self, jti: str) -> TokenState | None: ...

    def lead_sweeps(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class StreamTimings:
    """`[ssf]` in seconds: how long a long poll is held, how often a stream may ask for verification, and how
    long a stream nobody manages or polls lives (SSF §8.1.1)."""

    poll_timeout: float = 15.0
    min_verification_interval: int = 1
    inactivity_timeout: int = 86400
