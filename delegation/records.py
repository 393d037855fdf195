"""What the store keeps about issued tokens, and how the store fails."""

from __future__ import annotations

from dataclasses import dataclass


class StoreError(Exception):
    """The store could not read or write: callers fail closed."""


class TaskEnded(StoreError):
    """A write under a task found it no longer open (ended meanwhile by its agent, an admin or expiry)."""


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
