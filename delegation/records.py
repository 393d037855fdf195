"""What the store keeps about issued tokens, and the store slices the exchange depends on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .audit import AuditEvent


class StoreError(Exception):
    """The store could not read or write: callers fail closed."""


@dataclass(frozen=True, slots=True)
class IssuedTokenRecord:
    jti: str
    user_issuer: str
    user_subject: str
    agent: str
    audience: str
    scope: str
    issued_at: int
    expires_at: int
    task_id: str | None = None


class ExchangeRecords(Protocol):
    """The slice of the store the exchange uses: a grant and its audit event commit together."""

    async def record_grant(self, token: IssuedTokenRecord, event: AuditEvent) -> None: ...

    async def append_audit(self, event: AuditEvent) -> None: ...
