"""The token endpoint's answers as the SDK keeps them (RFC 6749 §5.1, RFC 8693 §2.2.1)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from token_exchange.dpop import TOKEN_TYPE as DPOP_TOKEN_TYPE

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
JWT = "urn:ietf:params:oauth:token-type:jwt"
TXN_TOKEN = "urn:ietf:params:oauth:token-type:txn_token"

REFRESH_MARGIN = 30.0
"""A token is minted again this many seconds before it expires, or at 10% of its lifetime if that is less."""


@dataclass(frozen=True, slots=True)
class AccessToken:
    """One issued token: its text, how to present it (`Bearer` or `DPoP`), its life and the task it belongs to.
    `refresh_at` is on the `time.monotonic()` clock: past it, the token is minted again before use."""

    access_token: str
    token_type: str
    expires_in: int
    scope: tuple[str, ...]
    task_id: str | None
    refresh_at: float
    authorization: str  # the Authorization header value, made once

    @property
    def dpop(self) -> bool:
        return self.token_type.lower() == DPOP_TOKEN_TYPE.lower()

    @classmethod
    def parse(cls, body: dict[str, Any]) -> AccessToken:
        """§5.1: `access_token`, `token_type` and `expires_in` are needed here; a malformed answer is refused."""
        token, token_type, expires_in = body.get("access_token"), body.get("token_type"), body.get("expires_in")
        if not isinstance(token, str) or not token or not isinstance(token_type, str):
            raise ValueError("the token endpoint answered without access_token or token_type")
        if type(expires_in) is not int or expires_in <= 0:
            raise ValueError("the token endpoint answered without a positive integer expires_in")
        scope, task_id = body.get("scope"), body.get("task_id")
        margin = min(REFRESH_MARGIN, expires_in / 10)
        scheme = DPOP_TOKEN_TYPE if token_type.lower() == DPOP_TOKEN_TYPE.lower() else "Bearer"
        return cls(token, token_type, expires_in, tuple(scope.split()) if isinstance(scope, str) else (),
                   task_id if isinstance(task_id, str) else None, time.monotonic() + expires_in - margin,
                   f"{scheme} {token}")

    def fresh(self) -> bool:
        return time.monotonic() < self.refresh_at
